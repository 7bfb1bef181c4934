"""The durable push queue on real PostgreSQL, and the AssetWatcher trigger polling it."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

pytestmark = [pytest.mark.postgres]

NOW = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


@pytest.fixture
def engine(pg_database: str) -> Any:
    from m365_3cx.staging.schema import create_schema

    engine = sa.create_engine(pg_database)
    create_schema(engine)
    yield engine
    engine.dispose()


def _start(conn: Any, run_key: str, status: str = "running") -> None:
    from m365_3cx.staging.schema import sync_runs

    conn.execute(sync_runs.insert(), [{"run_key": run_key, "dag_id": "m365_3cx_push", "run_id": run_key,
                                       "mode": "delta", "dry_run": False, "status": status, "started_at": NOW}])


def test_rows_signal_once_burst_coalesces_and_late_arrivals_wait_for_the_next_run(engine: Any) -> None:
    from m365_3cx.staging import push

    with engine.begin() as conn:
        push.enqueue(conn, [{"kind": "contacts", "user_id": "u1"}, {"kind": "contacts", "user_id": "u1"},
                            {"kind": "events", "user_id": "u2"}, {"kind": "users", "user_id": "u3"}], NOW)
        assert push.signal_new(conn, NOW, timedelta(minutes=10)) == 4
        assert push.signal_new(conn, NOW + timedelta(seconds=5), timedelta(minutes=10)) == 0  # no re-firing
        _start(conn, "run-1")
        assert push.claim(conn, "run-1", NOW) == {"users": 1, "contacts": 2, "events": 1, "mailboxes": 2}
        assert push.claimed_users(conn, "run-1", "contacts") == {"u1"}
        push.enqueue(conn, [{"kind": "contacts", "user_id": "u9"}], NOW + timedelta(seconds=1))
        assert push.signal_new(conn, NOW + timedelta(seconds=1), timedelta(minutes=10)) == 1
        assert push.complete(conn, "run-1", NOW) == 4
        assert push.open_counts(conn) == {"contacts": 1}
        _start(conn, "run-2")
        assert push.claim(conn, "run-2", NOW)["contacts"] == 1
        assert push.claimed_users(conn, "run-2", "contacts") == {"u9"}


def test_claims_of_a_failed_run_go_to_the_next_run_and_unclaimed_rows_resignal(engine: Any) -> None:
    from m365_3cx.staging import push
    from m365_3cx.staging.schema import sync_runs

    with engine.begin() as conn:
        push.enqueue(conn, [{"kind": "events", "user_id": "u1"}], NOW)
        _start(conn, "run-1")
        push.claim(conn, "run-1", NOW)
        conn.execute(sa.update(sync_runs).where(sync_runs.c.run_key == "run-1").values(status="failed"))
        _start(conn, "run-2")
        assert push.claim(conn, "run-2", NOW)["events"] == 1
        push.enqueue(conn, [{"kind": "users", "user_id": "u5"}], NOW)
        assert push.signal_new(conn, NOW, timedelta(minutes=10)) == 1
        assert push.signal_new(conn, NOW + timedelta(minutes=5), timedelta(minutes=10)) == 0
        assert push.signal_new(conn, NOW + timedelta(minutes=11), timedelta(minutes=10)) == 1  # a lost event
        assert push.purge_done(conn, NOW + timedelta(days=1)) == 0
        push.complete(conn, "run-2", NOW)
        assert push.purge_done(conn, NOW + timedelta(days=1)) == 1


def test_trigger_fires_for_new_rows_and_not_again_for_waiting_ones(engine: Any, pg_database: str,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from m365_3cx.airflow.push_trigger import PushQueueTrigger
    from m365_3cx.staging import push

    url = sa.engine.make_url(pg_database)
    monkeypatch.setenv("AIRFLOW_CONN_M365_3CX_STAGING", json.dumps({
        "conn_type": "postgres", "host": url.host, "port": url.port, "login": url.username, "schema": url.database}))
    trigger = PushQueueTrigger(poll_seconds=0.05)
    classpath, kwargs = trigger.serialize()
    assert classpath == "m365_3cx.airflow.push_trigger.PushQueueTrigger"

    async def first_event(timeout: float) -> Any:
        async def take() -> Any:
            async for event in PushQueueTrigger(**kwargs).run():
                return event
        try:
            return await asyncio.wait_for(take(), timeout)
        except TimeoutError:
            return None

    with engine.begin() as conn:
        push.enqueue(conn, [{"kind": "contacts", "user_id": "u1"}, {"kind": "events", "user_id": "u1"}],
                     datetime.now(UTC))
    event = asyncio.run(first_event(10.0))
    assert event is not None and event.payload["queued"] == 2
    assert asyncio.run(first_event(1.0)) is None  # the same (still unclaimed) rows do not fire again


def test_trigger_keeps_polling_after_an_event_and_fires_again_for_the_next_batch(
        engine: Any, pg_database: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """One running trigger announces batch after batch: it does not return and wait to be restarted."""
    from m365_3cx.airflow.push_trigger import PushQueueTrigger
    from m365_3cx.staging import push

    url = sa.engine.make_url(pg_database)
    monkeypatch.setenv("AIRFLOW_CONN_M365_3CX_STAGING", json.dumps({
        "conn_type": "postgres", "host": url.host, "port": url.port, "login": url.username, "schema": url.database}))

    def enqueue(user_id: str) -> None:
        with engine.begin() as conn:
            push.enqueue(conn, [{"kind": "users", "user_id": user_id}], datetime.now(UTC))

    async def three_batches() -> list[int]:
        queued: list[int] = []
        events = PushQueueTrigger(poll_seconds=0.05).run()
        try:
            for user_id in ("u1", "u2", "u3"):
                await asyncio.to_thread(enqueue, user_id)
                event = await asyncio.wait_for(anext(events), 10.0)
                queued.append(event.payload["queued"])
        finally:
            await events.aclose()
        return queued

    assert asyncio.run(three_batches()) == [1, 1, 1]
