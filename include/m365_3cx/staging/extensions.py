"""``tgt_extensions`` and ``cur_extensions``: the desired extensions and the 3CX snapshot.

Every function takes an open :class:`~sqlalchemy.engine.Connection` and never
commits (see :mod:`m365_3cx.staging.bulk`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import delete
from sqlalchemy.engine import Connection

from m365_3cx.staging.bulk import _insert_many, _require_aware, upsert
from m365_3cx.staging.schema import cur_extensions, tgt_extensions

__all__ = [
    "pbx_row_from_xapi",
    "replace_snapshot",
    "replace_targets",
]

def replace_targets(conn: Connection, desired_rows: Iterable[Mapping[str, Any]], run_key: str, now: dt.datetime) -> int:
    """Upsert desired extensions into ``tgt_extensions`` (rows of users not given stay as they are).

    :param desired_rows: desired-frame records (``tgt_extensions`` columns without ``run_key`` /
        ``computed_at``); pandas NaN/NaT/NA become NULL.
    :returns: rows written.
    :raises ValueError: unknown columns or naive ``now``.
    """
    _require_aware(now)
    rows = [{**row, "run_key": run_key, "computed_at": now} for row in desired_rows]
    return upsert(conn, tgt_extensions, rows, ["user_id"])


def replace_snapshot(conn: Connection, pbx_rows: Iterable[Mapping[str, Any]], run_key: str, now: dt.datetime) -> int:
    """Replace ``cur_extensions`` with the 3CX users just read (delete all, then insert).

    :returns: rows inserted.
    :raises ValueError: unknown columns or naive ``now``.
    """
    _require_aware(now)
    rows = [{**row, "run_key": run_key, "read_at": now} for row in pbx_rows]
    conn.execute(delete(cur_extensions))
    return _insert_many(conn, cur_extensions, rows)


def pbx_row_from_xapi(user: Mapping[str, Any]) -> dict[str, Any]:
    """Map one 3CX XAPI ``Pbx.User`` to ``cur_extensions`` columns (without ``run_key``/``read_at``).

    :param user: the user object as ``GET /xapi/v1/Users`` returns it; missing properties become ``None``.
    :raises ValueError: the object has no integer ``Id``.
    """
    threecx_id = user.get("Id")
    if isinstance(threecx_id, bool) or not isinstance(threecx_id, int):
        raise ValueError("3CX user without integer Id")
    tags = user.get("Tags")
    return {
        "threecx_id": threecx_id,
        "number": user.get("Number"),
        "first_name": user.get("FirstName"),
        "last_name": user.get("LastName"),
        "display_name": user.get("DisplayName"),
        "email": user.get("EmailAddress"),
        "mobile": user.get("Mobile"),
        "outbound_caller_id": user.get("OutboundCallerID"),
        "enabled": user.get("Enabled"),
        "current_profile": user.get("CurrentProfileName"),
        "tags": [str(t) for t in tags] if isinstance(tags, list) else [],
    }
