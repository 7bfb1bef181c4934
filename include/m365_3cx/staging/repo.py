"""Read and write helpers for every staging table.

Every function takes an open :class:`~sqlalchemy.engine.Connection` and never
commits: the caller owns the transaction, so rows and the delta link they came
from commit together (``with engine.begin() as conn: ...``). Upserts use the
dialect's ``INSERT ... ON CONFLICT`` (PostgreSQL and SQLite) and are batched.

**No secrets are ever written to these tables**: no tokens, client secrets,
certificates, passwords or connection URLs. Rows hold directory data (names,
numbers, addresses), ids, counts and messages; callers must keep secrets out of
notes, audit ``error`` texts and run ``counts``. Delta links are opaque resume
tokens, not credentials, and are stored in ``delta_state``.

All timestamps are aware UTC datetimes (naive ones raise :class:`ValueError`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import (
    Boolean,
    Column,
    ColumnElement,
    Integer,
    MetaData,
    String,
    Table,
    and_,
    bindparam,
    case,
    delete,
    exists,
    false,
    func,
    literal,
    null,
    select,
    update,
)
from sqlalchemy.engine import Connection

from m365_3cx.errors import ConfigError
from m365_3cx.staging import schema
from m365_3cx.staging.schema import (
    UTCDateTime,
    cur_extensions,
    extension_map,
    stg_users,
    sync_audit,
    sync_notes,
    sync_plan,
    sync_runs,
    tgt_extensions,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BATCH_SIZE",
    "GRAPH_USER_SELECT",
    "MergeCounts",
    "add_audit",
    "add_notes",
    "add_record_notes",
    "assign_numbers",
    "changed_user_ids",
    "finish_run",
    "grace_expired_user_ids",
    "load_frame",
    "load_plan",
    "mark_missing_deleted",
    "mark_users_deleted",
    "merge_users",
    "pbx_row_from_xapi",
    "purge_expired_quarantine",
    "reactivate_numbers",
    "release_number",
    "release_numbers",
    "replace_snapshot",
    "replace_targets",
    "save_plan",
    "set_plan_status",
    "set_plan_statuses",
    "set_scope",
    "set_scope_details",
    "set_threecx_id",
    "set_threecx_ids",
    "start_removal_clock",
    "start_run",
    "stop_removal_clock",
    "sync_removal_clock",
    "upsert",
    "user_row_from_graph",
]

#: Rows per executemany batch and ids per ``IN (...)`` list.
BATCH_SIZE: Final = 500

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
_USER_FIELDS: Final[Mapping[str, str]] = {
    "userPrincipalName": "user_principal_name",
    "displayName": "display_name",
    "givenName": "given_name",
    "surname": "surname",
    "mail": "mail",
    "mobilePhone": "mobile_phone",
    "accountEnabled": "account_enabled",
    "userType": "user_type",
    "usageLocation": "usage_location",
    "department": "department",
    "jobTitle": "job_title",
}
_EXTENSION_ATTRIBUTES: Final = tuple(f"extensionAttribute{i}" for i in range(1, 16))

#: stg_users columns that come from Graph (and feed ``row_hash``).
USER_SOURCE_COLUMNS: Final[tuple[str, ...]] = (
    *_USER_FIELDS.values(),
    "business_phones",
    "extension_attributes",
)

PLAN_STATUSES: Final = frozenset({"planned", "applied", "failed", "skipped", "dry_run", "rejected"})
RUN_STATUSES: Final = frozenset({"running", "success", "failed"})
#: ``sync_notes.severity`` values (see :mod:`m365_3cx.transform.notes`).
NOTE_SEVERITIES: Final = ("info", "warning", "error")


# ------------------------------------------------------------------------- generic helpers


def _chunks(items: Sequence[Any], size: int = BATCH_SIZE) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _py(value: Any) -> Any:
    """Turn pandas/numpy scalars (NaN, NaT, NA, numpy ints, Timestamps) into plain Python values."""
    if value is None or isinstance(value, str | bool | int | dt.datetime | list | dict):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    module = type(value).__module__
    if module.startswith(("numpy", "pandas")):
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return None
        if isinstance(value, pd.Timestamp):
            return value.to_pydatetime()
        if hasattr(value, "item"):
            return _py(value.item())
    if isinstance(value, tuple):
        return list(value)
    return value


def _clean_rows(table: Table, rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Copy rows as plain dicts of Python values, all with the same keys.

    :raises ValueError: a row names a column the table does not have, or rows differ in keys.
    """
    result: list[dict[str, Any]] = []
    keys: set[str] | None = None
    for row in rows:
        clean = {key: _py(value) for key, value in row.items()}
        if keys is None:
            keys = set(clean)
            unknown = keys - set(table.c.keys())
            if unknown:
                raise ValueError(f"{table.name}: unknown column(s) {sorted(unknown)}")
        elif set(clean) != keys:
            raise ValueError(f"{table.name}: all rows must have the same keys")
        result.append(clean)
    return result


def _insert_for(conn: Connection, table: Table) -> Any:
    """The dialect's INSERT construct that supports ``ON CONFLICT``.

    :raises ConfigError: the database is neither PostgreSQL nor SQLite.
    """
    name = conn.dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    elif name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    else:
        raise ConfigError(f"unsupported staging database {name!r}: use PostgreSQL or SQLite")
    return insert(table)


def upsert(
    conn: Connection,
    table: Table,
    rows: Iterable[Mapping[str, Any]],
    key_cols: Sequence[str],
    update_cols: Sequence[str] | None = None,
) -> int:
    """Insert rows, updating ``update_cols`` of rows whose ``key_cols`` already exist.

    :param conn: open connection (the caller commits).
    :param table: target table.
    :param rows: dicts with the same keys; pandas/numpy scalars are converted (NaN -> NULL).
    :param key_cols: the conflict target (primary key or a unique index).
    :param update_cols: columns to overwrite on conflict; ``None`` = every given column but the keys;
        empty = ``DO NOTHING``.
    :returns: the number of rows sent.
    :raises ValueError: rows have unknown or differing keys.
    :raises ConfigError: unsupported dialect.
    """
    data = _clean_rows(table, rows)
    if not data:
        return 0
    if update_cols is None:
        update_cols = [key for key in data[0] if key not in key_cols]
    stmt = _insert_for(conn, table)
    if update_cols:
        stmt = stmt.on_conflict_do_update(
            index_elements=list(key_cols), set_={col: stmt.excluded[col] for col in update_cols}
        )
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(key_cols))
    for batch in _chunks(data):
        conn.execute(stmt, list(batch))
    return len(data)


def _insert_many(conn: Connection, table: Table, rows: Iterable[Mapping[str, Any]]) -> int:
    data = _clean_rows(table, rows)
    for batch in _chunks(data):
        conn.execute(table.insert(), list(batch))
    return len(data)


@contextmanager
def _temp_ids(conn: Connection, ids: Iterable[str], name: str = "tmp_m365_3cx_ids") -> Iterator[Table]:
    """A temporary one-column table holding ``ids`` (dropped again on exit)."""
    tmp = Table(
        name,
        MetaData(),
        Column("id", String(256), primary_key=True),
        prefixes=["TEMPORARY"],
        postgresql_on_commit="DROP",
    )
    tmp.create(conn)
    values = sorted(set(ids))
    for batch in _chunks(values, 5_000):
        conn.execute(tmp.insert(), [{"id": value} for value in batch])
    yield tmp
    # On an error the caller rolls back, which undoes the CREATE as well.
    tmp.drop(conn)


def _require_aware(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("naive datetime; pass an aware UTC datetime")
    return now


# ------------------------------------------------------------------------- users


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


def _row_hash(row: Mapping[str, Any]) -> str:
    source = {col: row.get(col) for col in USER_SOURCE_COLUMNS}
    text = json.dumps(source, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


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


# ------------------------------------------------------------------------- frames


def load_frame(
    conn: Connection,
    table_name: str,
    where: ColumnElement[bool] | Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Read a staging table into a DataFrame with the table's columns in order.

    Types: strings and JSON columns are ``object`` (JSON decoded to list/dict, ``None`` for NULL);
    booleans are ``bool`` (NOT NULL columns) or ``object`` holding ``bool``/``None``; integers are
    ``int64`` (NOT NULL) or ``object`` holding ``int``/``None``; timestamps are
    ``datetime64[us, UTC]`` (``NaT`` for NULL).

    :param table_name: a table of :data:`m365_3cx.staging.schema.metadata`.
    :param where: a SQLAlchemy condition or ``{column: value}`` equality filters.
    :raises KeyError: unknown table or column.
    """
    import pandas as pd

    table = schema.table(table_name)
    query = select(table)
    if isinstance(where, Mapping):
        query = query.where(and_(True, *(table.c[col] == value for col, value in where.items())))
    elif where is not None:
        query = query.where(where)
    pk = list(table.primary_key.columns)
    if pk:
        query = query.order_by(*pk)
    rows = conn.execute(query).all()
    columns: dict[str, pd.Series] = {}
    for i, col in enumerate(table.columns):
        values = [row[i] for row in rows]
        if isinstance(col.type, UTCDateTime):
            series = pd.Series(pd.to_datetime(values, utc=True), dtype="datetime64[us, UTC]")
        elif isinstance(col.type, Boolean) and not col.nullable:
            series = pd.Series([bool(v) for v in values], dtype=bool)
        elif isinstance(col.type, Integer) and not col.nullable:
            series = pd.Series(values, dtype="int64")
        else:
            series = pd.Series(values, dtype=object)
        columns[col.name] = series
    return pd.DataFrame(columns, columns=[c.name for c in table.columns])


# ------------------------------------------------------------------------- targets / snapshot


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


# ------------------------------------------------------------------------- extension_map


def assign_numbers(conn: Connection, rows: Iterable[Mapping[str, Any]], now: dt.datetime | None = None) -> int:
    """Record ``user_id -> number`` as active (insert, or update the user's row).

    Each row needs ``user_id`` and ``number``; optional ``threecx_id`` (``None`` keeps the stored
    id), ``adopted`` (default ``False``) and ``assigned_at`` (default ``now``). ``assigned_at`` is
    only replaced when the number changes or the row was released; ``released_at`` is cleared.

    :param now: aware UTC default for ``assigned_at`` (default: current time).
    :returns: rows written.
    :raises ValueError: a row lacks ``user_id`` or ``number``.
    :raises sqlalchemy.exc.IntegrityError: the number belongs to another user (active or quarantined).
    """
    when = _require_aware(now) if now is not None else dt.datetime.now(dt.UTC)
    data: list[dict[str, Any]] = []
    for row in rows:
        if not row.get("user_id") or not row.get("number"):
            raise ValueError("extension_map row needs user_id and number")
        data.append(
            {
                "user_id": str(row["user_id"]),
                "number": str(_py(row["number"])),
                "threecx_id": _py(row.get("threecx_id")),
                "status": "active",
                "assigned_at": _py(row.get("assigned_at")) or when,
                "released_at": None,
                "adopted": bool(_py(row.get("adopted")) or False),
            }
        )
    if not data:
        return 0
    stmt = _insert_for(conn, extension_map)
    ex, cur = stmt.excluded, extension_map.c
    renewed = (cur.number != ex.number) | (cur.status != "active")
    stmt = stmt.on_conflict_do_update(
        index_elements=["user_id"],
        set_={
            "number": ex.number,
            "threecx_id": func.coalesce(ex.threecx_id, cur.threecx_id),
            "status": ex.status,
            "assigned_at": case((renewed, ex.assigned_at), else_=cur.assigned_at),
            "released_at": None,
            "adopted": ex.adopted,
        },
    )
    for batch in _chunks(data):
        conn.execute(stmt, list(batch))
    return len(data)


def set_threecx_id(conn: Connection, user_id: str, threecx_id: int | None) -> bool:
    """Store the 3CX user id of a mapped user (after create or adopt).

    :returns: ``True`` when the user has a mapping row.
    """
    result = conn.execute(update(extension_map).where(extension_map.c.user_id == user_id).values(threecx_id=threecx_id))
    return result.rowcount > 0


def set_threecx_ids(conn: Connection, ids: Mapping[str, int]) -> int:
    """Store the 3CX user ids of many mapped users (``{user_id: threecx_id}``) in one executemany.

    :returns: rows sent.
    """
    if not ids:
        return 0
    stmt = (update(extension_map).where(extension_map.c.user_id == bindparam("b_user_id"))
            .values(threecx_id=bindparam("b_threecx_id")))
    data = [{"b_user_id": uid, "b_threecx_id": int(tid)} for uid, tid in sorted(ids.items())]
    for batch in _chunks(data):
        conn.execute(stmt, list(batch))
    return len(data)


def release_numbers(conn: Connection, user_ids: Iterable[str], now: dt.datetime) -> int:
    """:func:`release_number` for many users (one statement per 500).

    :returns: active mappings released.
    """
    _require_aware(now)
    ids = sorted(set(user_ids))
    count = 0
    for batch in _chunks(ids):
        count += conn.execute(
            update(extension_map)
            .where(extension_map.c.user_id.in_(list(batch)), extension_map.c.status == "active")
            .values(status="released", released_at=now)
        ).rowcount
    return count


def release_number(conn: Connection, user_id: str, now: dt.datetime) -> bool:
    """Mark a user's number released; it stays reserved (quarantined) for other users.

    :returns: ``True`` when an active mapping was released.
    :raises ValueError: ``now`` is naive.
    """
    _require_aware(now)
    result = conn.execute(
        update(extension_map)
        .where(extension_map.c.user_id == user_id, extension_map.c.status == "active")
        .values(status="released", released_at=now)
    )
    return result.rowcount > 0


def start_removal_clock(conn: Connection, user_ids: Iterable[str], now: dt.datetime) -> int:
    """Record ``removal_since = now`` for mapped users whose extension was just disabled (kept when set).

    :returns: rows written.
    """
    _require_aware(now)
    count = 0
    for batch in _chunks(sorted(set(user_ids))):
        count += conn.execute(
            update(extension_map)
            .where(extension_map.c.user_id.in_(list(batch)), extension_map.c.removal_since.is_(None))
            .values(removal_since=now)
        ).rowcount
    return count


def stop_removal_clock(conn: Connection, user_ids: Iterable[str]) -> int:
    """Clear ``removal_since`` (the user's extension was re-enabled or deleted).

    :returns: rows written.
    """
    count = 0
    for batch in _chunks(sorted(set(user_ids))):
        count += conn.execute(
            update(extension_map)
            .where(extension_map.c.user_id.in_(list(batch)), extension_map.c.removal_since.is_not(None))
            .values(removal_since=None)
        ).rowcount
    return count


def sync_removal_clock(conn: Connection, now: dt.datetime) -> tuple[int, int]:
    """Align ``removal_since`` with ``tgt_extensions`` and the 3CX snapshot (two set-based updates).

    Started (``now``) for an active mapping of a removed, unprotected user whose extension 3CX
    holds disabled (e.g. disabled before ``disable_then_delete`` was chosen, or by hand); cleared
    for a protected user, or one whose extension 3CX holds enabled (re-enabled by hand; for a
    removed user the plan disables it again and the clock starts again then). A user who is back
    keeps the clock until the re-enable reaches 3CX (the plan says "back within the grace period").

    :returns: ``(started, cleared)``.
    """
    _require_aware(now)
    target = select(tgt_extensions.c.user_id).where(tgt_extensions.c.user_id == extension_map.c.user_id)
    pbx = select(cur_extensions.c.threecx_id).where(cur_extensions.c.threecx_id == extension_map.c.threecx_id)
    started = conn.execute(
        update(extension_map)
        .where(extension_map.c.status == "active", extension_map.c.removal_since.is_(None),
               exists(target.where(tgt_extensions.c.state != "active", tgt_extensions.c.protection.is_(None))),
               exists(pbx.where(cur_extensions.c.enabled.is_(False))))
        .values(removal_since=now)
    ).rowcount
    cleared = conn.execute(
        update(extension_map)
        .where(extension_map.c.removal_since.is_not(None),
               exists(target.where(tgt_extensions.c.protection.is_not(None)))
               | exists(pbx.where(cur_extensions.c.enabled.is_(True))))
        .values(removal_since=None)
    ).rowcount
    return started, cleared


def grace_expired_user_ids(conn: Connection, delete_after_days: int, now: dt.datetime,
                           since: dt.datetime | None = None) -> set[str]:
    """Users whose extension has been disabled for ``delete_after_days`` or more (a range scan of
    the ``removal_since`` index: the cheap check a delta run makes for ``disable_then_delete``).

    :param since: only grace periods that ran out after this instant (a delta run passes the start
        of the last applied run, so a delete that was already planned, e.g. rejected at approval,
        is not asked for again every few minutes; the full sync passes ``None``).
    """
    _require_aware(now)
    grace = dt.timedelta(days=delete_after_days)
    query = select(extension_map.c.user_id).where(extension_map.c.removal_since <= now - grace,
                                                  extension_map.c.status == "active")
    if since is not None:
        query = query.where(extension_map.c.removal_since > since - grace)
    return set(conn.execute(query).scalars())


def reactivate_numbers(conn: Connection, user_ids: Iterable[str]) -> int:
    """Mark released mappings active again: their user's extension was re-created with the kept
    number (the user came back within the quarantine).

    :returns: rows written.
    """
    count = 0
    for batch in _chunks(sorted(set(user_ids))):
        count += conn.execute(
            update(extension_map)
            .where(extension_map.c.user_id.in_(list(batch)), extension_map.c.status == "released")
            .values(status="active", released_at=None, removal_since=None)
        ).rowcount
    return count


def purge_expired_quarantine(conn: Connection, quarantine_days: int, now: dt.datetime) -> int:
    """Delete released mappings older than ``quarantine_days``, freeing their numbers.

    :returns: rows deleted.
    :raises ValueError: negative ``quarantine_days`` or naive ``now``.
    """
    _require_aware(now)
    if quarantine_days < 0:
        raise ValueError("quarantine_days must be >= 0")
    cutoff = now - dt.timedelta(days=quarantine_days)
    result = conn.execute(
        delete(extension_map).where(extension_map.c.status == "released", extension_map.c.released_at <= cutoff)
    )
    return result.rowcount




# ------------------------------------------------------------------------- runs / plan / audit / notes


def start_run(
    conn: Connection,
    run_key: str,
    dag_id: str,
    run_id: str,
    mode: str,
    dry_run: bool,
    now: dt.datetime,
    dry_reason: str | None = None,
) -> None:
    """Record a run as ``running``; a retry of the same ``run_key`` resets it.

    :param mode: ``full``, ``delta`` or ``on_demand`` (a run with ``only_users``).
    :param dry_reason: why the run is dry (see :mod:`m365_3cx.pipeline.safety`); ``None`` when it writes.
    :raises ValueError: bad ``mode``, ``run_key`` longer than 250 characters, or naive ``now``.
    """
    _require_aware(now)
    if mode not in ("full", "delta", "on_demand"):
        raise ValueError(f"mode must be full, delta or on_demand, got {mode!r}")
    if not run_key or len(run_key) > 250:
        raise ValueError("run_key must be 1..250 characters")
    row = {
        "run_key": run_key,
        "dag_id": dag_id,
        "run_id": run_id,
        "mode": mode,
        "dry_run": bool(dry_run),
        "dry_reason": dry_reason if dry_run else None,
        "status": "running",
        "started_at": now,
        "finished_at": None,
        "counts": None,
    }
    upsert(conn, sync_runs, [row], ["run_key"])


def finish_run(conn: Connection, run_key: str, status: str, counts: Mapping[str, Any] | None, now: dt.datetime) -> None:
    """Close a run with ``status`` and its counts.

    :param status: ``success`` or ``failed``.
    :raises ValueError: bad status or naive ``now``.
    :raises LookupError: no such run (call :func:`start_run` first).
    """
    _require_aware(now)
    if status not in RUN_STATUSES:
        raise ValueError(f"status must be one of {sorted(RUN_STATUSES)}, got {status!r}")
    result = conn.execute(
        update(sync_runs)
        .where(sync_runs.c.run_key == run_key)
        .values(status=status, finished_at=now, counts=dict(counts) if counts is not None else None)
    )
    if result.rowcount == 0:
        raise LookupError(f"no sync run {run_key!r}")


def record_run_error(conn: Connection, run_key: str, message: str, now: dt.datetime) -> bool:
    """Remember the latest task failure of a run (the whole scrubbed message) and mark it failed.

    :returns: ``False`` when the run has no row yet (it failed before ``start_run``).
    """
    _require_aware(now)
    result = conn.execute(
        update(sync_runs).where(sync_runs.c.run_key == run_key).values(last_error=message[:8000], status="failed",
                                                                        finished_at=now)
    )
    return result.rowcount > 0


def save_plan(conn: Connection, run_key: str, changes: Sequence[Mapping[str, Any]]) -> int:
    """Replace the plan of ``run_key``; rows get ``seq`` 1..n in the given order.

    :param changes: dicts with ``action``, ``object_type``, ``object_key``, ``number``,
        ``threecx_id``, ``changes`` (``{field: [before, after]}``), ``reason``, ``status``
        (default ``planned``).
    :returns: rows written.
    :raises ValueError: unknown status.
    """
    conn.execute(delete(sync_plan).where(sync_plan.c.run_key == run_key))
    rows: list[dict[str, Any]] = []
    for seq, change in enumerate(changes, start=1):
        status = change.get("status") or "planned"
        if status not in PLAN_STATUSES:
            raise ValueError(f"plan status must be one of {sorted(PLAN_STATUSES)}, got {status!r}")
        fields = change.get("changes") or {}
        rows.append(
            {
                "run_key": run_key,
                "seq": seq,
                "action": change["action"],
                "object_type": change.get("object_type") or "extension",
                "object_key": change["object_key"],
                "number": change.get("number"),
                "threecx_id": change.get("threecx_id"),
                "changes": {str(k): _jsonable(v) for k, v in fields.items()},
                "reason": change.get("reason"),
                "status": status,
            }
        )
    return _insert_many(conn, sync_plan, rows)


def load_plan(conn: Connection, run_key: str, statuses: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Read the plan rows of ``run_key`` in ``seq`` order (``changes`` decoded to a dict).

    :param statuses: only rows with one of these statuses; ``None`` = all.
    """
    query = select(sync_plan).where(sync_plan.c.run_key == run_key).order_by(sync_plan.c.seq)
    if statuses is not None:
        query = query.where(sync_plan.c.status.in_(sorted(statuses)))
    return [dict(row._mapping) for row in conn.execute(query)]


def _jsonable(value: Any) -> Any:
    value = _py(value)
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def set_plan_status(conn: Connection, run_key: str, seq: int, status: str) -> bool:
    """Set the status of one plan row.

    :returns: ``True`` when the row exists.
    :raises ValueError: unknown status.
    """
    if status not in PLAN_STATUSES:
        raise ValueError(f"plan status must be one of {sorted(PLAN_STATUSES)}, got {status!r}")
    result = conn.execute(
        update(sync_plan).where(sync_plan.c.run_key == run_key, sync_plan.c.seq == seq).values(status=status)
    )
    return result.rowcount > 0


def set_plan_statuses(conn: Connection, run_key: str, statuses: Mapping[int, str]) -> int:
    """Set the status of many plan rows: one ``UPDATE .. WHERE seq IN (..)`` per status and 500 rows.

    :param statuses: ``{seq: status}``.
    :returns: rows updated.
    :raises ValueError: unknown status.
    """
    by_status: dict[str, list[int]] = {}
    for seq, status in statuses.items():
        if status not in PLAN_STATUSES:
            raise ValueError(f"plan status must be one of {sorted(PLAN_STATUSES)}, got {status!r}")
        by_status.setdefault(status, []).append(int(seq))
    count = 0
    for status, seqs in sorted(by_status.items()):
        for batch in _chunks(sorted(seqs)):
            count += conn.execute(
                update(sync_plan).where(sync_plan.c.run_key == run_key, sync_plan.c.seq.in_(list(batch)))
                .values(status=status)
            ).rowcount
    return count


def _as_text(value: Any) -> str | None:
    value = _py(value)
    if value is None or isinstance(value, str):
        return value
    return json.dumps(_jsonable(value), ensure_ascii=False)


def add_audit(conn: Connection, rows: Iterable[Mapping[str, Any]]) -> int:
    """Append audit rows (one per field written).

    Each row: ``run_key``, ``at``, ``action``, ``object_type``, ``object_key``, ``number``,
    ``threecx_id``, ``field``, ``before``, ``after``, ``result`` (``ok|failed|skipped``), ``error``.
    ``before``/``after`` that are not strings are stored as JSON text.

    :returns: rows written.
    :raises ValueError: unknown columns.
    """
    from m365_3cx.staging.boundary import storable_row

    data = []
    for row in rows:
        item = dict(row)
        for key in ("before", "after"):
            if key in item:
                item[key] = _as_text(item[key])
        data.append(storable_row(sync_audit, item))  # a value read from 3CX never fails its audit row
    return _insert_many(conn, sync_audit, data)


def add_notes(
    conn: Connection,
    run_key: str,
    notes: Iterable[Mapping[str, Any]],
    *,
    step: str = "",
    now: dt.datetime | None = None,
) -> int:
    """Replace the notes of ``(run_key, step)`` (so a retried step does not duplicate them).

    :param notes: dicts with ``object_type``, ``object_key``, ``record_label``, ``field``,
        ``severity`` (``info|warning|error``), ``message`` and optionally ``at``.
    :param step: the step that produced the notes (e.g. ``transform``).
    :param now: default ``at`` (aware UTC; default: current time).
    :returns: rows written.
    :raises ValueError: unknown severity or columns.
    """
    when = _require_aware(now) if now is not None else dt.datetime.now(dt.UTC)
    conn.execute(delete(sync_notes).where(sync_notes.c.run_key == run_key, sync_notes.c.step == step))
    return _insert_many(conn, sync_notes, [_note_row(run_key, step, note, when) for note in notes])


def add_record_notes(
    conn: Connection,
    run_key: str,
    notes: Iterable[Mapping[str, Any]],
    *,
    step: str,
    object_type: str,
    object_keys: Iterable[str],
    now: dt.datetime | None = None,
) -> int:
    """Replace the notes of ``(run_key, step)`` about the given records only.

    For steps that write notes page by page in the page's own transaction (the sanitising
    boundary of the extracts): a retried page replaces its records' notes, other pages' stay.

    :param notes: as for :func:`add_notes`, each about one of ``object_keys``.
    :param object_type: the records' object type.
    :param object_keys: every record of the page (also those without a note now).
    :returns: rows written.
    :raises ValueError: unknown severity or columns.
    """
    when = _require_aware(now) if now is not None else dt.datetime.now(dt.UTC)
    keys = sorted({str(k)[:256] for k in object_keys})
    for batch in _chunks(keys):
        conn.execute(delete(sync_notes).where(
            sync_notes.c.run_key == run_key, sync_notes.c.step == step, sync_notes.c.object_type == object_type,
            sync_notes.c.object_key.in_(list(batch))))
    return _insert_many(conn, sync_notes, [_note_row(run_key, step, note, when) for note in notes])


def _note_row(run_key: str, step: str, note: Mapping[str, Any], when: dt.datetime) -> dict[str, Any]:
    """One ``sync_notes`` row; texts cleaned and clipped to the columns (a note never fails its insert)."""
    from m365_3cx.sanitize import clean_text

    severity = note.get("severity") or "warning"
    if severity not in NOTE_SEVERITIES:
        raise ValueError(f"note severity must be one of {', '.join(NOTE_SEVERITIES)}, got {severity!r}")

    def fit(value: Any, limit: int | None) -> str | None:
        return None if value is None else clean_text(str(value), limit=limit).value

    return {
        "run_key": run_key,
        "step": step,
        "at": note.get("at") or when,
        "object_type": note.get("object_type") or "extension",
        "object_key": fit(note.get("object_key"), 256),
        "record_label": fit(note.get("record_label"), 512),
        "field": fit(note.get("field"), 64),
        "severity": severity,
        "message": fit(note["message"], None) or "",
    }

