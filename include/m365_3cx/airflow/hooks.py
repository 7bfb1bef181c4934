"""Airflow hooks: turn Connections into the plain clients of :mod:`m365_3cx`.

The hooks hold no business logic. ``GraphHook`` (``m365_graph``) builds a
:class:`~m365_3cx.graph.client.GraphClient`, ``ThreeCXHook`` (``threecx_xapi``) a
:class:`~m365_3cx.threecx.client.ThreeCXClient` and ``StagingHook``
(``m365_3cx_staging``, a ``postgres`` or ``sqlite`` connection) a SQLAlchemy engine.
Secrets come from the Connection's password or sensitive extras, which Airflow
masks in logs; they are never logged here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from airflow.sdk import BaseHook

from m365_3cx.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from m365_3cx.graph.client import GraphClient
    from m365_3cx.settings import Settings
    from m365_3cx.threecx.client import ThreeCXClient


def _extra(conn: Any, name: str) -> Any:
    value = conn.extra_dejson.get(name)
    return None if value in ("", None) else value


def _read_pem(inline: str | None, path: str | None, what: str) -> str | None:
    if inline:
        return inline
    if path:
        try:
            return Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read {what} file {path}: {exc.strerror}") from None
    return None


class GraphHook(BaseHook):
    """Microsoft Graph with app-only credentials (client secret or certificate).

    :param graph_conn_id: id of an ``m365_graph`` connection.
    """

    conn_name_attr = "graph_conn_id"
    default_conn_name = "m365_graph"
    conn_type = "m365_graph"
    hook_name = "Microsoft 365 (Graph, app-only)"

    def __init__(self, graph_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.graph_conn_id = graph_conn_id

    def get_credentials(self) -> Any:
        """Read the connection into :class:`~m365_3cx.graph.auth.GraphCredentials`.

        :raises ConfigError: when the tenant, client id or credential is missing.
        """
        from m365_3cx.graph.auth import GraphCredentials

        conn = self.get_connection(self.graph_conn_id)
        tenant_id = _extra(conn, "tenant_id")
        if not tenant_id or not conn.login:
            raise ConfigError(f"connection {self.graph_conn_id}: tenant_id and client id (login) are required")
        certificate = _read_pem(_extra(conn, "certificate_data"), _extra(conn, "certificate_path"), "certificate")
        private_key = _read_pem(_extra(conn, "private_key"), _extra(conn, "private_key_path"), "private key")
        discovery = _extra(conn, "disable_instance_discovery")
        return GraphCredentials(
            tenant_id=tenant_id,
            client_id=conn.login,
            client_secret=None if certificate else (conn.password or None),
            certificate_pem=certificate,
            private_key_pem=private_key,
            authority_host=(_extra(conn, "authority") or "https://login.microsoftonline.com").rstrip("/"),
            graph_url=(_extra(conn, "base_url") or "https://graph.microsoft.com").rstrip("/"),
            ca_bundle=_extra(conn, "ca_bundle"),
            disable_instance_discovery=None if discovery is None else str(discovery).lower() in ("1", "true"),
        )

    def get_client(self, settings: Settings | None = None) -> GraphClient:
        """Return a ready :class:`~m365_3cx.graph.client.GraphClient`.

        :param settings: the sync settings (``graph.batch_concurrency``); ``None``: one batch at a time.
        """
        from m365_3cx.graph.client import GraphClient

        concurrency = settings.graph.batch_concurrency if settings is not None else 1
        return GraphClient(self.get_credentials(), batch_concurrency=concurrency)

    def test_connection(self) -> tuple[bool, str]:
        """Acquire a token and read one user; return (ok, message)."""
        try:
            return self.get_client().test_connection()
        except Exception as exc:  # the UI shows the message; it never holds a secret
            return False, str(exc)


class ThreeCXHook(BaseHook):
    """3CX V20 Configuration API (XAPI) with a service principal's client id and API key.

    :param threecx_conn_id: id of a ``threecx_xapi`` connection.
    """

    conn_name_attr = "threecx_conn_id"
    default_conn_name = "threecx_xapi"
    conn_type = "threecx_xapi"
    hook_name = "3CX V20 Configuration API (XAPI)"

    def __init__(self, threecx_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threecx_conn_id = threecx_conn_id

    def get_credentials(self) -> Any:
        """Read the connection into :class:`~m365_3cx.threecx.client.ThreeCXCredentials`.

        :raises ConfigError: when the base URL, client id or API key is missing.
        """
        from m365_3cx.threecx.client import ThreeCXCredentials

        conn = self.get_connection(self.threecx_conn_id)
        base_url = (conn.host or "").rstrip("/")
        if base_url and "://" not in base_url:
            base_url = f"https://{base_url}" + (f":{conn.port}" if conn.port else "")
        if not base_url or not conn.login or not conn.password:
            raise ConfigError(
                f"connection {self.threecx_conn_id}: PBX base URL (host), client id and API key are required"
            )
        return ThreeCXCredentials(
            base_url=base_url, client_id=conn.login, client_secret=conn.password,
            ca_bundle=_extra(conn, "ca_bundle"),
        )

    def get_client(self, settings: Settings | None = None) -> ThreeCXClient:
        """Return a ready :class:`~m365_3cx.threecx.client.ThreeCXClient`.

        :param settings: the sync settings (``threecx.read_concurrency``; write concurrency is a
            per-call argument of the apply steps); ``None``: one page at a time.
        """
        from m365_3cx.threecx.client import ThreeCXClient

        concurrency = settings.threecx.read_concurrency if settings is not None else 1
        return ThreeCXClient(self.get_credentials(), read_concurrency=concurrency)

    def test_connection(self) -> tuple[bool, str]:
        """Authenticate and read the PBX version; return (ok, message)."""
        try:
            return self.get_client().test_connection()
        except Exception as exc:
            return False, str(exc)


def staging_url(conn: Any) -> str:
    """SQLAlchemy URL for a ``postgres`` or ``sqlite`` connection.

    :raises ConfigError: for any other connection type.
    """
    conn_type = (conn.conn_type or "").lower()
    if conn_type == "sqlite":
        path = conn.host or conn.schema
        if not path:
            raise ConfigError("staging connection: sqlite needs the database file path in host")
        return f"sqlite:///{path}"
    if conn_type in ("postgres", "postgresql"):
        auth = ""
        if conn.login:
            auth = quote(conn.login, safe="")
            if conn.password:
                auth += ":" + quote(conn.password, safe="")
            auth += "@"
        port = f":{conn.port}" if conn.port else ""
        return f"postgresql+psycopg2://{auth}{conn.host or 'localhost'}{port}/{conn.schema or 'postgres'}"
    raise ConfigError(f"staging connection: unsupported type {conn.conn_type!r}; use postgres or sqlite")


#: Staging URLs whose schema this process has ensured.
_SCHEMA_ENSURED: set[str] = set()


class StagingHook(BaseHook):
    """The staging database (PostgreSQL in production, a SQLite file for demos).

    :param staging_conn_id: id of a ``postgres`` or ``sqlite`` connection.
    """

    conn_name_attr = "staging_conn_id"
    default_conn_name = "m365_3cx_staging"
    conn_type = "postgres"
    hook_name = "m365-3cx-sync staging database"

    def __init__(self, staging_conn_id: str = default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.staging_conn_id = staging_conn_id

    def get_engine(self) -> Engine:
        """Return an engine on the staging database with the schema created (once per database and process)."""
        from m365_3cx.staging.db import make_engine
        from m365_3cx.staging.schema import create_schema

        url = staging_url(self.get_connection(self.staging_conn_id))
        engine = make_engine(url)
        if url not in _SCHEMA_ENSURED:  # a task making many steps (the push DAG's) checks the schema once
            create_schema(engine)
            _SCHEMA_ENSURED.add(url)
        return engine
