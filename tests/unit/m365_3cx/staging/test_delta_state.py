from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Engine, select

from m365_3cx.staging.schema import delta_state, stg_users
from m365_3cx.staging.state import DeltaStateStore
from m365_3cx.staging.users import merge_users, user_row_from_graph

NOW = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def test_get_save_clear(engine: Engine) -> None:
    store = DeltaStateStore()
    with engine.begin() as conn:
        assert store.get(conn, "users") is None
        store.save(conn, "users", "https://graph/users/delta?$deltatoken=1", "dag/run1", now=NOW)
        store.save(conn, "users", "https://graph/users/delta?$deltatoken=2", "dag/run2", now=NOW)
        assert store.get(conn, "users") == "https://graph/users/delta?$deltatoken=2"
        row = conn.execute(select(delta_state)).one()
        assert (row.run_key, row.updated_at) == ("dag/run2", NOW)
        assert store.clear(conn, "users") is True
        assert store.clear(conn, "users") is False
        assert store.get(conn, "users") is None


def test_rollback_keeps_old_link_and_rows(engine: Engine) -> None:
    store = DeltaStateStore()
    with engine.begin() as conn:
        store.save(conn, "users", "link-1", "r1", now=NOW)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        merge_users(conn, [user_row_from_graph({"id": "u1"})], "r2", NOW)
        store.save(conn, "users", "link-2", "r2", now=NOW)
        raise RuntimeError("crash after the page round")
    with engine.connect() as conn:
        assert store.get(conn, "users") == "link-1"
        assert conn.execute(select(stg_users.c.user_id)).all() == []


@pytest.mark.parametrize("resource", ["", "x" * 129])
def test_bad_resource(engine: Engine, resource: str) -> None:
    with engine.connect() as conn, pytest.raises(ValueError):
        DeltaStateStore().get(conn, resource)


def test_empty_link_refused(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(ValueError):
        DeltaStateStore().save(conn, "users", "", "r1")
