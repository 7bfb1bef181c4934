"""The AssetWatcher's trigger: fires when the receiver queued new change notifications.

It polls ``push_queue`` in the staging database for as long as the triggerer runs it and fires once
per batch of new rows (it does not return after an event, so it is never waiting to be started
again by the triggerer): the poll
marks the rows it reports (``signalled_at``) in the same statement, so a row that merely waits for
its run (the DAG is busy, ``max_active_runs=1``) never fires again and again — a persistent
condition would re-trigger forever (Airflow's event-scheduling docs). A row still unclaimed after
``resignal_minutes`` (a lost event, the DAG paused) fires once more.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

__all__ = ["PushQueueTrigger"]


def _signal(engine: Any, resignal_minutes: int) -> int:
    from m365_3cx.staging import push

    with engine.begin() as conn:
        return push.signal_new(conn, datetime.now(UTC), timedelta(minutes=resignal_minutes))


def _engine(staging_conn_id: str) -> Any:
    from m365_3cx.airflow.hooks import StagingHook

    return StagingHook(staging_conn_id).get_engine()


class PushQueueTrigger(BaseEventTrigger):
    """Poll ``push_queue`` every ``poll_seconds``; fire when rows were queued that no event announced yet.

    :param staging_conn_id: the staging database connection.
    :param poll_seconds: pause between polls.
    :param resignal_minutes: fire again for rows still unclaimed after this long.
    """

    def __init__(self, staging_conn_id: str = "m365_3cx_staging", poll_seconds: float = 1.0,
                 resignal_minutes: int = 10) -> None:
        super().__init__()
        self.staging_conn_id = staging_conn_id
        self.poll_seconds = poll_seconds
        self.resignal_minutes = resignal_minutes

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"staging_conn_id": self.staging_conn_id, "poll_seconds": self.poll_seconds,
                 "resignal_minutes": self.resignal_minutes})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from asgiref.sync import sync_to_async

        engine = None
        try:
            while True:
                try:
                    if engine is None:
                        engine = await sync_to_async(_engine)(self.staging_conn_id)
                    marked = await sync_to_async(_signal)(engine, self.resignal_minutes)
                except Exception as exc:  # staging down for a moment: keep polling, the rows wait
                    self.log.warning("push queue poll failed (%s); retrying", type(exc).__name__)
                    marked = 0
                if marked:
                    # Keep polling after an event: the triggerer passes on every event an asset
                    # trigger yields; a trigger that returns is started again on a later loop.
                    yield TriggerEvent({"queued": marked, "at": datetime.now(UTC).isoformat()})
                await asyncio.sleep(self.poll_seconds)
        finally:
            if engine is not None:
                engine.dispose()
