"""What every DAG test needs: Airflow pointed at the emulators and a fresh staging database."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from dag_helpers import connect_airflow


@pytest.fixture
def dag_env(monkeypatch: pytest.MonkeyPatch, airflow_db: str, graph_emulator: Any, threecx_emulator: Any,
            pg_database: str, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Airflow wired to both emulators and a fresh PostgreSQL staging database.

    The test module's ``SETTINGS`` dict is the settings Variable. Yields
    ``{"graph", "pbx", "engine"}``.
    """
    connect_airflow(monkeypatch, graph_emulator.info, threecx_emulator.info, pg_database,
                    getattr(request.module, "SETTINGS", {}))
    engine = sa.create_engine(pg_database)
    yield {"graph": graph_emulator, "pbx": threecx_emulator, "engine": engine}
    engine.dispose()
