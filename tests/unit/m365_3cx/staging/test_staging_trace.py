"""sync_trace helpers: replace per step and user, resolved and unknown entries (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from m365_3cx.staging.schema import sync_trace
from m365_3cx.staging.trace import SEQ, STEPS, on_demand_users, replace_trace, trace_rows, unknown_entries

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def test_resolve_rows_give_users_and_unknown_entries(engine: Engine) -> None:
    rows = trace_rows("r", "resolve", [
        {"user_id": "u1", "upn": "a@x", "outcome": "found", "detail": {"entry": "A@X", "matched_by": "upn"}},
        {"user_id": None, "upn": "ghost@x", "outcome": "unknown", "detail": {"entry": "ghost@x"}},
        {"user_id": None, "upn": "999", "outcome": "unknown", "detail": {"entry": "999"}},
    ], NOW)
    with engine.begin() as conn:
        assert replace_trace(conn, "r", "resolve", rows) == 3
        assert replace_trace(conn, "r", "resolve", rows) == 3  # a retry replaces
    with engine.connect() as conn:
        assert on_demand_users(conn, "r") == {"u1": "a@x"}
        assert unknown_entries(conn, "r") == ["ghost@x", "999"]
        assert on_demand_users(conn, "other") == {}
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_trace)).scalar_one() == 3


def test_replace_only_touches_the_given_users(engine: Engine) -> None:
    with engine.begin() as conn:
        replace_trace(conn, "r", "contacts_read", trace_rows("r", "contacts_read", [
            {"user_id": "u1", "upn": "a", "outcome": "read"}, {"user_id": "u2", "upn": "b", "outcome": "read"}], NOW))
        replace_trace(conn, "r", "contacts_read", trace_rows("r", "contacts_read", [
            {"user_id": "u2", "upn": "b", "outcome": "skipped", "detail": {"reason": "no mailbox"}}], NOW),
            user_ids={"u2"})
        replace_trace(conn, "r", "contacts_read", [], user_ids=set())
    with engine.connect() as conn:
        got = conn.execute(sa.select(sync_trace.c.user_id, sync_trace.c.outcome, sync_trace.c.seq, sync_trace.c.detail)
                           .order_by(sync_trace.c.user_id)).all()
    assert [(u, o, s) for u, o, s, _ in got] == [("u1", "read", SEQ["contacts_read"]),
                                                ("u2", "skipped", SEQ["contacts_read"])]
    assert got[1][3] == {"reason": "no mailbox"}


def test_steps_are_ordered_and_unknown_steps_refused() -> None:
    assert [SEQ[s] for s in STEPS] == sorted(SEQ.values())
    with pytest.raises(KeyError):
        trace_rows("r", "nope", [{"outcome": "x"}], NOW)
