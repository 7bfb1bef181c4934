from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd
import pytest

from m365_3cx.errors import MassRemovalError, ThreeCXFatalError, ThreeCXRetriableError
from m365_3cx.reconcile.apply import check_mass_removal
from m365_3cx.reconcile.phonebook import (
    apply_contact_changes,
    is_foreign,
    match_snapshot,
    plan_phonebook,
)
from m365_3cx.reconcile.plan import Change
from m365_3cx.transform.phonebook import FIELD_COLUMNS, TAG_PREFIX


def desired(key: str, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {col: None for col in FIELD_COLUMNS.values()}
    row.update({"contact_key": key, "first_name": "Ann", "last_name": "Lee", "phone_number": "+16502530000",
                "tag": TAG_PREFIX + key, "state": "active"})
    row.update(kw)
    return row


def pbx(cid: int, key: str | None, **kw: Any) -> dict[str, Any]:
    row = {"Id": cid, "FirstName": "Ann", "LastName": "Lee", "PhoneNumber": "+16502530000",
           "Tag": TAG_PREFIX + key if key else "", "ContactType": "3CX"}
    row.update(kw)
    return row


def mapping(*rows: tuple[str, int | None]) -> pd.DataFrame:
    return pd.DataFrame([{"contact_key": k, "threecx_id": t} for k, t in rows], columns=["contact_key", "threecx_id"])


def snapshot_map(mapped: pd.DataFrame, contacts: list[dict[str, Any]]) -> pd.DataFrame:
    matches, _ = match_snapshot(mapped, contacts)
    return pd.DataFrame([{"contact_key": m.contact_key, "threecx_id": m.threecx_id, "present": m.present,
                          "current": m.current, "duplicate_ids": m.duplicate_ids} for m in matches],
                        columns=["contact_key", "threecx_id", "present", "current", "duplicate_ids"])


def plan(desired_rows: list[dict[str, Any]], mapped: pd.DataFrame, contacts: list[dict[str, Any]]):
    return plan_phonebook(pd.DataFrame(desired_rows), snapshot_map(mapped, contacts))


@pytest.mark.parametrize(
    ("contact", "foreign"),
    [
        (pbx(1, "k"), False),
        # ownership rests on our tag only: whatever ContactType the PBX stamps, a tagged entry is ours
        (pbx(1, "k", ContactType="M365"), False),
        (pbx(1, "k", ContactType="crm"), False),
        (pbx(1, "k", ContactType=None), False),
        (pbx(1, None, ContactType="M365"), True),  # 3CX's own M365 integration
        (pbx(1, None), True),  # hand-made, no tag
        (pbx(1, None, Tag="crm-sync:42"), True),  # somebody else's tag
    ],
)
def test_is_foreign(contact: dict[str, Any], foreign: bool) -> None:
    assert is_foreign(contact) is foreign


def test_new_entry_is_created_with_its_fields_and_tag() -> None:
    result = plan([desired("k1", company_name="Fabrikam")], mapping(), [])
    (change,) = result.changes
    assert change.action == "create" and change.object_type == "contact" and change.threecx_id is None
    assert change.fields["Tag"] == (None, TAG_PREFIX + "k1")
    assert change.fields["CompanyName"] == (None, "Fabrikam")
    assert change.fields["ContactType"] == (None, "3CX")  # explicit, never the PBX's default
    assert "Mobile2" not in change.fields  # empty fields are not sent
    assert change.reason == "new entry"


def test_unchanged_entry_plans_nothing_and_empty_equals_null() -> None:
    contacts = [pbx(7, "k1", CompanyName="", Mobile2=None)]
    assert plan([desired("k1")], mapping(("k1", 7)), contacts).changes == []


def test_hand_edit_of_a_managed_field_is_put_back_and_unmanaged_fields_are_ignored() -> None:
    contacts = [pbx(7, "k1", FirstName="Tampered", Pager="+1 206 555 0100")]
    (change,) = plan([desired("k1")], mapping(("k1", 7)), contacts).changes
    assert change.action == "update" and change.threecx_id == 7
    assert change.fields == {"FirstName": ("Tampered", "Ann")}


def test_hand_deleted_entry_is_recreated() -> None:
    (change,) = plan([desired("k1")], mapping(("k1", 7)), []).changes
    assert change.action == "create" and change.reason == "entry missing in 3CX, re-created"


def test_entry_no_longer_desired_is_deleted_and_a_gone_one_forgotten() -> None:
    result = plan([], mapping(("k1", 7), ("k2", 8)), [pbx(7, "k1")])
    assert [(c.action, c.threecx_id) for c in result.changes] == [("delete", 7)]
    assert result.forget == ["k2"] and result.managed_count == 1


def test_foreign_contacts_are_never_touched_even_with_our_key() -> None:
    contacts = [pbx(1, None, FirstName="Hand"), pbx(2, None, ContactType="M365", FirstName="Other"),
                pbx(3, None, Tag="crm-sync:k1"), pbx(4, "stranger")]
    result = plan([desired("k1")], mapping(("k1", 2)), contacts)
    assert [c.action for c in result.changes] == ["create"]  # the untagged contact is not ours: ours is missing
    assert all(c.threecx_id not in (1, 2, 3, 4) for c in result.changes)


def test_own_entry_stamped_with_another_contact_type_stays_managed() -> None:
    contacts = [pbx(7, "k1", ContactType="M365")]
    assert plan([desired("k1")], mapping(("k1", 7)), contacts).changes == []
    # a tagged contact whose key is not in phonebook_map is not managed: never deleted
    assert plan([], mapping(), contacts).changes == []


def test_lost_create_is_relinked_by_tag_and_duplicates_are_deleted() -> None:
    contacts = [pbx(9, "k1"), pbx(5, "k1")]
    matches, foreign = match_snapshot(mapping(("k1", None)), contacts)
    (match,) = matches
    assert (match.threecx_id, match.relinked, match.duplicate_ids, foreign) == (5, True, [9], 0)
    result = plan([desired("k1")], mapping(("k1", None)), contacts)
    assert [(c.action, c.threecx_id, c.reason) for c in result.changes] == [
        ("delete", 9, "duplicate of a managed entry")]


def test_changes_come_in_apply_order() -> None:
    contacts = [pbx(7, "a", FirstName="x"), pbx(8, "z")]
    result = plan([desired("a"), desired("b")], mapping(("a", 7), ("z", 8)), contacts)
    assert [c.action for c in result.changes] == ["create", "update", "delete"]


def test_mass_removal_guard_counts_contact_deletes() -> None:
    result = plan([], mapping(*[(f"k{i}", i) for i in range(20)]), [pbx(i, f"k{i}") for i in range(20)])
    assert result.managed_count == 20 and len(result.changes) == 20
    with pytest.raises(MassRemovalError):
        check_mass_removal(result.changes, result.managed_count, 5, 0.10, allow=False)
    check_mass_removal(result.changes, result.managed_count, 5, 0.10, allow=True)


# ------------------------------------------------------------------------------------ apply


class FakePbx:
    """Records writes; scripted failures by 3CX id (or "create:<key>")."""

    def __init__(self, fail: Mapping[Any, Exception] | None = None, batch_error: Exception | None = None) -> None:
        self.fail = dict(fail or {})
        self.batch_error = batch_error
        self.calls: list[tuple[str, Any]] = []
        self.next_id = 100

    def _check(self, key: Any) -> None:
        if key in self.fail:
            raise self.fail[key]

    def create_contact(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self._check(f"create:{body.get('Tag')}")
        self.calls.append(("create", dict(body)))
        self.next_id += 1
        return {"Id": self.next_id}

    def update_contact(self, contact_id: int, patch: Mapping[str, Any]) -> None:
        self._check(contact_id)
        self.calls.append(("update", contact_id))

    def delete_contact(self, contact_id: int) -> None:
        self._check(contact_id)
        self.calls.append(("delete", contact_id))

    def delete_contacts(self, ids: Iterable[int]) -> None:
        if self.batch_error:
            raise self.batch_error
        self.calls.append(("delete_many", list(ids)))


def change(action: str, key: str, tid: int | None = None, **fields: Any) -> Change:
    return Change(action, key, "", tid, {f: (None, v) for f, v in fields.items()}, "r", "contact")


def run_apply(changes: list[Change], writer: FakePbx, **kw: Any):
    outcomes: list[Any] = []
    counts = apply_contact_changes(changes, writer, on_outcome=outcomes.append, **kw)
    return counts.as_dict(), outcomes


def test_apply_creates_updates_and_batches_deletes() -> None:
    before: list[str] = []
    writer = FakePbx()
    changes = [change("create", "a", Tag="t:a", FirstName="Ann"), change("update", "b", 7, FirstName="B"),
               change("delete", "c", 8), change("delete", "d", 9)]
    counts, outcomes = run_apply(changes, writer, before_create=lambda c: before.append(c.object_key))
    assert counts == {"created": 1, "updated": 1, "disabled": 0, "deleted": 2, "failed": 0, "skipped": 0}
    assert writer.calls == [("create", {"Tag": "t:a", "FirstName": "Ann"}), ("update", 7), ("delete_many", [8, 9])]
    assert before == ["a"]
    assert [o.result for o in outcomes] == ["ok"] * 4 and outcomes[0].threecx_id == 101


def test_one_bad_record_fails_alone() -> None:
    bad = ThreeCXFatalError("too long", status=400, code="WARNINGS.XAPI.TOO_LONG", target="CompanyName")
    writer = FakePbx(fail={"create:t:a": bad})
    counts, outcomes = run_apply([change("create", "a", Tag="t:a"), change("create", "b", Tag="t:b")], writer)
    assert counts["failed"] == 1 and counts["created"] == 1
    assert outcomes[0].result == "failed" and "CompanyName" in (outcomes[0].error or "")


def test_refused_batch_delete_falls_back_to_single_deletes_and_gone_counts_as_deleted() -> None:
    writer = FakePbx(fail={9: ThreeCXFatalError("not found", status=404, code="NOT_FOUND")},
                     batch_error=ThreeCXFatalError("no such action", status=404))
    counts, outcomes = run_apply([change("delete", "c", 8), change("delete", "d", 9)], writer)
    assert counts["deleted"] == 2 and writer.calls == [("delete", 8)]
    assert [o.result for o in outcomes] == ["ok", "ok"]


def test_retriable_error_stops_and_reports_the_rest_as_not_tried() -> None:
    writer = FakePbx(fail={7: ThreeCXRetriableError("503", status=503)})
    changes = [change("update", "a", 7, FirstName="x"), change("update", "b", 8, FirstName="y"),
               change("delete", "c", 9)]
    outcomes: list[Any] = []
    with pytest.raises(ThreeCXRetriableError):
        apply_contact_changes(changes, writer, on_outcome=outcomes.append)
    assert [(o.change.object_key, o.result) for o in outcomes] == [("a", "failed"), ("b", "skipped"),
                                                                  ("c", "skipped")]
    assert writer.calls == []


def test_dry_run_writes_nothing() -> None:
    writer = FakePbx()
    counts, outcomes = run_apply([change("create", "a", Tag="t"), change("delete", "b", 3)], writer, dry_run=True)
    assert writer.calls == [] and counts["skipped"] == 2 and {o.error for o in outcomes} == {"dry run"}
