"""Read a staging table into a pandas DataFrame with stable column types.

Every function takes an open :class:`~sqlalchemy.engine.Connection` and never
commits (see :mod:`m365_3cx.staging.bulk`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Boolean, ColumnElement, Integer, and_, select
from sqlalchemy.engine import Connection

from m365_3cx.staging import schema
from m365_3cx.staging.schema import UTCDateTime

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "iter_frames",
    "load_frame",
]

def _query(table: Any, where: ColumnElement[bool] | Mapping[str, Any] | None, columns: Sequence[str] | None) -> Any:
    picked = [table.c[name] for name in columns] if columns is not None else list(table.columns)
    query = select(*picked)
    if isinstance(where, Mapping):
        query = query.where(and_(True, *(table.c[col] == value for col, value in where.items())))
    elif where is not None:
        query = query.where(where)
    pk = list(table.primary_key.columns)
    if pk:
        query = query.order_by(*pk)
    return query, picked


def _frame(picked: list[Any], rows: Sequence[Any]) -> pd.DataFrame:
    import pandas as pd

    series: dict[str, pd.Series] = {}
    for i, col in enumerate(picked):
        values = [row[i] for row in rows]
        if isinstance(col.type, UTCDateTime):
            series[col.name] = pd.Series(pd.to_datetime(values, utc=True), dtype="datetime64[us, UTC]")
        elif isinstance(col.type, Boolean) and not col.nullable:
            series[col.name] = pd.Series([bool(v) for v in values], dtype=bool)
        elif isinstance(col.type, Integer) and not col.nullable:
            series[col.name] = pd.Series(values, dtype="int64")
        else:
            series[col.name] = pd.Series(values, dtype=object)
    return pd.DataFrame(series, columns=[c.name for c in picked])


def load_frame(
    conn: Connection,
    table_name: str,
    where: ColumnElement[bool] | Mapping[str, Any] | None = None,
    columns: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Read a staging table into a DataFrame with the table's columns in order.

    Types: strings and JSON columns are ``object`` (JSON decoded to list/dict, ``None`` for NULL);
    booleans are ``bool`` (NOT NULL columns) or ``object`` holding ``bool``/``None``; integers are
    ``int64`` (NOT NULL) or ``object`` holding ``int``/``None``; timestamps are
    ``datetime64[us, UTC]`` (``NaT`` for NULL).

    :param table_name: a table of :data:`m365_3cx.staging.schema.metadata`.
    :param where: a SQLAlchemy condition or ``{column: value}`` equality filters.
    :param columns: read only these columns (in this order); ``None``: all of them.
    :raises KeyError: unknown table or column.
    """
    query, picked = _query(schema.table(table_name), where, columns)
    return _frame(picked, conn.execute(query).all())


def iter_frames(
    conn: Connection,
    table_name: str,
    where: ColumnElement[bool] | Mapping[str, Any] | None = None,
    columns: Sequence[str] | None = None,
    chunk_rows: int = 20_000,
) -> Iterator[pd.DataFrame]:
    """:func:`load_frame` in chunks of at most ``chunk_rows`` rows, streamed from the database (a
    server-side cursor on PostgreSQL), so a whole table is never in memory at once. Yields nothing
    for an empty result.
    """
    query, picked = _query(schema.table(table_name), where, columns)
    result = conn.execution_options(yield_per=chunk_rows).execute(query)
    for rows in result.partitions():
        yield _frame(picked, rows)
