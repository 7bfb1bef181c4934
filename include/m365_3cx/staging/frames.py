"""Read a staging table into a pandas DataFrame with stable column types.

Every function takes an open :class:`~sqlalchemy.engine.Connection` and never
commits (see :mod:`m365_3cx.staging.bulk`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import Boolean, ColumnElement, Integer, and_, select
from sqlalchemy.engine import Connection

from m365_3cx.staging import schema
from m365_3cx.staging.schema import UTCDateTime

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "load_frame",
]

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
