"""Database fixtures: every staging (and staging-backed pipeline) test runs on SQLite (a temp file) and PostgreSQL.

PostgreSQL: a throwaway database ``m365_3cx_test_<pid>`` is created through the
admin URL (``M365_3CX_TEST_PG_ADMIN_URL``, default the local ``postgres`` database)
once per session and dropped at the end; each test starts from an empty schema.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from m365_3cx.staging.db import make_engine
from m365_3cx.staging.schema import create_schema, metadata

PG_ADMIN_URL = os.environ.get("M365_3CX_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a throwaway PostgreSQL database for this test session (skips when unreachable)."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    name = f"m365_3cx_test_{os.getpid()}"
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # any failure means "no server"
        admin.dispose()
        pytest.skip(f"PostgreSQL not reachable at {make_url(PG_ADMIN_URL).host}: {type(exc).__name__}")
    try:
        yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """An engine on an empty database (no tables), for each backend."""
    if request.param == "sqlite":
        engine = make_engine(f"sqlite:///{tmp_path / 'db' / 'staging.db'}")
    else:
        engine = make_engine(request.getfixturevalue("pg_url"))
        with engine.begin() as conn:
            metadata.drop_all(conn)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def engine(empty_engine: Engine) -> Engine:
    """An engine whose database has the staging schema."""
    create_schema(empty_engine)
    return empty_engine
