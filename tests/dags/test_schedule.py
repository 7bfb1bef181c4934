"""Unpausing never runs an old tick: the sync DAGs' timetables, as the scheduler computes them.

The scheduler creates a scheduled run from ``DagModel.next_dagrun``, which the dag processor and
the scheduler compute with ``dag.next_dagrun_info(last_automated_run_info=...)`` on the
*deserialized* DAG. These tests serialize the real DAG files, deserialize them (the plugin
registers the timetables) and ask the same question for a DAG whose last automated run is long
past — the state a paused DAG is in when someone unpauses it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pendulum
import pytest
from dag_helpers import load_dag

pytestmark = [pytest.mark.dag]

SYNC_DAGS = ("m365_3cx_full_sync", "m365_3cx_hourly", "m365_3cx_delta")


def _deserialized(dag_id: str) -> Any:
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(DagSerialization.to_dict(load_dag(dag_id)))


def _info(run_after: dt.datetime) -> Any:
    from airflow.timetables.base import DagRunInfo

    at = pendulum.instance(run_after)
    return DagRunInfo.interval(at, at)


@pytest.mark.parametrize("dag_id", SYNC_DAGS)
@pytest.mark.parametrize("paused_for", [dt.timedelta(hours=7), dt.timedelta(days=3)])
def test_after_a_pause_the_next_run_is_in_the_future(dag_id: str, paused_for: dt.timedelta) -> None:
    dag = _deserialized(dag_id)
    assert dag.catchup is False
    now = dt.datetime.now(dt.UTC)
    info = dag.next_dagrun_info(last_automated_run_info=_info(now - paused_for))
    assert info is not None
    assert info.run_after > now, f"{dag_id} would run the stale tick {info.run_after} on unpause"
    # and it is the next tick, not some later one
    assert info.run_after - now <= dag.timetable._get_next(pendulum.instance(now)) - pendulum.instance(now) \
        + dt.timedelta(seconds=1)


@pytest.mark.parametrize("dag_id", SYNC_DAGS)
def test_a_dag_that_never_ran_waits_for_its_next_tick(dag_id: str) -> None:
    info = _deserialized(dag_id).next_dagrun_info(last_automated_run_info=None)
    assert info is not None and info.run_after > dt.datetime.now(dt.UTC)


@pytest.mark.parametrize("dag_id", SYNC_DAGS)
@pytest.mark.parametrize("paused_for", [None, dt.timedelta(days=3)])
def test_the_next_tick_stays_put_when_computed_again(dag_id: str, paused_for: dt.timedelta | None) -> None:
    """The dag processor recomputes ``next_dagrun`` on every parse: the tick must not move ahead each time."""
    import time

    dag = _deserialized(dag_id)
    last = None if paused_for is None else _info(dt.datetime.now(dt.UTC) - paused_for)
    first = dag.next_dagrun_info(last_automated_run_info=last).run_after
    time.sleep(1.2)
    computed_again_at = dt.datetime.now(dt.UTC)
    second = dag.next_dagrun_info(last_automated_run_info=last).run_after
    # the same tick, unless the first one has come and gone in between
    assert second == first or first <= computed_again_at, f"{dag_id}: tick moved from {first} to {second}"


@pytest.mark.parametrize("dag_id", SYNC_DAGS)
def test_the_stock_timetable_would_have_run_the_stale_tick(dag_id: str) -> None:
    """The defect, reproduced: Airflow's own trigger timetable schedules the latest past tick (or now)."""
    from airflow.timetables.base import DataInterval
    from airflow.timetables.trigger import CronTriggerTimetable, DeltaTriggerTimetable

    dag = _deserialized(dag_id)
    ours = dag.timetable
    stock = (DeltaTriggerTimetable(ours._delta) if isinstance(ours, DeltaTriggerTimetable)
             else CronTriggerTimetable(ours._expression, timezone=ours._timezone))
    now = dt.datetime.now(dt.UTC)
    last = pendulum.instance(now - dt.timedelta(days=3))
    info = stock.next_dagrun_info(last_automated_data_interval=DataInterval(last, last),
                                  restriction=dag._time_restriction)
    assert info.run_after <= pendulum.instance(dt.datetime.now(dt.UTC))


@pytest.mark.parametrize("kind", ["cron", "delta"])
def test_a_tick_a_little_late_still_runs(kind: str) -> None:
    """A scheduler (or dag processor) a little late still runs the due tick, within the grace."""
    from airflow.timetables.base import DataInterval, TimeRestriction

    from m365_3cx.airflow.timetables import FreshCronTriggerTimetable, FreshDeltaTriggerTimetable

    now = pendulum.instance(dt.datetime.now(dt.UTC))
    if kind == "cron":  # every minute: the previous tick is less than a minute old
        timetable = FreshCronTriggerTimetable("* * * * *", timezone="UTC", grace=dt.timedelta(minutes=2))
        due = timetable._align_to_prev(now)
    else:
        timetable = FreshDeltaTriggerTimetable(dt.timedelta(minutes=5), grace=dt.timedelta(minutes=2))
        due = now - dt.timedelta(seconds=30)
    previous = timetable._get_prev(due)
    restriction = TimeRestriction(pendulum.datetime(2026, 1, 1, tz="UTC"), None, False)
    info = timetable.next_dagrun_info(last_automated_data_interval=DataInterval(previous, previous),
                                      restriction=restriction)
    assert info.run_after == due
    stale = timetable._get_prev(timetable._get_prev(now - dt.timedelta(minutes=3)))
    info = timetable.next_dagrun_info(last_automated_data_interval=DataInterval(stale, stale),
                                      restriction=restriction)
    assert info.run_after > now


def test_catchup_on_keeps_airflow_behaviour() -> None:
    from airflow.timetables.base import DataInterval, TimeRestriction

    timetable = _deserialized("m365_3cx_full_sync").timetable
    last = pendulum.datetime(2026, 11, 1, 2, 30, tz="UTC")
    info = timetable.next_dagrun_info(last_automated_data_interval=DataInterval(last, last),
                                      restriction=TimeRestriction(None, None, True))
    assert info.run_after == pendulum.datetime(2026, 11, 2, 2, 30, tz="UTC")


def test_grace_survives_serialization(monkeypatch: pytest.MonkeyPatch) -> None:
    from m365_3cx.airflow.timetables import FreshCronTriggerTimetable, schedule_grace

    monkeypatch.setenv("M365_3CX_SCHEDULE_GRACE_MINUTES", "2")
    assert schedule_grace() == dt.timedelta(minutes=2)
    timetable = FreshCronTriggerTimetable("30 2 * * *", timezone="Europe/Berlin", grace=schedule_grace())
    again = FreshCronTriggerTimetable.deserialize(timetable.serialize())
    assert again._grace == dt.timedelta(minutes=2) and again._expression == "30 2 * * *"
