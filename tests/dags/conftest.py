"""What every DAG test needs: Airflow pointed at the emulators and a fresh staging database."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from dag_helpers import connect_airflow
from documented_routes import swagger_path, undocumented_graph, undocumented_xapi


@pytest.fixture
def dag_env(monkeypatch: pytest.MonkeyPatch, airflow_db: str, graph_emulator: Any, threecx_emulator: Any,
            pg_database: str, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """Airflow wired to both emulators and a fresh PostgreSQL staging database, live.

    The test module's ``SETTINGS`` dict is the settings Variable. Writes are turned on through the
    same audited repository call the ``m365_3cx_go_live`` DAG makes, unless the test is marked
    ``not_live`` (a fresh install). Yields ``{"graph", "pbx", "engine"}``. At teardown, every route the
    product used on either emulator during the test must be one the vendor documents
    (:mod:`documented_routes`).
    """
    from m365_3cx.staging.control import set_writes_enabled
    from m365_3cx.staging.schema import create_schema

    connect_airflow(monkeypatch, graph_emulator.info, threecx_emulator.info, pg_database,
                    getattr(request.module, "SETTINGS", {}))
    engine = sa.create_engine(pg_database)
    if request.node.get_closest_marker("not_live") is None:
        create_schema(engine)
        with engine.begin() as conn:
            set_writes_enabled(conn, True, changed_by="tests/dags fixture", now=datetime.now(UTC),
                               note="DAG tests expect writes")
    graph_emulator.admin("DELETE", "routes")
    threecx_emulator.admin("DELETE", "routes")
    yield {"graph": graph_emulator, "pbx": threecx_emulator, "engine": engine}
    engine.dispose()
    graph_routes = graph_emulator.admin("GET", "routes").json()["routes"]
    assert undocumented_graph(graph_routes) == [], "product requests to Graph routes Microsoft does not document"
    if swagger_path().is_file():
        pbx_routes = threecx_emulator.admin("GET", "routes").json()["routes"]
        assert undocumented_xapi(pbx_routes) == [], "product requests to XAPI routes 3CX's swagger does not declare"
