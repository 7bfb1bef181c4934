"""Feature leases (run exclusion across DAGs) on SQLite and PostgreSQL; threads race on PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest
from sqlalchemy import Engine

from m365_3cx.staging import lease
from m365_3cx.staging.lease import FeatureBusyError, StalePlanError

T0 = dt.datetime(2026, 12, 1, 2, 30, tzinfo=dt.UTC)


class Clock:
    """Wall clock (``now``) and monotonic clock/sleep advanced together, no real sleeping."""

    def __init__(self) -> None:
        self.t = 0.0

    def now(self) -> dt.datetime:
        return T0 + dt.timedelta(seconds=self.t)

    def mono(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds


def opts(clock: Clock, wait: float = 10.0, ttl_minutes: int = 45) -> dict[str, Any]:
    return {"now": clock.now, "clock": clock.mono, "sleep": clock.sleep, "wait": wait,
            "ttl": dt.timedelta(minutes=ttl_minutes)}


def test_one_run_at_a_time_and_the_busy_error_names_the_holder(engine: Engine) -> None:
    clock = Clock()
    taken = lease.acquire(engine, "phonebook", "full/run1", **opts(clock))
    assert taken.generation == 0 and lease.holder_of(engine, "phonebook", clock.now()) == "full/run1"
    with pytest.raises(FeatureBusyError, match="full/run1") as busy:
        lease.acquire(engine, "phonebook", "delta/run2", **opts(clock))
    assert busy.value.holder == "full/run1" and clock.t >= 10.0  # waited the bounded time
    # other features are independent; the holder itself (a task retry) re-takes its own lease
    lease.acquire(engine, "extensions", "delta/run2", **opts(clock))
    lease.acquire(engine, "phonebook", "full/run1", **opts(clock))
    lease.resume(engine, "phonebook", "full/run1", step="apply", **opts(clock))
    assert lease.release(engine, "phonebook", "full/run1", wrote=True)
    assert lease.acquire(engine, "phonebook", "delta/run2", **opts(clock)).generation == 1


def test_a_waiting_run_gets_the_feature_when_the_holder_releases(engine: Engine) -> None:
    clock = Clock()
    lease.acquire(engine, "extensions", "full/a", **opts(clock))
    real_sleep = clock.sleep

    def sleep_then_release(seconds: float) -> None:
        real_sleep(seconds)
        if clock.t >= 4:
            lease.release(engine, "extensions", "full/a", wrote=False)

    got = lease.acquire(engine, "extensions", "delta/b", now=clock.now, clock=clock.mono, sleep=sleep_then_release,
                        wait=60)
    assert got.run_key == "delta/b" and 4 <= clock.t < 60


def test_an_expired_lease_of_a_killed_worker_is_taken_over(engine: Engine) -> None:
    clock = Clock()
    lease.acquire(engine, "presence", "hourly/dead", **opts(clock, ttl_minutes=1))
    clock.t += 61
    assert lease.holder_of(engine, "presence", clock.now()) is None
    assert lease.acquire(engine, "presence", "delta/next", **opts(clock, wait=0)).run_key == "delta/next"
    # the dead run cannot come back and apply over the newer run
    with pytest.raises(FeatureBusyError):
        lease.resume(engine, "presence", "hourly/dead", step="apply", **opts(clock, wait=0))


def test_resume_without_a_snapshot_claim_is_refused(engine: Engine) -> None:
    with pytest.raises(StalePlanError, match="no snapshot lease"):
        lease.resume(engine, "phonebook", "delta/x", step="apply", **opts(Clock(), wait=0))


def test_parked_run_lets_others_sync_and_its_plan_is_refused_if_they_wrote(engine: Engine) -> None:
    clock = Clock()
    lease.acquire(engine, "extensions", "full/approval", **opts(clock))
    assert lease.park(engine, "extensions", "full/approval")
    # the delta DAG is not blocked while the full run waits for approval
    lease.acquire(engine, "extensions", "delta/1", **opts(clock, wait=0))
    lease.release(engine, "extensions", "delta/1", wrote=False)  # wrote nothing: the parked plan stays valid
    assert lease.resume(engine, "extensions", "full/approval", step="apply", **opts(clock, wait=0)).generation == 0
    assert lease.park(engine, "extensions", "full/approval")
    lease.acquire(engine, "extensions", "delta/2", **opts(clock, wait=0))
    lease.release(engine, "extensions", "delta/2", wrote=True)
    with pytest.raises(StalePlanError, match="stale"):
        lease.resume(engine, "extensions", "full/approval", step="apply", **opts(clock, wait=0))


def test_unknown_feature_is_a_programming_error(engine: Engine) -> None:
    with pytest.raises(ValueError, match="unknown feature"):
        lease.acquire(engine, "mail", "r", **opts(Clock()))


@pytest.mark.postgres
def test_racing_takers_on_postgresql_get_it_one_at_a_time(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("real concurrent takers need PostgreSQL (SQLite is the single-process demo)")
    winners: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def take(i: int) -> None:
        start.wait()
        try:
            lease.acquire(engine, "phonebook", f"run{i}", now=lambda: dt.datetime.now(dt.UTC), wait=0)
            winners.append(f"run{i}")
        except FeatureBusyError:
            pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=take, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(winners) == 1
