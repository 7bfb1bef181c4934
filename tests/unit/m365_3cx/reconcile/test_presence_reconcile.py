"""Presence switch rules (respect / override) and the apply loop with audit outcomes."""

from __future__ import annotations

import random

import pytest

from m365_3cx.errors import ThreeCXFatalError, ThreeCXRetriableError
from m365_3cx.reconcile.presence import (
    DesiredProfile,
    ProfileSwitch,
    SwitchOutcome,
    apply_switches,
    audit_row,
    decide_switch,
    needs_current,
    plan_row,
    plan_switches,
)

D = "Available"


@pytest.mark.parametrize(
    ("desired", "current", "last_set", "mode", "expected"),
    [
        # never touched, user at the default: the sync may switch to a calendar status
        ("Away", "Available", None, "respect", "set"),
        ("Away", None, None, "respect", "set"),
        # the sync set Away; the meeting ended: back to the default
        ("Available", "Away", "Away", "respect", "set"),
        # the sync set Away, a new oof starts: switch on
        ("Out of office", "Away", "Away", "respect", "set"),
        # hand-chosen status: neither to busy nor back to the default
        ("Away", "Custom 1", None, "respect", "respect"),
        ("Away", "Custom 1", "Available", "respect", "respect"),
        ("Available", "Custom 1", "Away", "respect", "respect"),
        # the user picked Available by hand during a meeting the sync had switched to Away
        ("Away", "Available", "Away", "respect", "respect"),
        # ... the meeting ends: user and calendar agree again, the default becomes the baseline
        ("Available", "Available", "Away", "respect", "baseline"),
        ("Available", "Available", None, "respect", "baseline"),
        ("Available", "Available", "Available", "respect", "keep"),
        ("Away", "Away", "Away", "respect", "keep"),
        ("Away", "Away", None, "respect", "keep"),
        # override: always converge on the calendar
        ("Away", "Custom 1", None, "override", "set"),
        ("Available", "Custom 1", "Away", "override", "set"),
        ("Away", "Away", None, "override", "keep"),
    ],
)
def test_decide_switch(desired: str, current: str | None, last_set: str | None, mode: str, expected: str) -> None:
    assert decide_switch(desired, current, last_set, D, mode) == expected


def test_decide_switch_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="respect or override"):
        decide_switch("Away", "Available", None, D, "sometimes")


def test_plan_switches_sorts_users_and_skips_those_missing_in_3cx() -> None:
    desired = [
        DesiredProfile("u2", 12, "102", "Away", "busy"),
        DesiredProfile("u1", 11, "101", "Out of office", "automatic_replies"),
        DesiredProfile("u3", 13, "103", "Away", "busy"),
        DesiredProfile("u4", 14, "104", "Available", "default"),
        DesiredProfile("u5", 99, "105", "Away", "busy"),
    ]
    current = {11: "Available", 12: "Away", 13: "Custom 1", 14: "Available"}
    plan = plan_switches(desired, current, {"u4": "Away"}, D, "respect")
    assert [(s.user_id, s.before, s.after) for s in plan.switches] == [("u1", "Available", "Out of office")]
    assert plan.respected == ("u3",)
    assert plan.baselines == (("u4", 14, "Available"),)
    assert plan.unchanged == 2


@pytest.mark.parametrize(("last_set", "decided", "expected"), [
    ((11, "Away"), False, False),  # kept decision, the sync's own status on this 3CX user: no read
    ((11, "Away"), True, True),  # decided afresh
    ((11, "Available"), False, True),  # a switch not (yet) made: apply failed or skipped, or a dry run
    ((12, "Away"), False, True),  # set on another 3CX user (the extension was re-created)
    (None, False, True),  # never set: may need a baseline
])
def test_needs_current(last_set: tuple[int, str] | None, decided: bool, expected: bool) -> None:
    assert needs_current(DesiredProfile("u1", 11, "101", "Away", "busy"), last_set, decided) is expected


@pytest.mark.parametrize("mode", ["respect", "override"])
@pytest.mark.parametrize("seed", range(20))
def test_plan_with_unread_users_equals_the_whole_read_when_nobody_edited_3cx(mode: str, seed: int) -> None:
    rng = random.Random(seed)
    profiles = ["Available", "Away", "Out of office", "Custom 1", None]
    desired, state, current, decided = [], {}, {}, set()
    for i in range(40):
        want = DesiredProfile(f"u{i:02d}", 100 + i, str(200 + i), rng.choice(profiles[:4]), "r")
        desired.append(want)
        if rng.random() < 0.2:
            decided.add(want.user_id)
        if rng.random() < 0.8:
            state[want.user_id] = (rng.choice([want.threecx_id, want.threecx_id, 999]), rng.choice(profiles[:4]))
        # nobody edited 3CX by hand: a user's status is what the sync last set on it (else anything)
        set_here = state.get(want.user_id, (None, None))
        current[want.threecx_id] = set_here[1] if set_here[0] == want.threecx_id else rng.choice(profiles)
    last_set = {uid: profile for uid, (_, profile) in state.items()}
    read = [w for w in desired if needs_current(w, state.get(w.user_id), w.user_id in decided)]
    unread = {w.user_id for w in desired} - {w.user_id for w in read}
    partial = {w.threecx_id: current[w.threecx_id] for w in read}
    assert (plan_switches(desired, partial, last_set, D, mode, unread=unread)
            == plan_switches(desired, current, last_set, D, mode))


def test_plan_refuses_an_unread_user_whose_desired_profile_is_not_the_last_set() -> None:
    desired = [DesiredProfile("u1", 11, "101", "Away", "busy")]
    with pytest.raises(ValueError, match="must be read"):
        plan_switches(desired, {}, {"u1": "Available"}, D, "respect", unread={"u1"})
    with pytest.raises(ValueError, match="respect or override"):
        plan_switches(desired, {}, {"u1": "Away"}, D, "sometimes", unread={"u1"})


class Writer:
    def __init__(self, fail: dict[int, Exception] | None = None) -> None:
        self.fail = fail or {}
        self.calls: list[tuple[int, str]] = []

    def set_profile(self, user_id: int, profile_name: str) -> None:
        self.calls.append((user_id, profile_name))
        if user_id in self.fail:
            raise self.fail[user_id]


def _switch(uid: str, tid: int) -> ProfileSwitch:
    return ProfileSwitch(uid, tid, str(100 + tid), "Available", "Away", "busy")


def test_apply_reports_every_outcome_and_continues_after_a_fatal_error() -> None:
    outcomes: list[SwitchOutcome] = []
    writer = Writer({2: ThreeCXFatalError("unknown profile", status=400, code="NOT_FOUND")})
    counts = apply_switches([_switch("a", 1), _switch("b", 2), _switch("c", 3)], writer, on_outcome=outcomes.append)
    assert counts == {"switched": 2, "failed": 1, "skipped": 0}
    assert [o.result for o in outcomes] == ["ok", "failed", "ok"]
    assert writer.calls == [(1, "Away"), (2, "Away"), (3, "Away")]
    row = audit_row(outcomes[1], "run", "2026-01-01")
    assert (row["object_type"], row["action"], row["field"], row["result"]) == ("presence", "set_profile",
                                                                                 "CurrentProfileName", "failed")
    assert "NOT_FOUND" in str(row["error"])


def test_apply_stops_on_a_retriable_error_after_reporting_earlier_outcomes() -> None:
    outcomes: list[SwitchOutcome] = []
    writer = Writer({2: ThreeCXRetriableError("busy", status=503)})
    with pytest.raises(ThreeCXRetriableError):
        apply_switches([_switch("a", 1), _switch("b", 2), _switch("c", 3)], writer, on_outcome=outcomes.append)
    # Like the extension and phonebook applies: the failed switch and the untried ones are reported too.
    assert [(o.switch.user_id, o.result) for o in outcomes] == [("a", "ok"), ("b", "failed"), ("c", "skipped")]
    assert writer.calls == [(1, "Away"), (2, "Away")]


def test_apply_concurrently_reports_every_outcome_in_plan_order() -> None:
    chunks: list[list[SwitchOutcome]] = []
    writer = Writer({2: ThreeCXFatalError("nope", status=404, code="NOT_FOUND")})
    switches = [_switch(f"u{i:03d}", i) for i in range(1, 251)]
    counts = apply_switches(switches, writer, on_outcomes=chunks.append, concurrency=4)
    assert [len(c) for c in chunks] == [100, 100, 50]
    flat = [o for c in chunks for o in c]
    assert [o.switch.user_id for o in flat] == [s.user_id for s in switches]
    assert counts == {"switched": 249, "failed": 1, "skipped": 0}
    assert sorted(writer.calls) == sorted((i, "Away") for i in range(1, 251))


def test_dry_run_writes_nothing() -> None:
    writer = Writer()
    outcomes: list[SwitchOutcome] = []
    counts = apply_switches([_switch("a", 1)], writer, on_outcome=outcomes.append, dry_run=True)
    assert writer.calls == []
    assert counts["skipped"] == 1 and outcomes[0].result == "skipped"


def test_plan_row_shape() -> None:
    row = plan_row(_switch("a", 1))
    assert row["changes"] == {"CurrentProfileName": ["Available", "Away"]}
    assert (row["action"], row["object_type"], row["object_key"]) == ("set_profile", "presence", "a")
