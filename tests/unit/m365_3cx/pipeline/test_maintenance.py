"""The staleness watchdog's episodes, on SQLite and PostgreSQL (no Airflow)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from m365_3cx.alerts import StaleAlert
from m365_3cx.pipeline.maintenance import check_staleness
from m365_3cx.settings import Settings
from m365_3cx.staging.db import make_engine
from m365_3cx.staging.runs import finish_run, start_run
from m365_3cx.staging.schema import create_schema

T0 = dt.datetime(2026, 12, 1, 8, 0, tzinfo=dt.UTC)
SETTINGS = Settings.from_mapping({"alerts": {"stale_users_minutes": 60, "stale_phonebook_minutes": 0},
                                  "presence": {"enabled": True}})


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    url = f"sqlite:///{tmp_path / 'staging.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "pg_database")
    engine = make_engine(url)
    create_schema(engine)
    yield engine
    engine.dispose()


class Outbox:
    def __init__(self) -> None:
        self.sent: list[StaleAlert] = []
        self.up = True

    def __call__(self, alert: StaleAlert) -> bool:
        if self.up:
            self.sent.append(alert)
        return self.up


def _success(engine: sa.Engine, dag_id: str, at: dt.datetime, mode: str = "delta") -> None:
    key = f"{dag_id}/{at.isoformat()}"
    with engine.begin() as conn:
        start_run(conn, key, dag_id, at.isoformat(), mode, False, at)
        finish_run(conn, key, "success", {}, at)


def test_episodes_open_once_close_once_and_retry_undelivered(engine: sa.Engine) -> None:
    out = Outbox()
    tick = lambda minutes: check_staleness(engine, SETTINGS, T0 + dt.timedelta(minutes=minutes), out)  # noqa: E731
    assert tick(0)["features"] == {"users": "fresh", "phonebook": "off", "status": "fresh"}
    out.up = False
    assert tick(61)["alerts"] == 0  # users stale (never synced), but the mail could not go out
    out.up = True
    assert tick(62)["alerts"] == 1  # retried on the next tick
    assert [(a.feature, a.last_success, a.recovered) for a in out.sent] == [("users", None, False)]
    assert tick(70)["alerts"] == 0  # same episode
    _success(engine, "m365_3cx_delta", T0 + dt.timedelta(minutes=75), mode="on_demand")
    assert tick(80)["features"]["users"] == "stale"  # an on-demand run keeps nothing fresh
    _success(engine, "m365_3cx_delta", T0 + dt.timedelta(minutes=85))
    result = tick(90)
    assert result["features"]["users"] == "fresh" and result["alerts"] == 1
    assert out.sent[-1].recovered and out.sent[-1].last_success == "2026-12-01 09:25 UTC"
    assert tick(100)["alerts"] == 0
    # status: the delta success also counts; after 180 min without one it opens its own episode
    stale = tick(85 + 181)
    assert stale["features"] == {"users": "stale", "phonebook": "off", "status": "stale"}
    assert sorted(a.feature for a in out.sent[-2:]) == ["status", "users"]


def test_status_check_is_off_without_presence(engine: sa.Engine) -> None:
    out = Outbox()
    settings = Settings.from_mapping({"alerts": {"stale_users_minutes": 0, "stale_phonebook_minutes": 0}})
    assert check_staleness(engine, settings, T0, out)["features"] == dict.fromkeys(("users", "phonebook", "status"),
                                                                                   "off")
    assert check_staleness(engine, settings, T0 + dt.timedelta(days=3), out)["alerts"] == 0
