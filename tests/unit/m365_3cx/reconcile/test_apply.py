from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from m365_3cx.errors import MassRemovalError, ThreeCXFatalError, ThreeCXRetriableError
from m365_3cx.reconcile.apply import (
    ApplyCounts,
    Outcome,
    apply_changes,
    audit_rows,
    check_mass_removal,
    create_body,
    removal_limit,
)
from m365_3cx.reconcile.plan import Change

NOW = datetime(2025, 3, 1, tzinfo=UTC)


class FakeWriter:
    """In-memory stand-in for the 3CX client (the external boundary)."""

    def __init__(self) -> None:
        self.users: dict[int, dict[str, Any]] = {}
        self.calls: list[tuple[str, Any]] = []
        self.fail_numbers: dict[str, Exception] = {}
        self._next = 100

    def create_user(self, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("create", body))
        if body["Number"] in self.fail_numbers:
            raise self.fail_numbers[body["Number"]]
        if any(u["Number"] == body["Number"] for u in self.users.values()):
            raise ThreeCXFatalError("Number is already in use", status=400, code="ALREADY_IN_USE", target="Number")
        self._next += 1
        self.users[self._next] = {"Id": self._next, **body}
        return self.users[self._next]

    def update_user(self, user_id: int, patch: dict[str, Any]) -> None:
        self.calls.append(("update", user_id, patch))
        if user_id not in self.users:
            raise ThreeCXFatalError("not found", status=404)
        self.users[user_id].update(patch)

    def delete_user(self, user_id: int) -> None:
        self.calls.append(("delete", user_id))
        self.users.pop(user_id, None)


def create(number: str, uid: str = "u") -> Change:
    return Change(
        "create", f"{uid}{number}", number, None, {"FirstName": (None, "Ann"), "Enabled": (None, True)}, "new user"
    )


def disable(tid: int) -> Change:
    return Change("disable", f"d{tid}", str(tid), tid, {"Enabled": (True, False)}, "user disabled")


def delete(tid: int) -> Change:
    return Change("delete", f"x{tid}", str(tid), tid, {}, "user deleted")


def collect() -> tuple[list[Outcome], Any]:
    outcomes: list[Outcome] = []
    return outcomes, outcomes.append


def test_apply_all_kinds() -> None:
    w = FakeWriter()
    w.users[7] = {"Id": 7, "Number": "7", "FirstName": "Old", "Enabled": True}
    w.users[8] = {"Id": 8, "Number": "8", "Enabled": True}
    changes = [
        create("200"),
        Change("update", "u7", "7", 7, {"FirstName": ("Old", "New")}, "fields changed"),
        disable(8),
        delete(7),
    ]
    outcomes, sink = collect()
    counts = apply_changes(changes, w, on_outcome=sink, create_defaults={"PrimaryGroupId": 3, "FirstName": "X"})
    assert counts == ApplyCounts(created=1, updated=1, disabled=1, deleted=1)
    assert [o.result for o in outcomes] == ["ok"] * 4
    assert outcomes[0].threecx_id == 101
    assert w.calls[0] == ("create", {"PrimaryGroupId": 3, "Number": "200", "FirstName": "Ann", "Enabled": True})
    assert w.calls[1] == ("update", 7, {"FirstName": "New"})
    assert w.calls[2] == ("update", 8, {"Enabled": False})
    assert w.calls[3] == ("delete", 7)


def test_fatal_error_fails_one_change_and_continues() -> None:
    w = FakeWriter()
    w.users[1] = {"Id": 1, "Number": "200"}  # created by hand meanwhile
    outcomes, sink = collect()
    counts = apply_changes([create("200"), create("201")], w, on_outcome=sink)
    assert counts == ApplyCounts(created=1, failed=1)
    assert outcomes[0].result == "failed"
    assert outcomes[0].error is not None
    assert "ALREADY_IN_USE" in outcomes[0].error and "target=Number" in outcomes[0].error
    assert outcomes[1].result == "ok"


def test_retriable_error_reports_then_reraises() -> None:
    w = FakeWriter()
    w.fail_numbers["201"] = ThreeCXRetriableError("unavailable", status=503)
    outcomes, sink = collect()
    with pytest.raises(ThreeCXRetriableError):
        apply_changes([create("200"), create("201"), create("202")], w, on_outcome=sink)
    assert [o.result for o in outcomes] == ["ok", "failed", "skipped"]
    assert "status=503" in (outcomes[1].error or "")
    assert [c[1]["Number"] for c in w.calls] == ["200", "201"]


def test_dry_run_writes_nothing() -> None:
    w = FakeWriter()
    outcomes, sink = collect()
    counts = apply_changes([create("200"), disable(3), delete(4)], w, on_outcome=sink, dry_run=True)
    assert w.calls == []
    assert counts == ApplyCounts(skipped=3)
    assert all(o.result == "skipped" and o.error == "dry run" for o in outcomes)


def test_update_without_id_fails_cleanly() -> None:
    w = FakeWriter()
    _, sink = collect()
    bad = Change("update", "a", "200", None, {"FirstName": ("A", "B")}, "fields changed")
    assert apply_changes([bad], w, on_outcome=sink).failed == 1
    assert w.calls == []


@pytest.mark.parametrize(
    ("managed", "expected"), [(0, 5), (40, 5), (50, 5), (59, 5), (60, 6), (100, 10), (1000, 100), (290, 29)]
)
def test_removal_limit(managed: int, expected: int) -> None:
    assert removal_limit(managed, 5, 0.10) == expected


def test_guard_raises_before_any_write() -> None:
    w = FakeWriter()
    changes = [create("200")] + [disable(i) for i in range(6)] + [delete(i) for i in range(10, 16)]
    with pytest.raises(MassRemovalError) as info:
        check_mass_removal(changes, 40, 5, 0.10, allow=False)
        apply_changes(changes, w, on_outcome=lambda o: None)
    assert str(info.value) == (
        "12 of 40 managed extensions would be disabled or deleted; the guard allows at most "
        "max(5, 10%) = 5. Check the user scope, or re-run with allow_mass_removal=true"
    )
    assert w.calls == []


def test_guard_allows_at_limit_and_when_allowed() -> None:
    check_mass_removal([disable(i) for i in range(5)], 40, 5, 0.10, allow=False)
    check_mass_removal([disable(i) for i in range(10)], 100, 5, 0.10, allow=False)
    check_mass_removal([disable(i) for i in range(30)], 40, 5, 0.10, allow=True)
    check_mass_removal([create(str(i)) for i in range(300)], 0, 5, 0.10, allow=False)


def test_create_body_managed_fields_win() -> None:
    body = create_body(create("200"), {"Groups": [{"GroupId": 2}], "FirstName": "Default", "Number": "999"})
    assert body == {"Groups": [{"GroupId": 2}], "FirstName": "Ann", "Number": "200", "Enabled": True}


def test_audit_rows_create() -> None:
    rows = audit_rows(Outcome(create("200"), "ok", None, 101), "dag/run", NOW)
    assert rows == [
        {
            "run_key": "dag/run",
            "at": NOW,
            "action": "create",
            "object_type": "extension",
            "object_key": "u200",
            "number": "200",
            "threecx_id": 101,
            "result": "ok",
            "error": None,
            "field": f,
            "before": None,
            "after": a,
        }
        for f, a in (("FirstName", "Ann"), ("Enabled", "true"))
    ]


def test_audit_rows_update_and_delete() -> None:
    upd = Change("update", "a", "200", 1, {"FirstName": ("A", "B"), "Enabled": (False, True)}, "user re-enabled")
    rows = audit_rows(Outcome(upd, "failed", "3cx: boom", 1), "k", NOW)
    assert [(r["field"], r["before"], r["after"], r["result"], r["error"]) for r in rows] == [
        ("FirstName", "A", "B", "failed", "3cx: boom"),
        ("Enabled", "false", "true", "failed", "3cx: boom"),
    ]
    (row,) = audit_rows(Outcome(delete(9), "ok", None, 9), "k", NOW)
    assert (row["action"], row["field"], row["before"], row["after"], row["threecx_id"]) == (
        "delete",
        None,
        None,
        None,
        9,
    )
