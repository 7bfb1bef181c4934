"""Hooks read Connections into the plain clients' credentials; nothing else."""

from __future__ import annotations

import json

import pytest

from m365_3cx.airflow.hooks import GraphHook, StagingHook, ThreeCXHook, staging_url
from m365_3cx.errors import ConfigError


def _set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: object) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))


def test_graph_hook_secret_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_conn(monkeypatch, "m365_graph", conn_type="m365_graph", login="app-id", password="s3cr3t-value",
              extra={"tenant_id": "tid", "base_url": "https://graph.example/", "ca_bundle": "/ca.pem"})
    creds = GraphHook().get_credentials()
    assert creds.tenant_id == "tid"
    assert creds.client_id == "app-id"
    assert creds.client_secret == "s3cr3t-value"
    assert creds.graph_url == "https://graph.example"
    assert creds.authority_host == "https://login.microsoftonline.com"
    assert creds.ca_bundle == "/ca.pem"
    assert "s3cr3t-value" not in repr(creds)


def test_graph_hook_certificate_from_files(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    (tmp_path / "cert.pem").write_text("CERT")
    (tmp_path / "key.pem").write_text("KEY")
    _set_conn(monkeypatch, "m365_graph", conn_type="m365_graph", login="app-id",
              extra={"tenant_id": "tid", "certificate_path": str(tmp_path / "cert.pem"),
                     "private_key_path": str(tmp_path / "key.pem")})
    creds = GraphHook().get_credentials()
    assert creds.client_secret is None
    assert (creds.certificate_pem, creds.private_key_pem) == ("CERT", "KEY")
    assert "KEY" not in repr(creds)


def test_graph_hook_client_takes_the_batch_concurrency_of_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from m365_3cx.settings import Settings

    _set_conn(monkeypatch, "m365_graph", conn_type="m365_graph", login="app-id", password="x",
              extra={"tenant_id": "tid"})
    with GraphHook().get_client(Settings.from_mapping({"graph": {"batch_concurrency": 3}})) as client:
        assert client.batch_concurrency == 3
    with GraphHook().get_client() as client:  # no settings (connection test): one batch at a time
        assert client.batch_concurrency == 1


def test_graph_hook_requires_tenant(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_conn(monkeypatch, "m365_graph", conn_type="m365_graph", login="app-id", password="x")
    with pytest.raises(ConfigError, match="tenant_id"):
        GraphHook().get_credentials()


def test_threecx_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_conn(monkeypatch, "threecx_xapi", conn_type="threecx_xapi", host="https://pbx.example.com:5001/",
              login="900", password="api-key-value", extra={"ca_bundle": "/pbx-ca.pem"})
    creds = ThreeCXHook().get_credentials()
    assert creds.base_url == "https://pbx.example.com:5001"
    assert creds.client_id == "900"
    assert creds.ca_bundle == "/pbx-ca.pem"
    assert "api-key-value" not in repr(creds)


def test_threecx_hook_client_takes_the_read_concurrency_of_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from m365_3cx.settings import Settings

    _set_conn(monkeypatch, "threecx_xapi", conn_type="threecx_xapi", host="https://pbx.example.com",
              login="900", password="k")
    with ThreeCXHook().get_client(Settings.from_mapping({"threecx": {"read_concurrency": 6}})) as client:
        assert client.read_concurrency == 6
    with ThreeCXHook().get_client() as client:
        assert client.read_concurrency == 1


def test_threecx_hook_host_without_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_conn(monkeypatch, "threecx_xapi", conn_type="threecx_xapi", host="pbx.example.com", port=5001,
              login="900", password="k")
    assert ThreeCXHook().get_credentials().base_url == "https://pbx.example.com:5001"


def test_threecx_hook_requires_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_conn(monkeypatch, "threecx_xapi", conn_type="threecx_xapi", host="https://pbx", login="900")
    with pytest.raises(ConfigError, match="API key"):
        ThreeCXHook().get_credentials()


@pytest.mark.parametrize(
    ("fields", "url"),
    [
        ({"conn_type": "sqlite", "host": "/data/staging.db"}, "sqlite:////data/staging.db"),
        ({"conn_type": "postgres", "host": "db", "port": 5432, "login": "sync", "password": "p@ss/word",
          "schema": "staging"}, "postgresql+psycopg2://sync:p%40ss%2Fword@db:5432/staging"),
        ({"conn_type": "postgres", "host": "127.0.0.1", "schema": "test"}, "postgresql+psycopg2://127.0.0.1/test"),
    ],
)
def test_staging_url(monkeypatch: pytest.MonkeyPatch, fields: dict, url: str) -> None:
    _set_conn(monkeypatch, "m365_3cx_staging", **fields)
    assert staging_url(StagingHook().get_connection("m365_3cx_staging")) == url


def test_staging_url_rejects_other_types(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_conn(monkeypatch, "m365_3cx_staging", conn_type="mysql", host="db")
    with pytest.raises(ConfigError, match="unsupported"):
        staging_url(StagingHook().get_connection("m365_3cx_staging"))
