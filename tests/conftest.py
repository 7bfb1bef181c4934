"""Shared fixtures: emulators over real HTTPS, a throwaway PostgreSQL database, Airflow home.

Airflow reads its configuration at import time, so the environment it needs is set
here, before any test module imports it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("AIRFLOW_HOME", str(ROOT / ".airflow-test"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(ROOT / "plugins"))

PG_ADMIN_URL = os.environ.get("M365_3CX_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "live: starts a real scheduler, triggerer and HTTPS api-server (LocalExecutor)")


@pytest.fixture(scope="session")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One throwaway CA and server certificate for every emulator of the session."""
    return tmp_path_factory.mktemp("tls")


@pytest.fixture(scope="session")
def graph_emulator(tls_dir: Path) -> Iterator[Any]:
    """The Graph + identity emulator (seed 42, 40 users) on a free port."""
    from emulators.graph import start

    handle = start(tls_dir, seed=42, users=40)
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def threecx_emulator(tls_dir: Path) -> Iterator[Any]:
    """The 3CX XAPI emulator (seed 7, with unmanaged extensions) on a free port."""
    from emulators.threecx import start

    handle = start(tls_dir, seed=7, unmanaged=True)
    yield handle
    handle.stop()


@pytest.fixture(autouse=True)
def _fresh_emulators(request: pytest.FixtureRequest) -> None:
    """Before each test that uses an emulator: reseed its state, clear faults and counters."""
    for name in ("graph_emulator", "threecx_emulator"):
        if name in request.fixturenames:
            handle = request.getfixturevalue(name)
            handle.admin("DELETE", "faults")
            handle.admin("POST", "reset")
            handle.admin("DELETE", "counters")


def _create_database(name: str, template: str | None = None) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
            conn.execute(sa.text(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")))
    finally:
        admin.dispose()


def _drop_database(name: str) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"
            ), {"n": name})
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    finally:
        admin.dispose()


# DROP DATABASE waits for a checkpoint (seconds on a busy server): throwaway databases are dropped
# by one background thread while the next test runs, and pytest_sessionfinish waits for the rest.
_DROPPER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="drop-test-db")


def _drop_later(name: str) -> None:
    def drop() -> None:
        with contextlib.suppress(Exception):
            _drop_database(name)

    _DROPPER.submit(drop)


def pytest_sessionfinish(session: pytest.Session) -> None:
    _DROPPER.shutdown(wait=True)


def _pg_url(name: str) -> str:
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def staging_template() -> Iterator[str]:
    """A PostgreSQL database holding the current staging schema, created once per session.

    Live DAG tests get a copy of it (``CREATE DATABASE ... TEMPLATE``, a file copy) instead of
    running every CREATE TABLE again; nothing ever connects to it after the schema is created.
    """
    import sqlalchemy as sa

    from m365_3cx.staging.schema import create_schema

    name = f"m365_3cx_tpl_{uuid.uuid4().hex[:10]}"
    _create_database(name)
    engine = sa.create_engine(_pg_url(name))
    try:
        create_schema(engine)
    finally:
        engine.dispose()
    yield name
    with contextlib.suppress(Exception):
        _drop_database(name)


@pytest.fixture
def pg_database(request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh PostgreSQL database for one test; yields its SQLAlchemy URL.

    Empty, except for a live DAG test (``dag_env`` without ``not_live``): that one starts as a copy
    of :func:`staging_template`, i.e. with the staging schema ``dag_env`` would create anyway.
    """
    live_dag_test = "dag_env" in request.fixturenames and request.node.get_closest_marker("not_live") is None
    template = request.getfixturevalue("staging_template") if live_dag_test else None
    name = f"m365_3cx_t_{uuid.uuid4().hex[:10]}"
    _create_database(name, template)
    yield _pg_url(name)
    _drop_later(name)


@pytest.fixture(scope="session")
def airflow_db() -> str:
    """Airflow's metadata database (SQLite in AIRFLOW_HOME), migrated once per session."""
    import subprocess
    import sys

    home = Path(os.environ["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    airflow = Path(sys.executable).with_name("airflow")
    subprocess.run([str(airflow), "db", "migrate"], check=True, capture_output=True, env=os.environ.copy())
    return str(home)


class SmtpInbox:
    """Messages received by a local SMTP server (aiosmtpd)."""

    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        from email import message_from_bytes

        self.messages.append(message_from_bytes(envelope.original_content))
        return "250 OK"

    @staticmethod
    def html(message: Any) -> str:
        """The decoded text/html part of a message."""
        parts = message.walk() if message.is_multipart() else [message]
        return "".join(p.get_payload(decode=True).decode() for p in parts if p.get_content_type() == "text/html")


@pytest.fixture
def smtp_inbox(monkeypatch: pytest.MonkeyPatch) -> Iterator[SmtpInbox]:
    """A local SMTP server on a free port, reachable as the Airflow connection ``smtp_alerts``."""
    import json
    import socket

    from aiosmtpd.controller import Controller

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    inbox = SmtpInbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_ALERTS", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": port,
        "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "airflow@example.com"},
    }))
    yield inbox
    controller.stop()
