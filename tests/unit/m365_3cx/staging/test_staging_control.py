"""The go-live switch, the write gate and removal approvals on a real staging database (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import logging

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from m365_3cx.errors import MassRemovalError
from m365_3cx.pipeline.safety import guard_removals, write_gate
from m365_3cx.reconcile.plan import Change
from m365_3cx.settings import Settings
from m365_3cx.staging import control
from m365_3cx.staging.runs import save_plan, start_run
from m365_3cx.staging.schema import sync_control_log, sync_plan, sync_runs

T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)


def test_fresh_install_is_not_live(engine: Engine) -> None:
    with engine.connect() as conn:
        state = control.writes_enabled(conn)
    assert state == control.WritesState(False, None, None)


def test_each_change_is_recorded_with_who_and_when(engine: Engine) -> None:
    with engine.begin() as conn:
        on = control.set_writes_enabled(conn, True, changed_by="alice", now=T0, run_key="m365_3cx_go_live/r1",
                                        note="pilot")
        off = control.set_writes_enabled(conn, False, changed_by="bob", now=T0 + dt.timedelta(hours=1))
    assert (on.enabled, on.changed_by, on.changed_at, on.note) == (True, "alice", T0, "pilot")
    assert (off.enabled, off.changed_by, off.changed_at) == (False, "bob", T0 + dt.timedelta(hours=1))
    with engine.connect() as conn:
        assert control.writes_enabled(conn).enabled is False
        log_rows = control.control_log(conn)
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_control_log)).scalar_one() == 2
    assert [(r["enabled"], r["previous"], r["changed_by"], r["run_key"]) for r in log_rows] == [
        (False, True, "bob", None), (True, None, "alice", "m365_3cx_go_live/r1")]


@pytest.mark.parametrize("who", ["", "   "])
def test_a_change_must_name_who_made_it(engine: Engine, who: str) -> None:
    with engine.begin() as conn, pytest.raises(ValueError, match="changed_by"):
        control.set_writes_enabled(conn, True, changed_by=who, now=T0)
    with engine.connect() as conn:
        assert control.writes_enabled(conn).enabled is False


def _start(engine: Engine, key: str, dry_run: bool = False, reason: str | None = None) -> None:
    with engine.begin() as conn:
        start_run(conn, key, "m365_3cx_full_sync", key, "full", dry_run, T0, dry_reason=reason)


def _run_row(engine: Engine, key: str) -> tuple[bool, str | None]:
    with engine.connect() as conn:
        row = conn.execute(sa.select(sync_runs.c.dry_run, sync_runs.c.dry_reason)
                           .where(sync_runs.c.run_key == key)).one()
    return bool(row.dry_run), row.dry_reason


def test_gate_makes_every_run_dry_while_not_live_and_records_why(engine: Engine, caplog: pytest.LogCaptureFixture
                                                                 ) -> None:
    _start(engine, "d/r1")
    with caplog.at_level(logging.INFO, logger="m365_3cx.pipeline.safety"):
        decision = write_gate(engine, "d/r1", False, step="apply_extensions")
    assert (decision.dry_run, decision.reason) == (True, "writes_off")
    assert "apply_extensions: dry run: writes are off (not live)" in caplog.text
    assert _run_row(engine, "d/r1") == (True, "writes_off")
    assert write_gate(engine, "d/r1", True, step="x").reason == "requested,writes_off"
    assert _run_row(engine, "d/r1") == (True, "requested,writes_off")


def test_gate_opens_only_when_live_and_not_requested_and_run_started_live(engine: Engine) -> None:
    with engine.begin() as conn:
        control.set_writes_enabled(conn, True, changed_by="alice", now=T0)
    _start(engine, "d/live")
    assert write_gate(engine, "d/live", False, step="s").dry_run is False
    assert _run_row(engine, "d/live") == (False, None)
    assert write_gate(engine, "d/live", True, step="s").reason == "requested"
    # a run that started while not live stays dry after going live (its plan was made dry)
    _start(engine, "d/started-dry", True, "writes_off")
    assert write_gate(engine, "d/started-dry", False, step="s").reason == "writes_off"
    # turned off mid-run: the next step is dry
    _start(engine, "d/midway")
    with engine.begin() as conn:
        control.set_writes_enabled(conn, False, changed_by="bob", now=T0)
    assert write_gate(engine, "d/midway", False, step="s").reason == "writes_off"
    assert _run_row(engine, "d/midway") == (True, "writes_off")


def _plan(engine: Engine, key: str, n_removals: int, n_updates: int) -> list[tuple[int, Change]]:
    changes = [Change("disable", f"u{i}", f"10{i}", 100 + i, {}, "user disabled") for i in range(n_removals)]
    changes += [Change("update", f"k{i}", f"20{i}", 200 + i, {"FirstName": ("a", "b")}, "") for i in range(n_updates)]
    from m365_3cx.reconcile.plan import plan_rows

    with engine.begin() as conn:
        save_plan(conn, key, plan_rows(changes, key))
    with engine.connect() as conn:
        from m365_3cx.pipeline.outcomes import load_changes

        return load_changes(conn, key, "extension")


def _statuses(engine: Engine, key: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(sync_plan.c.status, sa.func.count()).where(sync_plan.c.run_key == key)
                            .group_by(sync_plan.c.status)).all()
    return dict(rows)


SETTINGS = Settings.from_mapping({"guards": {"mass_removal_min": 2, "mass_removal_fraction": 0.1}})


def test_guard_without_decision_stops_before_any_write(engine: Engine) -> None:
    planned = _plan(engine, "d/g1", 5, 3)
    with pytest.raises(MassRemovalError, match="5 of 20 managed extensions"):
        guard_removals(engine, "d/g1", "d/g1", "extension", planned, 20, SETTINGS, allow=False, dry_run=False,
                       scope_hint="the user scope")
    assert guard_removals(engine, "d/g1", "d/g1", "extension", planned, 20, SETTINGS, allow=True,
                          dry_run=False, scope_hint="s") == planned
    assert guard_removals(engine, "d/g1", "d/g1", "extension", planned, 20, SETTINGS, allow=False,
                          dry_run=True, scope_hint="s") == planned
    within = _plan(engine, "d/g2", 2, 1)
    assert guard_removals(engine, "d/g2", "d/g2", "extension", within, 20, SETTINGS, allow=False,
                          dry_run=False, scope_hint="s") == within


@pytest.mark.parametrize("decision", ["approved", "rejected", "timed_out"])
def test_guard_honours_the_stored_decision(engine: Engine, decision: str) -> None:
    planned = _plan(engine, "d/g3", 5, 3)
    with engine.begin() as conn:
        control.request_approval(conn, run_key="d/g3", object_type="extension", plan_key="d/g3", dag_id="d",
                                 run_id="g3", task_id="approve", removals=5, managed=20, removal_limit=2, now=T0)
        assert control.approval(conn, "d/g3", "extension").status == "pending"
        assert control.decide_approval(conn, "d/g3", "extension", decision,
                                       decided_by=None if decision == "timed_out" else "carol", now=T0)
        assert not control.decide_approval(conn, "d/g3", "extension", "approved", decided_by="mallory", now=T0)
        # a retry of the run re-requesting never overwrites the decision
        control.request_approval(conn, run_key="d/g3", object_type="extension", plan_key="d/g3", dag_id="d",
                                 run_id="g3", task_id="approve", removals=5, managed=20, removal_limit=2, now=T0)
        stored = control.approval(conn, "d/g3", "extension")
    assert stored.status == decision
    assert stored.decided_by == (None if decision == "timed_out" else "carol")
    kept = guard_removals(engine, "d/g3", "d/g3", "extension", planned, 20, SETTINGS, allow=False, dry_run=False,
                          scope_hint="s")
    if decision == "approved":
        assert kept == planned
        assert _statuses(engine, "d/g3") == {"planned": 8}
    else:
        assert [c.action for _, c in kept] == ["update"] * 3
        assert _statuses(engine, "d/g3") == {"planned": 3, "rejected": 5}
