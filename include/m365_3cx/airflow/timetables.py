"""Trigger timetables that never run a stale tick: unpausing alone starts nothing.

Airflow's ``CronTriggerTimetable`` and ``DeltaTriggerTimetable`` with ``catchup=False`` schedule
the most recent past tick (a delta timetable: *now*) as soon as a DAG is unpaused — also after a
long pause, so ticking "unpause on trigger" in the trigger form started an unplanned run. These
subclasses keep every other behaviour but, with catchup off, schedule the tick after the last
automated run only while it is at most ``grace`` old (a scheduler that is a few seconds or
minutes late still runs it); anything older is skipped and the next tick *after now* is
scheduled. With catchup on they behave exactly like their parents.

Registered with Airflow by the ``m365_3cx_timetables`` plugin (``plugins/``), which the
scheduler and the dag processor need to deserialize the DAGs.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction
from airflow.timetables.trigger import (  # the timezone helpers the parent timetables use
    CronTriggerTimetable,
    DeltaTriggerTimetable,
    coerce_datetime,
    parse_timezone,
    utcnow,
)

__all__ = ["DEFAULT_GRACE", "FreshCronTriggerTimetable", "FreshDeltaTriggerTimetable", "schedule_grace"]

#: How late a due tick may still run after the scheduler missed it (``M365_3CX_SCHEDULE_GRACE_MINUTES``).
DEFAULT_GRACE = datetime.timedelta(minutes=5)


def schedule_grace() -> datetime.timedelta:
    """The grace from the environment (minutes, at least 0), read at parse time."""
    raw = os.environ.get("M365_3CX_SCHEDULE_GRACE_MINUTES")
    return datetime.timedelta(minutes=max(0.0, float(raw))) if raw else DEFAULT_GRACE


class _FreshTicks:
    """``next_dagrun_info`` without stale ticks when catchup is off (see the module docstring)."""

    _grace: datetime.timedelta
    _interval: Any

    def _after(self, now: Any) -> Any:
        raise NotImplementedError

    def next_dagrun_info(
        self, *, last_automated_data_interval: DataInterval | None, restriction: TimeRestriction
    ) -> DagRunInfo | None:
        if restriction.catchup:
            return super().next_dagrun_info(  # type: ignore[misc]
                last_automated_data_interval=last_automated_data_interval, restriction=restriction)
        now = coerce_datetime(utcnow())
        start = None
        if last_automated_data_interval is not None:
            due = self._get_next(coerce_datetime(last_automated_data_interval.end))  # type: ignore[attr-defined]
            if due >= now - self._grace:
                start = due
        if start is None:
            start = self._after(now)
        if restriction.earliest is not None:
            start = max(start, self._align_to_next(restriction.earliest))  # type: ignore[attr-defined]
        if restriction.latest is not None and restriction.latest < start:
            return None
        return DagRunInfo.interval(coerce_datetime(start - self._interval), start)


class FreshCronTriggerTimetable(_FreshTicks, CronTriggerTimetable):
    """``CronTriggerTimetable`` whose unpause never runs a past tick (the first is the next tick from now).

    :param grace: how old the tick after the last automated run may be and still run.
    """

    def __init__(self, cron: str, *, timezone: Any, interval: Any = datetime.timedelta(),
                 grace: datetime.timedelta = DEFAULT_GRACE) -> None:
        super().__init__(cron, timezone=timezone, interval=interval)
        self._grace = grace

    def _after(self, now: Any) -> Any:
        return self._align_to_next(now)

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> FreshCronTriggerTimetable:
        from airflow.serialization.decoders import decode_interval

        return cls(data["expression"], timezone=parse_timezone(data["timezone"]),
                   interval=decode_interval(data["interval"]),
                   grace=datetime.timedelta(seconds=float(data.get("grace_seconds", DEFAULT_GRACE.total_seconds()))))

    def serialize(self) -> dict[str, Any]:
        return {**super().serialize(), "grace_seconds": self._grace.total_seconds()}


class FreshDeltaTriggerTimetable(_FreshTicks, DeltaTriggerTimetable):
    """``DeltaTriggerTimetable`` whose unpause never runs at once (the first run is the next tick).

    Without a recent automated run the next tick lies on a fixed grid (multiples of the delta since
    the Unix epoch), not at "now + delta": the dag processor recomputes ``next_dagrun`` on every
    parse (every 30 s by default), and a tick one delta after *that* moment kept moving ahead, so a
    DAG that never ran, or ran last before a long pause, never came due.

    :param grace: how old the tick after the last automated run may be and still run.
    """

    def __init__(self, delta: datetime.timedelta, *, interval: datetime.timedelta = datetime.timedelta(),
                 grace: datetime.timedelta = DEFAULT_GRACE) -> None:
        super().__init__(delta, interval=interval)
        self._grace = grace

    def _after(self, now: Any) -> Any:
        if not isinstance(self._delta, datetime.timedelta) or self._delta <= datetime.timedelta():
            return self._get_next(now)  # a calendar delta (relativedelta) has no fixed grid
        epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
        elapsed = datetime.datetime.fromtimestamp(now.timestamp(), datetime.UTC) - epoch  # stdlib, not pendulum
        ticks = elapsed // self._delta + 1
        return coerce_datetime(epoch + ticks * self._delta)

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> FreshDeltaTriggerTimetable:
        from airflow.serialization.decoders import decode_interval

        return cls(decode_interval(data["delta"]), interval=decode_interval(data["interval"]),
                   grace=datetime.timedelta(seconds=float(data.get("grace_seconds", DEFAULT_GRACE.total_seconds()))))

    def serialize(self) -> dict[str, Any]:
        return {**super().serialize(), "grace_seconds": self._grace.total_seconds()}
