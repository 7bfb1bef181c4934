"""The console's push card: subscriptions, next expiry, last notification per kind, failures (query, JSON, HTML)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from m365_3cx.console import pages
from m365_3cx.console import queries as q
from m365_3cx.console.render import chart, render
from m365_3cx.staging import push
from m365_3cx.staging.db import make_engine
from m365_3cx.staging.schema import create_schema

NOW = dt.datetime(2026, 12, 2, 9, 0, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'staging.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "pg_database")
    eng = make_engine(url)
    create_schema(eng)
    yield eng
    eng.dispose()


def _seed(engine: Engine) -> None:
    with engine.begin() as conn:
        for sid, purpose, user, hours, status, error in (
                ("s-users", "users", None, 400, "active", None),
                ("s-c1", "contacts", "u1", 30, "active", None),
                ("s-e1", "events", "u1", 5, "reauthorize", "HTTP 403: Forbidden")):
            push.save_subscription(conn, {
                "subscription_id": sid, "purpose": purpose, "user_id": user, "resource": f"users/{user}/{purpose}",
                "client_state_sha256": push.client_state_digest(sid), "tenant_id": "t", "status": status,
                "created_at": NOW, "expires_at": NOW + dt.timedelta(hours=hours), "last_error": error})
        push.update_subscriptions(conn, ["s-c1"], last_lifecycle_event="missed",
                                  last_lifecycle_at=NOW - dt.timedelta(minutes=3))
        push.enqueue(conn, [{"kind": "contacts", "user_id": "u1"}], NOW - dt.timedelta(minutes=10))
        push.enqueue(conn, [{"kind": "users", "user_id": "u2"}], NOW - dt.timedelta(minutes=1))
        push.enqueue(conn, [{"kind": "contacts", "user_id": "u1", "source": "missed"}], NOW)
        push.record_rejection(conn, "client_state", NOW)
        push.record_rejection(conn, "client_state", NOW)


def test_push_status_sums_up_subscriptions_notifications_and_failures(engine: Engine) -> None:
    _seed(engine)
    with engine.connect() as conn:
        status = q.push_status(conn, NOW)
    assert status["subscriptions"] == 3 and status["by_purpose"] == {"users": 1, "contacts": 1, "events": 1}
    assert status["next_expiry_minutes"] == 300
    assert status["last_notification"] == {"users": (NOW - dt.timedelta(minutes=1)).isoformat(),
                                           "contacts": (NOW - dt.timedelta(minutes=10)).isoformat(), "events": None}
    assert status["last_lifecycle"] == {"missed": (NOW - dt.timedelta(minutes=3)).isoformat()}
    assert status["failing"] == [{"subscription_id": "s-e1", "resource": "users/u1/events", "status": "reauthorize",
                                  "last_error": "HTTP 403: Forbidden"}]
    assert status["queued"] == 3
    assert status["rejected"] == [{"reason": "client_state", "count": 2, "last_at": NOW.isoformat()}]


def test_json_twin_and_overview_card(engine: Engine) -> None:
    _seed(engine)
    ctx = pages.Context(now=NOW)
    with engine.connect() as conn:
        api = pages.API_ONLY["push"](conn, {}, ctx)
        data = pages.build("", conn, {}, ctx, html=True)
    assert api == data["push"]
    html = render("overview.html", title="Overview", nav="overview", base="/m365-3cx", ui="", params={},
                  refresh_seconds=60, chart_data=chart(data["days"]), **data)
    assert "Change notifications (push)" in html and "<b>3</b> Graph subscription(s)" in html
    assert "2 post(s) refused (client_state)" in html and "HTTP 403: Forbidden" in html
    assert "events never" in html
