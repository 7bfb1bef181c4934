"""Unit tests for Graph credentials and the MSAL token provider (HTTP faked with requests_mock)."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import requests_mock

from m365_3cx.errors import ConfigError, GraphAuthError, GraphRetriableError
from m365_3cx.graph.auth import GraphCredentials, GraphTokenProvider
from m365_3cx.http import HttpTransport, RetryPolicy

SECRET = "SUPER-SECRET-VALUE"
TENANT = "contoso-tenant"
AUTHORITY = "https://login.microsoftonline.com"
TOKEN_URL = f"{AUTHORITY}/{TENANT}/oauth2/v2.0/token"
OIDC_URL = f"{AUTHORITY}/{TENANT}/v2.0/.well-known/openid-configuration"


def _oidc(host: str = AUTHORITY) -> dict[str, Any]:
    return {
        "authorization_endpoint": f"{host}/{TENANT}/oauth2/v2.0/authorize",
        "token_endpoint": f"{host}/{TENANT}/oauth2/v2.0/token",
        "issuer": f"{host}/{TENANT}/v2.0",
    }


def _creds(**kw: Any) -> GraphCredentials:
    base: dict[str, Any] = {"tenant_id": TENANT, "client_id": "app-1", "client_secret": SECRET}
    base.update(kw)
    return GraphCredentials(**base)


def _provider(creds: GraphCredentials) -> GraphTokenProvider:
    transport = HttpTransport(
        RetryPolicy(max_attempts=2, backoff_base=0.0), ca_bundle=creds.ca_bundle, sleep=lambda _s: None
    )
    return GraphTokenProvider(creds, transport=transport)


@pytest.mark.parametrize(
    ("kwargs", "problem"),
    [
        ({"client_secret": None}, "one of client_secret"),
        ({"certificate_pem": "c", "private_key_pem": "k"}, "not both"),
        ({"client_secret": None, "certificate_pem": "c"}, "must be set together"),
        ({"client_secret": None, "private_key_pem": "k"}, "must be set together"),
        ({"tenant_id": ""}, "tenant_id is required"),
        ({"client_id": ""}, "client_id is required"),
        ({"authority_host": "http://login.test"}, "authority_host must be an https URL"),
        ({"graph_url": "graph.test"}, "graph_url must be an https URL"),
    ],
)
def test_credentials_validation(kwargs: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        _creds(**kwargs)


def test_credentials_repr_hides_secrets() -> None:
    creds = _creds()
    assert SECRET not in repr(creds)
    cert = GraphCredentials(TENANT, "app", certificate_pem="-----BEGIN CERT", private_key_pem="-----BEGIN KEYDATA")
    assert "KEYDATA" not in repr(cert)
    assert cert.uses_certificate and not creds.uses_certificate


@pytest.mark.parametrize(
    ("kwargs", "scope", "discovery"),
    [
        ({}, "https://graph.microsoft.com/.default", True),
        (
            {"graph_url": "https://graph.local:8443/", "authority_host": "https://login.local:8443"},
            "https://graph.local:8443/.default",
            False,
        ),
        ({"disable_instance_discovery": True}, "https://graph.microsoft.com/.default", False),
        (
            {"authority_host": "https://login.local", "disable_instance_discovery": False},
            "https://graph.microsoft.com/.default",
            True,
        ),
    ],
)
def test_scope_and_instance_discovery(kwargs: dict[str, Any], scope: str, discovery: bool) -> None:
    creds = _creds(**kwargs)
    assert creds.scope == scope
    assert creds.instance_discovery is discovery


def test_token_is_cached_and_verify_passed() -> None:
    creds = _creds(ca_bundle="/my/ca.pem")
    provider = _provider(creds)
    with requests_mock.Mocker() as m:
        m.get(OIDC_URL, json=_oidc())
        m.post(TOKEN_URL, json={"token_type": "Bearer", "expires_in": 3599, "access_token": "AT1"})
        assert provider.token() == "AT1"
        assert provider.token() == "AT1"
        posts = [r for r in m.request_history if r.method == "POST"]
        assert len(posts) == 1
        assert all(r.verify == "/my/ca.pem" for r in m.request_history)
        assert all(r.timeout == (10.0, 60.0) for r in m.request_history)
        assert "scope=https%3A%2F%2Fgraph.microsoft.com%2F.default" in posts[0].text
        provider.invalidate("AT1")
        m.post(TOKEN_URL, json={"token_type": "Bearer", "expires_in": 3599, "access_token": "AT2"})
        assert provider.token() == "AT2"


def test_custom_host_skips_instance_discovery() -> None:
    host = "https://login.local:9443"
    creds = _creds(authority_host=host, graph_url="https://graph.local:9443")
    provider = _provider(creds)
    with requests_mock.Mocker() as m:
        m.get(f"{host}/{TENANT}/v2.0/.well-known/openid-configuration", json=_oidc(host))
        m.post(f"{host}/{TENANT}/oauth2/v2.0/token", json={"expires_in": 3599, "access_token": "AT"})
        assert provider.token() == "AT"
        hosts = {r.hostname for r in m.request_history}
        assert hosts == {"login.local"}
        assert "scope=https%3A%2F%2Fgraph.local%3A9443%2F.default" in m.request_history[-1].text


def test_msal_error_maps_to_graph_auth_error(caplog: pytest.LogCaptureFixture) -> None:
    provider = _provider(_creds())
    body = {
        "error": "invalid_client",
        "error_description": f"AADSTS7000215: Invalid client secret provided {SECRET}.\r\nTrace ID: x\r\n",
        "error_codes": [7000215],
        "correlation_id": "corr-1",
    }
    with requests_mock.Mocker() as m, caplog.at_level(logging.DEBUG):
        m.get(OIDC_URL, json=_oidc())
        m.get("https://login.microsoftonline.com/common/discovery/instance", json={"metadata": []})
        m.post(TOKEN_URL, status_code=401, json=body)
        with pytest.raises(GraphAuthError) as info:
            provider.token()
    err = info.value
    assert err.code == "invalid_client"
    assert "AADSTS7000215" in err.message and "Trace ID" not in err.message
    assert SECRET not in str(err) and SECRET not in repr(err)
    assert all(SECRET not in r.getMessage() for r in caplog.records)


def test_token_endpoint_5xx_is_retriable() -> None:
    provider = _provider(_creds())
    with requests_mock.Mocker() as m:
        m.get(OIDC_URL, json=_oidc())
        m.get("https://login.microsoftonline.com/common/discovery/instance", json={"metadata": []})
        m.post(TOKEN_URL, status_code=503, json={"error": "temporarily_unavailable"})
        with pytest.raises(GraphRetriableError):
            provider.token()


def test_bad_discovery_is_auth_error() -> None:
    provider = _provider(_creds())
    with requests_mock.Mocker() as m:
        m.get(OIDC_URL, status_code=400, json={"error": "invalid_tenant"})
        with pytest.raises(GraphAuthError):
            provider.token()


def test_certificate_from_files(tmp_path: Any) -> None:
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "app")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "c.pem", tmp_path / "k.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    creds = GraphCredentials(TENANT, "app-1", certificate_pem=str(cert_path), private_key_pem=str(key_path))
    provider = _provider(creds)
    with requests_mock.Mocker() as m:
        m.get(OIDC_URL, json=_oidc())
        m.post(TOKEN_URL, json={"expires_in": 3599, "access_token": "CERT-AT"})
        assert provider.token() == "CERT-AT"
        body = m.request_history[-1].text
        assert "client_assertion=" in body and "client_secret" not in body


def test_missing_pem_file_is_config_error(tmp_path: Any) -> None:
    creds = GraphCredentials(
        TENANT, "app-1", certificate_pem=str(tmp_path / "no.pem"), private_key_pem=str(tmp_path / "no.key")
    )
    with pytest.raises(ConfigError):
        _provider(creds).token()


def test_a_fresh_token_is_reused_without_asking_msal_and_a_short_lived_one_is_not() -> None:
    provider = _provider(_creds())
    with requests_mock.Mocker() as m:
        m.get(OIDC_URL, json=_oidc())
        m.post(TOKEN_URL, json={"token_type": "Bearer", "expires_in": 3599, "access_token": "AT1"})
        app = provider.app()
        asked: list[int] = []
        acquire = app.acquire_token_for_client

        def counting(*args: Any, **kwargs: Any) -> Any:
            asked.append(1)
            return acquire(*args, **kwargs)

        app.acquire_token_for_client = counting  # type: ignore[method-assign]
        assert [provider.token() for _ in range(50)] == ["AT1"] * 50
        assert len(asked) == 1
        provider.invalidate("AT1")  # a rejected token is never handed out again
        m.post(TOKEN_URL, json={"token_type": "Bearer", "expires_in": 200, "access_token": "AT2"})
        assert provider.token() == "AT2"
        m.post(TOKEN_URL, json={"token_type": "Bearer", "expires_in": 200, "access_token": "AT3"})
        assert provider.token() == "AT3"  # under five minutes left: MSAL is asked (and renews) every time
        assert len(asked) == 3
