"""``stg_users``: map Graph users, merge them, soft-delete them, and record their scope.

Every function takes an open :class:`~sqlalchemy.engine.Connection` and never
commits (see :mod:`m365_3cx.staging.bulk`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import and_, case, exists, false, literal, null, select, update
from sqlalchemy.engine import Connection

from m365_3cx.staging.boundary import USER_PROPERTY_COLUMNS
from m365_3cx.staging.bulk import _chunks, _require_aware, _temp_ids, upsert
from m365_3cx.staging.schema import stg_users

__all__ = [
    "GRAPH_USER_SELECT",
    "USER_SOURCE_COLUMNS",
    "MergeCounts",
    "changed_user_ids",
    "mark_missing_deleted",
    "mark_users_deleted",
    "merge_users",
    "set_scope",
    "set_scope_details",
    "user_row_from_graph",
]

#: Graph ``$select`` for users (extract and delta).
GRAPH_USER_SELECT: Final[tuple[str, ...]] = (
    "id",
    "userPrincipalName",
    "displayName",
    "givenName",
    "surname",
    "mail",
    "mobilePhone",
    "businessPhones",
    "accountEnabled",
    "userType",
    "usageLocation",
    "department",
    "jobTitle",
    "onPremisesExtensionAttributes",
)

# Graph property -> stg_users column, for the plain string/bool properties.
_USER_FIELDS: Final[Mapping[str, str]] = {**USER_PROPERTY_COLUMNS, "accountEnabled": "account_enabled"}
_EXTENSION_ATTRIBUTES: Final = tuple(f"extensionAttribute{i}" for i in range(1, 16))

#: stg_users columns that come from Graph (and feed ``row_hash``).
USER_SOURCE_COLUMNS: Final[tuple[str, ...]] = (
    *_USER_FIELDS.values(),
    "business_phones",
    "extension_attributes",
)


@dataclass(frozen=True)
class MergeCounts:
    """Outcome of :func:`merge_users`.

    :param inserted: users seen for the first time.
    :param updated: users whose source fields changed or who came back after a delete.
    :param unchanged: users not rewritten.
    """

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0

    @property
    def written(self) -> int:
        """Rows written (inserted + updated)."""
        return self.inserted + self.updated


#: The encoder ``json.dumps(..., sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)`` would
#: build on every call, made once.
_HASH_JSON: Final = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _row_hash(row: Mapping[str, Any]) -> str:
    source = {col: row.get(col) for col in USER_SOURCE_COLUMNS}
    return hashlib.sha256(_HASH_JSON.encode(source).encode("utf-8")).hexdigest()


def _normalise_source(row: dict[str, Any]) -> None:
    if "business_phones" in row:
        row["business_phones"] = [str(p) for p in (row["business_phones"] or []) if p]
    if "extension_attributes" in row:
        attrs = row["extension_attributes"] or {}
        row["extension_attributes"] = {name: attrs.get(name) for name in _EXTENSION_ATTRIBUTES}


def user_row_from_graph(item: Mapping[str, Any], *, partial: bool = False) -> dict[str, Any]:
    """Map one Graph user (``GRAPH_USER_SELECT`` properties) to ``stg_users`` source columns.

    Missing properties become ``None`` (``businessPhones`` ``[]``; all 15 extension attributes are
    present, ``None`` when unset), so a property Graph omits hashes like an unset one.

    :param item: the user object as Graph returns it.
    :param partial: the item holds only changed properties (delta with ``Prefer: return=minimal``):
        the row gets only the columns whose property is present, and no ``row_hash``; merge it with
        ``merge_users(..., partial=True)``.
    :returns: ``user_id``, the source columns and ``row_hash``.
    :raises ValueError: the item has no ``id``.
    """
    user_id = item.get("id")
    if not user_id:
        raise ValueError("Graph user without id")
    row: dict[str, Any] = {"user_id": str(user_id)}
    for prop, col in _USER_FIELDS.items():
        if not partial or prop in item:
            row[col] = item.get(prop)
    if not partial or "businessPhones" in item:
        row["business_phones"] = item.get("businessPhones")
    if not partial or "onPremisesExtensionAttributes" in item:
        row["extension_attributes"] = item.get("onPremisesExtensionAttributes")
    _normalise_source(row)
    if not partial:
        row["row_hash"] = _row_hash(row)
    return row


_SOURCE_AND_STATE: Final = ("user_id", *USER_SOURCE_COLUMNS, "row_hash", "deleted")


def _existing_users(conn: Connection, user_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    columns = [stg_users.c[name] for name in _SOURCE_AND_STATE]
    for batch in _chunks(user_ids):
        for row in conn.execute(select(*columns).where(stg_users.c.user_id.in_(batch))):
            found[row.user_id] = dict(row._mapping)
    return found


def merge_users(
    conn: Connection,
    rows: Iterable[Mapping[str, Any]],
    run_key: str,
    now: dt.datetime,
    *,
    partial: bool = False,
) -> MergeCounts:
    """Upsert users whose ``row_hash`` changed, who are new, or who were deleted before.

    Unchanged users are not rewritten (a second merge of the same rows writes nothing).
    Written rows get ``deleted=False``, ``updated_at=now``, ``last_run_key=run_key``; new rows
    also ``first_seen_at=now`` and ``in_scope=False`` until :func:`set_scope` runs. When a user
    appears twice in ``rows`` the last one wins (partial rows are combined).

    :param rows: rows from :func:`user_row_from_graph`.
    :param run_key: the current run.
    :param now: aware UTC timestamp.
    :param partial: rows may lack source columns; the stored values are kept for those (new users
        get ``None``), and ``row_hash`` is recomputed from the combined row.
    :returns: :class:`MergeCounts`.
    :raises ValueError: a row has no ``user_id``, a full row lacks a source column, or ``now`` is naive.
    """
    _require_aware(now)
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        if not row.get("user_id"):
            raise ValueError("stg_users row without user_id")
        data = {col: row[col] for col in ("user_id", *USER_SOURCE_COLUMNS) if col in row}
        _normalise_source(data)
        if partial:
            latest[data["user_id"]] = {**latest.get(data["user_id"], {}), **data}
            continue
        missing = set(USER_SOURCE_COLUMNS) - set(data)
        if missing:
            raise ValueError(f"stg_users row lacks {sorted(missing)}; use partial=True")
        data["row_hash"] = _row_hash(data)
        latest[data["user_id"]] = data
    existing = _existing_users(conn, list(latest))
    inserted = updated = unchanged = 0
    to_write: list[dict[str, Any]] = []
    for user_id, data in latest.items():
        before = existing.get(user_id)
        if partial:
            base = before or {"business_phones": [], "extension_attributes": {}}
            data = {col: data.get(col, base.get(col)) for col in ("user_id", *USER_SOURCE_COLUMNS)}
            _normalise_source(data)
            data["row_hash"] = _row_hash(data)
        if before is None:
            inserted += 1
        elif before["row_hash"] != data["row_hash"] or before["deleted"]:
            updated += 1
        else:
            unchanged += 1
            continue
        to_write.append(
            {
                **data,
                "deleted": False,
                "deleted_at": None,
                "updated_at": now,
                "last_run_key": run_key,
                "first_seen_at": now,
                "in_scope": False,
            }
        )
    update_cols = [
        "row_hash",
        *USER_SOURCE_COLUMNS,
        "deleted",
        "deleted_at",
        "updated_at",
        "last_run_key",
    ]
    upsert(conn, stg_users, to_write, ["user_id"], update_cols)
    return MergeCounts(inserted=inserted, updated=updated, unchanged=unchanged)


def _soft_delete_values(run_key: str, now: dt.datetime) -> dict[str, Any]:
    return {"deleted": True, "deleted_at": now, "updated_at": now, "last_run_key": run_key}


def mark_users_deleted(conn: Connection, user_ids: Iterable[str], run_key: str, now: dt.datetime) -> int:
    """Soft-delete users (Graph ``@removed``); users already deleted or never seen are skipped.

    :returns: the number of rows that became deleted.
    :raises ValueError: ``now`` is naive.
    """
    _require_aware(now)
    ids = sorted(set(user_ids))
    count = 0
    for batch in _chunks(ids):
        result = conn.execute(
            update(stg_users)
            .where(stg_users.c.user_id.in_(batch), stg_users.c.deleted.is_(False))
            .values(**_soft_delete_values(run_key, now))
        )
        count += result.rowcount
    return count


def mark_missing_deleted(conn: Connection, seen_user_ids: Collection[str], run_key: str, now: dt.datetime) -> int:
    """After a full extract: soft-delete every live user not in ``seen_user_ids``.

    Uses a temporary table, so any number of ids works. Note that an empty ``seen_user_ids``
    deletes everyone; the apply step's mass-removal guard is the safety net.

    :returns: the number of rows that became deleted.
    :raises ValueError: ``now`` is naive.
    """
    _require_aware(now)
    with _temp_ids(conn, seen_user_ids) as tmp:
        result = conn.execute(
            update(stg_users)
            .where(
                stg_users.c.deleted.is_(False),
                ~exists().where(tmp.c.id == stg_users.c.user_id),
            )
            .values(**_soft_delete_values(run_key, now))
        )
        return result.rowcount


def set_scope(conn: Connection, in_scope_ids: Collection[str] | None, run_key: str, now: dt.datetime) -> int:
    """Set ``in_scope`` of every user; only rows whose flag flips are written.

    :param in_scope_ids: ids of the users in scope; ``None`` = everyone is in scope.
    :returns: the number of rows whose ``in_scope`` flipped (they get ``last_run_key=run_key``).
    :raises ValueError: ``now`` is naive.
    """
    _require_aware(now)
    touched = {"updated_at": now, "last_run_key": run_key}
    if in_scope_ids is None:
        result = conn.execute(update(stg_users).where(stg_users.c.in_scope.is_(False)).values(in_scope=True, **touched))
        return result.rowcount
    with _temp_ids(conn, in_scope_ids) as tmp:
        member = exists().where(tmp.c.id == stg_users.c.user_id)
        entered = conn.execute(
            update(stg_users).where(stg_users.c.in_scope.is_(False), member).values(in_scope=True, **touched)
        ).rowcount
        left = conn.execute(
            update(stg_users).where(stg_users.c.in_scope.is_(True), ~member).values(in_scope=False, **touched)
        ).rowcount
    return entered + left


def set_scope_details(conn: Connection, group_ids: Collection[str] | None, filter_ids: Collection[str] | None,
                      protected_ids: Collection[str] | None, run_key: str, now: dt.datetime) -> int:
    """Store why users are out of scope (``scope_miss``) and who is in the protected group.

    ``scope_miss`` is ``"group"``, ``"filter"``, ``"group,filter"`` or NULL; only rows whose value
    changes are written (no ``last_run_key``: ``in_scope`` itself is :func:`set_scope`'s). A user
    whose ``protected_group`` flips gets ``last_run_key=run_key`` so the next plan looks at them.

    :param group_ids: members of ``scope.group_id`` (``None``: no scope group).
    :param filter_ids: users matching ``scope.user_filter`` (``None``: no filter).
    :param protected_ids: members of ``scope.protected_group_id`` (``None``: no protected group).
    :returns: rows whose protected-group membership flipped.
    """
    _require_aware(now)
    with _temp_ids(conn, group_ids or (), "tmp_m365_3cx_scope_group") as g, \
            _temp_ids(conn, filter_ids or (), "tmp_m365_3cx_scope_filter") as f, \
            _temp_ids(conn, protected_ids or (), "tmp_m365_3cx_protected") as p:
        g_miss = ~exists().where(g.c.id == stg_users.c.user_id) if group_ids is not None else false()
        f_miss = ~exists().where(f.c.id == stg_users.c.user_id) if filter_ids is not None else false()
        miss = case((and_(g_miss, f_miss), literal("group,filter")), (g_miss, literal("group")),
                    (f_miss, literal("filter")), else_=null())
        conn.execute(update(stg_users).where(stg_users.c.scope_miss.is_distinct_from(miss)).values(scope_miss=miss))
        member = exists().where(p.c.id == stg_users.c.user_id) if protected_ids is not None else null()
        flipped = conn.execute(
            update(stg_users).where(stg_users.c.protected_group.is_distinct_from(member))
            .values(protected_group=member, updated_at=now, last_run_key=run_key)
        ).rowcount
    return flipped


def changed_user_ids(conn: Connection, run_key: str) -> set[str]:
    """Ids of the users written by ``run_key`` (merged, deleted or scope flipped)."""
    query = select(stg_users.c.user_id).where(stg_users.c.last_run_key == run_key)
    return set(conn.execute(query).scalars())
