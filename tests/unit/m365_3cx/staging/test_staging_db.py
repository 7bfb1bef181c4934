from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from m365_3cx.errors import ConfigError
from m365_3cx.staging.db import make_engine, sqlalchemy_url_for_display


def test_sqlite_file_gets_dir_and_pragmas(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "staging.db"
    engine = make_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
        assert path.parent.is_dir()
    finally:
        engine.dispose()


def test_sqlite_transactions_roll_back_ddl(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 's.db'}")
    try:
        with pytest.raises(RuntimeError), engine.begin() as conn:
            conn.execute(text("CREATE TABLE t (x INTEGER)"))
            raise RuntimeError
        with engine.connect() as conn:
            names = conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'").scalars().all()
        assert "t" not in names
    finally:
        engine.dispose()


def test_sqlite_memory() -> None:
    engine = make_engine("sqlite://")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
    engine.dispose()


@pytest.mark.postgres
def test_postgres_pre_ping(pg_url: str) -> None:
    engine: Engine = make_engine(pg_url)
    try:
        assert engine.pool._pre_ping  # type: ignore[attr-defined]
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


@pytest.mark.parametrize("url", ["not a url", "nosuchdb+nodriver://x/y"])
def test_bad_urls_raise_config_error(url: str) -> None:
    with pytest.raises(ConfigError):
        make_engine(url)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg2://sync:s3cret@db:5432/staging", "postgresql+psycopg2://sync:***@db:5432/staging"),
        (
            "postgresql://u@h/db?password=s3cret&sslmode=require",
            "postgresql://u@h/db?password=%2A%2A%2A&sslmode=require",
        ),
        ("sqlite:////var/lib/x.db", "sqlite:////var/lib/x.db"),
        ("::garbage s3cret", "<invalid URL>"),
    ],
)
def test_url_for_display_masks_secrets(url: str, shown: str) -> None:
    assert sqlalchemy_url_for_display(url) == shown
    assert "s3cret" not in sqlalchemy_url_for_display(url)
