from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from m365_3cx.staging.extensions import replace_snapshot, replace_targets
from m365_3cx.staging.numbers import (
    assign_numbers,
    grace_expired_user_ids,
    purge_expired_quarantine,
    reactivate_numbers,
    release_number,
    release_numbers,
    set_threecx_id,
    start_removal_clock,
    stop_removal_clock,
    sync_removal_clock,
)
from m365_3cx.staging.schema import extension_map
from m365_3cx.staging.users import merge_users
from tests.unit.m365_3cx.staging.staging_rows import T0, T1, rows, uid

# ------------------------------------------------------------------ extension_map


def test_extension_map_lifecycle_and_quarantine(engine: Engine) -> None:
    with engine.begin() as conn:
        assert (
            assign_numbers(
                conn, [{"user_id": "u1", "number": "201"}, {"user_id": "u2", "number": "202", "adopted": True}], now=T0
            )
            == 2
        )
        assert set_threecx_id(conn, "u1", 7) is True
        assert set_threecx_id(conn, "ghost", 8) is False
        # re-assigning the same number keeps threecx_id and assigned_at
        assign_numbers(conn, [{"user_id": "u1", "number": "201"}], now=T1)
        row = conn.execute(select(extension_map).where(extension_map.c.user_id == "u1")).one()
        assert (row.threecx_id, row.assigned_at, row.status, row.adopted) == (7, T0, "active", False)
        # a number held by someone else is refused
        with pytest.raises(IntegrityError), conn.begin_nested():
            assign_numbers(conn, [{"user_id": "u3", "number": "201"}], now=T1)

        assert release_number(conn, "u1", T1) is True
        assert release_number(conn, "u1", T1) is False
        row = conn.execute(select(extension_map).where(extension_map.c.user_id == "u1")).one()
        assert (row.status, row.released_at) == ("released", T1)
        # quarantined: still reserved for others
        with pytest.raises(IntegrityError), conn.begin_nested():
            assign_numbers(conn, [{"user_id": "u3", "number": "201"}], now=T1)

        assert purge_expired_quarantine(conn, 30, T1 + dt.timedelta(days=29)) == 0
        assert purge_expired_quarantine(conn, 30, T1 + dt.timedelta(days=30)) == 1
        assert assign_numbers(conn, [{"user_id": "u3", "number": "201"}], now=T1) == 1
        numbers = dict(conn.execute(select(extension_map.c.user_id, extension_map.c.number)).all())
        assert numbers == {"u2": "202", "u3": "201"}
        with pytest.raises(ValueError):
            purge_expired_quarantine(conn, -1, T1)


def test_returning_user_gets_number_back(engine: Engine) -> None:
    with engine.begin() as conn:
        assign_numbers(conn, [{"user_id": "u1", "number": "201", "threecx_id": 5}], now=T0)
        release_number(conn, "u1", T0)
        assign_numbers(conn, [{"user_id": "u1", "number": "201"}], now=T1)
        row = conn.execute(select(extension_map)).one()
        assert (row.status, row.released_at, row.assigned_at, row.threecx_id) == ("active", None, T1, 5)


# ------------------------------------------------------------------ the removal clock


def _clock_setup(conn: Any) -> None:
    merge_users(conn, rows(1, 2, 3, 4), "r1", T0)
    assign_numbers(conn, [{"user_id": uid(i), "number": str(200 + i), "threecx_id": i} for i in (1, 2, 3, 4)],
                   T0)
    replace_snapshot(conn, [{"threecx_id": i, "number": str(200 + i), "enabled": i != 1} for i in (1, 2, 3, 4)]
                     + [{"threecx_id": 9, "number": "209", "enabled": False}], "r1", T0)
    replace_targets(conn, [
        {"user_id": uid(1), "number": "201", "state": "removed", "removal_reason": "deleted", "protection": None},
        {"user_id": uid(2), "number": "202", "state": "removed", "removal_reason": "deleted", "protection": None},
        {"user_id": uid(3), "number": "203", "state": "active", "removal_reason": None, "protection": None},
        {"user_id": uid(4), "number": "204", "state": "removed", "removal_reason": None, "protection": "opted_out"},
    ], "r1", T0)


def _since(conn: Any) -> dict[str, Any]:
    return dict(conn.execute(select(extension_map.c.user_id, extension_map.c.removal_since)).all())


def test_removal_clock_starts_on_disable_and_stops_on_return(engine: Engine) -> None:
    with engine.begin() as conn:
        _clock_setup(conn)
        # user 1: removed, extension already disabled -> clock starts; user 2 still enabled in 3CX,
        # user 3 active, user 4 protected -> no clock
        assert sync_removal_clock(conn, T1) == (1, 0)
        assert _since(conn) == {uid(1): T1, uid(2): None, uid(3): None, uid(4): None}
        assert start_removal_clock(conn, [uid(1), uid(2)], T1 + dt.timedelta(hours=1)) == 1  # 1 is kept
        assert grace_expired_user_ids(conn, 30, T1 + dt.timedelta(days=30)) == {uid(1)}
        assert grace_expired_user_ids(conn, 30, T1 + dt.timedelta(days=30, hours=1)) == {uid(1), uid(2)}
        assert grace_expired_user_ids(conn, 30, T1 + dt.timedelta(days=29)) == set()
        # since: only periods that ran out after the last applied run started
        later = T1 + dt.timedelta(days=31)
        assert grace_expired_user_ids(conn, 30, later, since=T1 + dt.timedelta(days=30, minutes=30)) \
            == {uid(2)}
        assert stop_removal_clock(conn, [uid(2)]) == 1
        conn.execute(extension_map.update().values(removal_since=T1))
        # user 2's extension is enabled in 3CX, user 3 active, user 4 protected -> cleared; user 1 stays
        assert sync_removal_clock(conn, T1) == (0, 3)
        assert _since(conn)[uid(1)] == T1


def test_reactivate_numbers_brings_a_released_mapping_back(engine: Engine) -> None:
    with engine.begin() as conn:
        _clock_setup(conn)
        release_numbers(conn, [uid(1)], T1)
        assert reactivate_numbers(conn, [uid(1), uid(2)]) == 1
        row = conn.execute(select(extension_map).where(extension_map.c.user_id == uid(1))).mappings().one()
    assert (row["status"], row["released_at"], row["number"]) == ("active", None, "201")
