"""Property: transform -> plan -> apply converges; a second plan is empty."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from m365_3cx.errors import ThreeCXFatalError
from m365_3cx.reconcile.apply import Outcome, apply_changes
from m365_3cx.reconcile.plan import PlanParams, plan_extensions
from m365_3cx.transform.extensions import ExtensionParams, desired_extensions
from m365_3cx.transform.numbering import NumberingPolicy

NOW = datetime(2025, 3, 1, tzinfo=UTC)
MAP_COLUMNS = ["user_id", "number", "threecx_id", "status", "assigned_at", "released_at", "adopted"]
PBX_COLUMNS = ["threecx_id", "number", "first_name", "last_name", "email", "mobile", "outbound_caller_id", "enabled"]
FIELD_KEYS = {
    "FirstName": "first_name",
    "LastName": "last_name",
    "EmailAddress": "email",
    "Mobile": "mobile",
    "OutboundCallerID": "outbound_caller_id",
    "Enabled": "enabled",
}


class MemoryPbx:
    """In-memory 3CX (the external boundary): numbers are unique, ids increase."""

    def __init__(self, hand_made: list[str]) -> None:
        self.users: dict[int, dict[str, Any]] = {}
        self._next = 0
        for number in hand_made:
            self._add({"Number": number, "FirstName": "Hand", "Enabled": True})

    def _add(self, body: dict[str, Any]) -> dict[str, Any]:
        self._next += 1
        self.users[self._next] = {"Id": self._next, **body}
        return self.users[self._next]

    def create_user(self, body: dict[str, Any]) -> dict[str, Any]:
        if any(u["Number"] == body["Number"] for u in self.users.values()):
            raise ThreeCXFatalError("in use", status=400, code="ALREADY_IN_USE", target="Number")
        return self._add(body)

    def update_user(self, user_id: int, patch: dict[str, Any]) -> None:
        self.users[user_id].update(patch)

    def delete_user(self, user_id: int) -> None:
        del self.users[user_id]

    def frame(self) -> pd.DataFrame:
        rows = [
            {"threecx_id": u["Id"], "number": u["Number"], **{c: u.get(f) for f, c in FIELD_KEYS.items()}}
            for u in self.users.values()
        ]
        return pd.DataFrame(rows, columns=PBX_COLUMNS)


names = st.one_of(st.none(), st.sampled_from(["", " ", "Ann", "Zoë", "李", "O'Neil", "x" * 60]), st.text(max_size=8))
some_phone = st.sampled_from(
    ["+1 650 253 0201", "(650) 253-0202 x9", "+44 20 7946 0203", "+1 555", "garbage", "", "020 7946 0204"]
)
phones = st.one_of(st.none(), some_phone)
mostly_true = st.sampled_from([True, True, True, False])
mostly_false = st.sampled_from([False, False, False, True])
user_st = st.fixed_dictionaries(
    {
        "given_name": names,
        "surname": names,
        "display_name": names,
        "mail": st.one_of(st.none(), st.sampled_from(["A@X.io", "b@x.io", ""])),
        "mobile_phone": phones,
        "business_phones": st.lists(some_phone, max_size=2),
        "account_enabled": st.one_of(st.none(), mostly_true),
        "user_type": st.sampled_from(["Member", "Member", "Guest", None]),
        "usage_location": st.sampled_from(["US", "GB", None, "ZZ"]),
        "extension_attributes": st.fixed_dictionaries(
            {"extensionAttribute1": st.sampled_from([None, "", "201", "202", "203", "12", "abc", "99999999"])}
        ),
        "in_scope": mostly_true,
        "deleted": mostly_false,
        "seen": st.integers(0, 5),
    }
)
flip_st = st.fixed_dictionaries(
    {},
    optional={
        "account_enabled": st.one_of(st.none(), st.booleans()),
        "in_scope": st.booleans(),
        "deleted": st.booleans(),
        "surname": names,
        "mobile_phone": phones,
        "given_name": names,
    },
)


def users_frame(raw: list[dict[str, Any]]) -> pd.DataFrame:
    rows = []
    for i, r in enumerate(raw):
        row = {k: v for k, v in r.items() if k != "seen"}
        row["user_id"] = f"id-{i:03d}"
        row["user_principal_name"] = f"u{i}@contoso.example"
        row["first_seen_at"] = NOW - timedelta(days=r["seen"])
        rows.append(row)
    # Same dtypes as staging.frames.load_frame: nullable booleans live in object columns.
    return pd.DataFrame(rows).astype({"account_enabled": object, "in_scope": object, "deleted": object})


def sync(
    users: pd.DataFrame, mapping: pd.DataFrame, pbx: MemoryPbx, ext: ExtensionParams, plan_params: PlanParams
) -> tuple[pd.DataFrame, list[Outcome]]:
    """One run: transform, plan, apply; returns the updated mapping and the outcomes."""
    desired = desired_extensions(users, mapping, pbx.frame(), ext, NOW)
    new_rows = []
    for a in desired.new_assignments:
        if a["replaces_user_id"]:
            mapping = mapping[mapping["user_id"] != a["replaces_user_id"]]
        new_rows.append({"user_id": a["user_id"], "number": a["number"], "threecx_id": None, "status": "active"})
    if new_rows:
        mapping = pd.concat([mapping, pd.DataFrame(new_rows, columns=MAP_COLUMNS)], ignore_index=True)
    result = plan_extensions(desired.frame, mapping, pbx.frame(), plan_params)
    outcomes: list[Outcome] = []
    for change in result.changes:
        event(f"action: {change.action}")
    if result.notes:
        event("plan notes")
    apply_changes(result.changes, pbx, on_outcome=outcomes.append, create_defaults={"Groups": []})
    mapping = mapping.copy().astype({"threecx_id": object, "status": object, "released_at": object})
    for o in outcomes:
        idx = mapping.index[mapping["user_id"] == o.change.object_key]
        if o.result == "ok" and o.change.action == "create":
            mapping.loc[idx, "threecx_id"] = o.threecx_id
            mapping.loc[idx, "status"] = "active"
        elif o.result == "ok" and o.change.action == "delete":
            mapping.loc[idx, "threecx_id"] = None
            mapping.loc[idx, "status"] = "released"
            mapping.loc[idx, "released_at"] = NOW
    return mapping, outcomes


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    raw=st.lists(user_st, min_size=1, max_size=14),
    flips=st.lists(st.tuples(st.integers(0, 6), flip_st), max_size=8),
    hand_made=st.lists(st.sampled_from(["200", "201", "203", "205", "250"]), unique=True, max_size=3),
    policy=st.sampled_from(["pool", "attribute", "phone_suffix"]),
    fallback=st.booleans(),
    removal=st.sampled_from(["disable", "delete", "ignore"]),
    caller_id=st.booleans(),
    guests=st.booleans(),
)
def test_sync_converges_and_numbers_never_collide(
    raw: list[dict[str, Any]],
    flips: list[tuple[int, dict[str, Any]]],
    hand_made: list[str],
    policy: str,
    fallback: bool,
    removal: str,
    caller_id: bool,
    guests: bool,
) -> None:
    numbering = NumberingPolicy(
        policy=policy, fallback_to_pool=fallback, pool_first="200", pool_last="209", suffix_digits=3
    )
    ext = ExtensionParams(numbering=numbering, manage_outbound_caller_id=caller_id, include_guests=guests)
    plan_params = PlanParams(removal_policy=removal, manage_outbound_caller_id=caller_id)
    pbx = MemoryPbx(hand_made)
    hand_ids = set(pbx.users)
    hand_before = {i: dict(pbx.users[i]) for i in hand_ids}
    mapping = pd.DataFrame(columns=MAP_COLUMNS)

    users = users_frame(raw)
    mapping, outcomes = sync(users, mapping, pbx, ext, plan_params)
    assert all(o.result == "ok" for o in outcomes), [o.error for o in outcomes if o.result != "ok"]

    # some users change between runs
    for index, change in flips:
        if index < len(users):
            for key, value in change.items():
                users.at[index, key] = value
    mapping, outcomes = sync(users, mapping, pbx, ext, plan_params)
    assert all(o.result == "ok" for o in outcomes), [o.error for o in outcomes if o.result != "ok"]

    # idempotent: nothing left to do
    desired = desired_extensions(users, mapping, pbx.frame(), ext, NOW)
    assert desired.new_assignments == []
    again = plan_extensions(desired.frame, mapping, pbx.frame(), plan_params)
    assert again.changes == []

    # numbers never collide, hand-made extensions are untouched
    numbers = [u["Number"] for u in pbx.users.values()]
    assert len(numbers) == len(set(numbers))
    assert mapping["number"].is_unique
    assert {i: pbx.users[i] for i in hand_ids} == hand_before
    mapped_ids = set(mapping["threecx_id"].dropna().astype(int))
    assert mapped_ids.isdisjoint(hand_ids)
    # every active user with a number has an extension with that number
    active = desired.frame[(desired.frame["state"] == "active") & desired.frame["number"].notna()]
    by_number = {u["Number"]: u for u in pbx.users.values()}
    for row in active.itertuples():
        if row.number in by_number and by_number[row.number]["Id"] not in hand_ids:
            assert by_number[row.number]["Enabled"] is True
