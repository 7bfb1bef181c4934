"""The write decision and the approval body (pure)."""

from __future__ import annotations

import datetime as dt

import pytest

from m365_3cx.pipeline.safety import RemovalReview, WriteDecision, decide, removal_body, review_removals
from m365_3cx.settings import Settings
from m365_3cx.staging.control import WritesState

LIVE = WritesState(True, dt.datetime(2026, 12, 1, tzinfo=dt.UTC), "alice")
NOT_LIVE = WritesState(False)


@pytest.mark.parametrize(("requested", "writes", "started", "expected"), [
    (False, LIVE, None, WriteDecision(False)),
    (True, LIVE, None, WriteDecision(True, "requested")),
    (False, NOT_LIVE, None, WriteDecision(True, "writes_off")),
    (True, NOT_LIVE, None, WriteDecision(True, "requested,writes_off")),
    (False, LIVE, "writes_off", WriteDecision(True, "writes_off")),
    (True, LIVE, "writes_off", WriteDecision(True, "requested,writes_off")),
    (False, NOT_LIVE, "requested,writes_off", WriteDecision(True, "requested,writes_off")),
])
def test_decision_is_requested_or_not_live_or_started_dry(
    requested: bool, writes: WritesState, started: str | None, expected: WriteDecision
) -> None:
    assert decide(requested, writes, started) == expected


def test_decision_text() -> None:
    assert WriteDecision(True, "writes_off").describe() == "writes are off (not live)"
    assert WriteDecision(True, "requested,writes_off").describe() == (
        "the run's dry_run param is set; writes are off (not live)")
    assert WriteDecision(False).describe() == "writes enabled"


def _rows(n: int, action: str = "disable") -> list[dict]:
    return [{"seq": i, "action": action, "object_key": f"user-{i}", "number": f"1{i:03d}",
             "reason": "user disabled in Entra"} for i in range(n)]


def test_review_counts_only_removals_against_the_guard() -> None:
    settings = Settings.from_mapping({"guards": {"mass_removal_min": 5, "mass_removal_fraction": 0.1}})
    review = review_removals(_rows(6) + _rows(50, "update"), "extension", "k", 40, settings)
    assert (len(review.removals), review.limit, review.tripped) == (6, 5, True)
    assert not review_removals(_rows(5) + _rows(3, "create"), "extension", "k", 40, settings).tripped
    assert review_removals(_rows(60), "extension", "k", 1000, settings).counts() == {
        "object_type": "extension", "removals": 60, "managed": 1000, "limit": 100, "tripped": False}


def test_body_names_every_removal_even_a_thousand() -> None:
    rows = _rows(1000)
    labels = {f"extension:user-{i}": {"upn": f"u{i}@contoso.com", "name": f"User | {i}"} for i in range(1000)}
    contacts = [{"seq": 1, "action": "delete", "object_key": "ck1", "number": "", "reason": "no longer held"}]
    labels["contact:ck1"] = {"name": "Ada Lovelace", "number": "+4930123"}
    body = removal_body([RemovalReview("extension", "k", rows, 1200, 120),
                         RemovalReview("contact", "k#contacts", contacts, 10, 5)], labels,
                        dag_id="m365_3cx_full_sync", run_id="manual__1")
    for i in range(1000):
        assert f"| u{i}@contoso.com | 1{i:03d} | User \\| {i} | user disabled in Entra |" in body
    assert "1000 of 1200 managed extensions would be removed (the guard allows 120)" in body
    assert "| 1 | delete | ck1 | +4930123 | Ada Lovelace | no longer held |" in body
    assert "Reject" in body and "manual__1" in body
