"""Delta links of Graph resources (``delta_state``).

The store never commits: pass the connection of the transaction that writes the
staging rows a page round produced, so the link and its rows commit together and
a crash never skips a change::

    with engine.begin() as conn:
        merge_users(conn, rows, run_key, now)
        store.save(conn, "users", delta_link, run_key)

Delta links are opaque resume tokens, not credentials; they are never logged.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping

from sqlalchemy import Table, delete, select
from sqlalchemy.engine import Connection

from m365_3cx.staging.bulk import upsert
from m365_3cx.staging.schema import delta_state

__all__ = ["DeltaStateStore"]


class DeltaStateStore:
    """Read, save and clear the delta link of a resource (``users``, ``contacts/<user id>``...).

    :param table: the ``delta_state`` table (replaceable for tests).
    """

    def __init__(self, table: Table = delta_state) -> None:
        self._table = table

    @staticmethod
    def _check(resource: str) -> str:
        if not resource or len(resource) > 128:
            raise ValueError("resource must be 1..128 characters")
        return resource

    def get(self, conn: Connection, resource: str) -> str | None:
        """Return the stored delta link, or ``None`` (no link yet: run a full extract).

        :raises ValueError: empty or too long ``resource``.
        """
        query = select(self._table.c.delta_link).where(self._table.c.resource == self._check(resource))
        return conn.execute(query).scalar_one_or_none()

    def save(
        self,
        conn: Connection,
        resource: str,
        delta_link: str,
        run_key: str | None,
        *,
        now: dt.datetime | None = None,
    ) -> None:
        """Insert or replace the delta link of ``resource`` in the caller's transaction.

        :param now: aware UTC ``updated_at`` (default: current time).
        :raises ValueError: empty ``delta_link`` or bad ``resource``.
        """
        if not delta_link:
            raise ValueError("delta_link must not be empty")
        row = {
            "resource": self._check(resource),
            "delta_link": delta_link,
            "updated_at": now or dt.datetime.now(dt.UTC),
            "run_key": run_key,
        }
        upsert(conn, self._table, [row], ["resource"])

    def get_many(self, conn: Connection, resources: Iterable[str]) -> dict[str, str]:
        """The stored delta links of many resources (one query per 500); missing ones are left out.

        :raises ValueError: an empty or too long resource.
        """
        wanted = sorted({self._check(r) for r in resources})
        found: dict[str, str] = {}
        for start in range(0, len(wanted), 500):
            query = select(self._table.c.resource, self._table.c.delta_link).where(
                self._table.c.resource.in_(wanted[start:start + 500]))
            found.update((resource, link) for resource, link in conn.execute(query))
        return found

    def save_many(self, conn: Connection, links: Mapping[str, str], run_key: str | None, *,
                  now: dt.datetime | None = None) -> int:
        """:meth:`save` for many resources (``{resource: delta_link}``) in one upsert.

        :returns: links written.
        :raises ValueError: an empty link or bad resource.
        """
        when = now or dt.datetime.now(dt.UTC)
        rows = []
        for resource, link in sorted(links.items()):
            if not link:
                raise ValueError("delta_link must not be empty")
            rows.append({"resource": self._check(resource), "delta_link": link, "updated_at": when,
                         "run_key": run_key})
        return upsert(conn, self._table, rows, ["resource"])

    def clear_many(self, conn: Connection, resources: Iterable[str]) -> int:
        """:meth:`clear` for many resources (one statement per 500).

        :returns: links deleted.
        """
        wanted = sorted({self._check(r) for r in resources})
        count = 0
        for start in range(0, len(wanted), 500):
            count += conn.execute(delete(self._table).where(self._table.c.resource.in_(wanted[start:start + 500]))
                                  ).rowcount
        return count

    def clear(self, conn: Connection, resource: str) -> bool:
        """Forget the delta link (e.g. after it expired, or to force a full extract).

        :returns: ``True`` when a link was stored.
        :raises ValueError: bad ``resource``.
        """
        result = conn.execute(delete(self._table).where(self._table.c.resource == self._check(resource)))
        return result.rowcount > 0
