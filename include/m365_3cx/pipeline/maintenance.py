"""Housekeeping steps: the staleness watchdog and the retention cleanup.

The watchdog reads ``sync_runs`` only: a feature is *stale* when no run of a DAG that carries it
finished successfully within the feature's limit (``alerts.stale_<feature>_minutes``). When no
successful run is recorded at all (the DAG was never scheduled, stays paused, or fails since the
first run), the age counts from the watchdog's first look at the feature. One alert opens an
episode (``sync_alert_state``), one more closes it when the feature is fresh again; the ticks in
between send nothing.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

from m365_3cx.alerts import StaleAlert
from m365_3cx.pipeline.ondemand import ON_DEMAND_MODE
from m365_3cx.staging.schema import sync_alert_state, sync_runs

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from m365_3cx.settings import Settings

log = logging.getLogger(__name__)

#: Feature -> the DAGs whose successful (non on-demand) runs keep it fresh.
FEATURE_DAGS: Final[dict[str, tuple[str, ...]]] = {
    "users": ("m365_3cx_full_sync", "m365_3cx_delta"),
    "phonebook": ("m365_3cx_full_sync", "m365_3cx_delta"),
    "status": ("m365_3cx_hourly", "m365_3cx_delta"),
}


def _thresholds(settings: Settings) -> dict[str, int]:
    alerts = settings.alerts
    limits = {"users": alerts.stale_users_minutes, "phonebook": alerts.stale_phonebook_minutes,
              "status": alerts.stale_status_minutes if settings.presence.enabled else 0}
    return {feature: minutes for feature, minutes in limits.items() if minutes > 0}


def _last_success(conn: Any, dag_ids: tuple[str, ...]) -> dt.datetime | None:
    return conn.execute(
        sa.select(sa.func.max(sync_runs.c.finished_at)).where(
            sync_runs.c.dag_id.in_(dag_ids), sync_runs.c.status == "success", sync_runs.c.mode != ON_DEMAND_MODE)
    ).scalar()


def _stamp(value: dt.datetime | None) -> str | None:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC") if value else None


def check_staleness(
    engine: Engine, settings: Settings, now: dt.datetime, send: Callable[[StaleAlert], bool],
    base_url: str | None = None,
) -> dict[str, Any]:
    """One watchdog tick: open or close staleness episodes, alerting once per change.

    :param send: delivers one alert; returns True when it was delivered (or deliberately only
        logged). An episode whose alert was not delivered is retried on the next tick.
    :returns: per feature ``fresh``/``stale``/``off`` and the alerts sent.
    """
    limits = _thresholds(settings)
    result: dict[str, Any] = {"features": {}, "alerts": 0}
    with engine.begin() as conn:
        states = {row["feature"]: dict(row) for row in conn.execute(sa.select(sync_alert_state)).mappings()}
        for feature in FEATURE_DAGS:
            if feature not in limits:
                result["features"][feature] = "off"
                conn.execute(sa.delete(sync_alert_state).where(sync_alert_state.c.feature == feature))
                continue
            state = states.get(feature)
            if state is None:
                state = {"feature": feature, "first_checked_at": now, "stale_since": None, "alerted_at": None}
                conn.execute(sa.insert(sync_alert_state).values(**state, checked_at=now, last_success_at=None))
            last = _last_success(conn, FEATURE_DAGS[feature])
            base = last or state["first_checked_at"]
            age = int((now - base).total_seconds() // 60)
            stale = age > limits[feature]
            values: dict[str, Any] = {"checked_at": now, "last_success_at": last}
            alert = StaleAlert(feature, FEATURE_DAGS[feature], _stamp(last), age, limits[feature],
                               base_url=base_url)
            if stale:
                result["features"][feature] = "stale"
                if state["stale_since"] is None:
                    values["stale_since"] = base
                if state["alerted_at"] is None:
                    log.warning("staleness: no successful %s sync for %d min (limit %d min; last success %s)",
                                feature, age, limits[feature], _stamp(last) or "never")
                    if send(alert):
                        values["alerted_at"] = now
                        result["alerts"] += 1
            else:
                result["features"][feature] = "fresh"
                if state["stale_since"] is not None:
                    if state["alerted_at"] is not None:
                        log.info("staleness: %s sync is fresh again (last success %s)", feature, _stamp(last))
                        if not send(StaleAlert(feature, FEATURE_DAGS[feature], _stamp(last), age, limits[feature],
                                               recovered=True, base_url=base_url)):
                            conn.execute(sa.update(sync_alert_state).where(
                                sync_alert_state.c.feature == feature).values(**values))
                            continue
                        result["alerts"] += 1
                    values.update(stale_since=None, alerted_at=None)
            conn.execute(sa.update(sync_alert_state).where(sync_alert_state.c.feature == feature).values(**values))
    log.info("staleness: %s; %d alert(s) sent",
             ", ".join(f"{f} {s}" for f, s in result["features"].items()), result["alerts"])
    return result


def purge_history(engine: Engine, settings: Settings, now: dt.datetime) -> dict[str, Any]:
    """Delete runs, plans, audit, notes and traces older than ``retention.days`` (maps are kept)."""
    from m365_3cx.staging.retention import purge_history as purge

    cutoff = now - dt.timedelta(days=settings.retention.days)
    with engine.begin() as conn:
        counts = purge(conn, cutoff)
    log.info("retention: deleted history older than %d days (before %s): %s", settings.retention.days,
             _stamp(cutoff), ", ".join(f"{n} {table}" for table, n in counts.items()))
    return {"cutoff": cutoff.isoformat(), **counts}
