"""Generic bulk helpers for the staging tables: batched upserts and inserts, temporary id tables.

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
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from operator import itemgetter
from typing import Any, Final

from sqlalchemy import Column, MetaData, String, Table
from sqlalchemy.engine import Connection

from m365_3cx.errors import ConfigError

__all__ = [
    "BATCH_SIZE",
    "upsert",
]

#: Rows per executemany batch and ids per ``IN (...)`` list.
BATCH_SIZE: Final = 500


# ------------------------------------------------------------------------- generic helpers


def _chunks(items: Sequence[Any], size: int = BATCH_SIZE) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_PLAIN: Final = frozenset({type(None), str, bool, int, dt.datetime, list, dict})
"""Exact types :func:`_py` returns as they are (looked up before the ``isinstance`` checks: this
runs once per value of every row written)."""


def _py(value: Any) -> Any:
    """Turn pandas/numpy scalars (NaN, NaT, NA, numpy ints, Timestamps) into plain Python values."""
    if type(value) in _PLAIN or isinstance(value, str | bool | int | dt.datetime | list | dict):
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
        clean = {key: value if type(value) in _PLAIN else _py(value) for key, value in row.items()}
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
    if _raw_values(conn, table, data[0]):
        _upsert_values(conn, table, data, key_cols, update_cols)
        return len(data)
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


def _needs_sqlalchemy(table: Table, row: Mapping[str, Any]) -> bool:
    """Whether SQLAlchemy must build the statement: a column the rows leave out has a Python-side default,
    or a column has an ``onupdate``."""
    return any((column.default is not None and column.key not in row) or column.onupdate is not None
               for column in table.c)


def _merge_duplicates(data: list[dict[str, Any]], key_cols: Sequence[str],
                      update_cols: Sequence[str]) -> list[dict[str, Any]]:
    """One row per key, as the rows one after the other would have left it: the first row, with
    ``update_cols`` from the last (``DO NOTHING``: the first row). One ``INSERT ... VALUES (...), (...)
    ON CONFLICT DO UPDATE`` may touch a row only once."""
    merged: dict[Any, dict[str, Any]] = {}
    key_of = itemgetter(*key_cols)
    for row in data:
        key = key_of(row)
        first = merged.get(key)
        if first is None:
            merged[key] = row
        elif update_cols:
            merged[key] = {**first, **{col: row[col] for col in update_cols}}
    return data if len(merged) == len(data) else list(merged.values())


def _upsert_values(conn: Connection, table: Table, data: list[dict[str, Any]], key_cols: Sequence[str],
                   update_cols: Sequence[str]) -> None:
    """PostgreSQL: each batch as one multi-row ``INSERT ... VALUES ... ON CONFLICT``."""
    quote = conn.dialect.identifier_preparer.quote
    if update_cols:
        action = "DO UPDATE SET " + ", ".join(f"{quote(col)} = excluded.{quote(col)}" for col in update_cols)
    else:
        action = "DO NOTHING"
    tail = f" ON CONFLICT ({', '.join(quote(col) for col in key_cols)}) {action}"
    _insert_values(conn, table, _merge_duplicates(data, key_cols, update_cols), tail)


def _insert_values(conn: Connection, table: Table, data: list[dict[str, Any]], tail: str = "") -> None:
    """PostgreSQL: each batch as one multi-row ``INSERT ... VALUES (...), (...)`` (psycopg2 quotes the
    values in one call) instead of one statement per row (``execute_batch``: a mogrify of the whole
    statement per row, and as many statements for the server to plan) or SQLAlchemy's insertmanyvalues
    (a parameter dict compiled per row)."""
    dialect = conn.dialect
    quote = dialect.identifier_preparer.quote
    columns = list(data[0])
    values_of = itemgetter(*columns) if len(columns) > 1 else lambda row: (row[columns[0]],)
    processors = [(index, process) for index, col in enumerate(columns)
                  if (process := table.c[col].type.dialect_impl(dialect).bind_processor(dialect)) is not None]
    head = (f"INSERT INTO {dialect.identifier_preparer.format_table(table)} "
            f"({', '.join(quote(col) for col in columns)}) VALUES ")
    one = "(" + ", ".join(["%s"] * len(columns)) + ")"
    for batch in _chunks(data):
        params: list[Any] = []
        for row in batch:
            values = list(values_of(row))
            for index, process in processors:
                values[index] = process(values[index])
            params.extend(values)
        conn.exec_driver_sql(head + ", ".join([one] * len(batch)) + tail, tuple(params))


def _insert_many(conn: Connection, table: Table, rows: Iterable[Mapping[str, Any]]) -> int:
    data = _clean_rows(table, rows)
    if not data:
        return 0
    if _raw_values(conn, table, data[0]):
        _insert_values(conn, table, data)
        return len(data)
    for batch in _chunks(data):
        conn.execute(table.insert(), list(batch))
    return len(data)


def _raw_values(conn: Connection, table: Table, row: Mapping[str, Any]) -> bool:
    """Whether rows like ``row`` can go as plain multi-row VALUES (PostgreSQL, no Python-side defaults)."""
    return (conn.dialect.name == "postgresql" and conn.dialect.paramstyle in ("format", "pyformat")
            and not _needs_sqlalchemy(table, row))


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
