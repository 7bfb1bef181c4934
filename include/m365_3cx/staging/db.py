"""Engines for the staging database (connection ``m365_3cx_staging``).

PostgreSQL in production and CI, a SQLite file as the embedded default. For SQLite
every connection gets ``journal_mode=WAL``, ``foreign_keys=ON`` and a busy timeout,
and SQLAlchemy (not the ``sqlite3`` module) controls transactions: each transaction
starts with ``BEGIN IMMEDIATE``, so DDL is transactional, savepoints work and two
processes writing the same file wait for each other (``busy_timeout``) instead of
failing with ``database is locked`` when a reader upgrades to a writer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from m365_3cx.errors import ConfigError

__all__ = ["SQLITE_BUSY_TIMEOUT_MS", "make_engine", "sqlalchemy_url_for_display"]

#: How long a SQLite connection waits for another writer before ``database is locked``.
SQLITE_BUSY_TIMEOUT_MS: Final = 30_000


_SECRET_WORDS: Final = ("password", "passwd", "secret", "token", "key")


def _parse(url: str | URL) -> URL:
    try:
        return make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"invalid staging database URL: {exc}") from None


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or ``None`` for in-memory databases."""
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        return None
    if database.startswith("file:"):
        database = database[len("file:") :].split("?", 1)[0]
    return Path(database)


def _install_sqlite_hooks(engine: Engine, *, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let SQLAlchemy emit BEGIN
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA foreign_keys = ON")
            if wal:
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str | URL, **kwargs: Any) -> Engine:
    """Create the staging engine for a SQLAlchemy URL.

    SQLite: WAL, foreign keys, busy timeout, ``BEGIN IMMEDIATE`` transactions; the parent
    directory of a database file is created. PostgreSQL: ``pool_pre_ping``; with psycopg2, bulk
    UPDATE/DELETE statements (executemany) are sent in pages of 500 per round trip.

    :param url: SQLAlchemy URL, e.g. ``postgresql+psycopg2://user:pw@host/db`` or
        ``sqlite:////var/lib/m365_3cx/staging.db``.
    :param kwargs: passed on to :func:`sqlalchemy.create_engine`.
    :raises ConfigError: the URL cannot be parsed, names no database driver that is installed,
        or the database directory cannot be created.
    """
    parsed = _parse(url)
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        kwargs.setdefault("pool_pre_ping", True)
        if parsed.get_driver_name() == "psycopg2":
            # executemany of UPDATE/DELETE as pages of 500 statements per round trip (INSERTs already
            # go as multi-row VALUES), so a bulk update costs one round trip per page, not per row.
            kwargs.setdefault("executemany_mode", "values_plus_batch")
            kwargs.setdefault("executemany_batch_page_size", 500)
    elif backend == "sqlite":
        path = _sqlite_file(parsed)
        if path is not None and str(path.parent) not in ("", "."):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot create the staging database directory {path.parent}: {exc}") from None
    try:
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, ImportError) as exc:  # NoSuchModuleError is an ArgumentError
        raise ConfigError(f"cannot create an engine for {sqlalchemy_url_for_display(parsed)}: {exc}") from None
    if backend == "sqlite":
        _install_sqlite_hooks(engine, wal=_sqlite_file(parsed) is not None)
    return engine


def sqlalchemy_url_for_display(url: str | URL) -> str:
    """Render a URL for logs and messages with its password masked (``***``).

    :param url: SQLAlchemy URL.
    :returns: the URL as text, query parameters named like a secret (``password``, ``sslkey``...)
        masked too; an unparseable URL gives ``"<invalid URL>"`` (it might hold a secret).
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        return "<invalid URL>"
    query = {
        key: ("***" if any(word in key.lower() for word in _SECRET_WORDS) else value)
        for key, value in parsed.query.items()
    }
    return parsed.set(query=query).render_as_string(hide_password=True)
