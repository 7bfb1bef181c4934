"""Identity platform emulation, driven by an unchanged msal ConfidentialClientApplication."""

from __future__ import annotations

import hashlib
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import msal
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

pytestmark = pytest.mark.integration


class VerifyingHttpClient:
    """The get/post surface msal needs, passing the emulator CA per request."""

    def __init__(self, ca_bundle: str) -> None:
        self.ca_bundle = ca_bundle
        self.session = requests.Session()

    def get(self, url: str, params: Any = None, headers: Any = None, **_: Any) -> requests.Response:
        return self.session.get(url, params=params, headers=headers, verify=self.ca_bundle, timeout=10)

    def post(self, url: str, params: Any = None, data: Any = None, headers: Any = None, **_: Any) -> requests.Response:
        return self.session.post(url, params=params, data=data, headers=headers, verify=self.ca_bundle, timeout=10)

    def close(self) -> None:
        self.session.close()


def _app(info: dict[str, Any], credential: Any) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        info["client_id"], client_credential=credential, authority=info["authority"],
        instance_discovery=False, http_client=VerifyingHttpClient(info["ca_bundle"]),
    )


def _graph_ok(graph: Any, token: str) -> None:
    response = requests.get(f"{graph.info['graph_url']}/v1.0/users?$top=1", verify=graph.info["ca_bundle"],
                            headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert response.status_code == 200, response.text


def test_discovery_document_points_at_the_emulator(graph: Any) -> None:
    info = graph.info
    doc = requests.get(f"{info['authority']}/v2.0/.well-known/openid-configuration",
                       verify=info["ca_bundle"], timeout=10).json()
    assert doc["token_endpoint"] == f"{info['graph_url']}/{info['tenant_id']}/oauth2/v2.0/token"
    for key in ("authorization_endpoint", "issuer", "jwks_uri", "device_authorization_endpoint"):
        assert doc[key].startswith(f"{info['graph_url']}/{info['tenant_id']}/")


@pytest.mark.parametrize("scope", ["graph_url", "https://graph.microsoft.com/.default"])
def test_msal_client_secret(graph: Any, scope: str) -> None:
    info = graph.info
    scopes = [f"{info['graph_url']}/.default"] if scope == "graph_url" else [scope]
    result = _app(info, info["client_secret"]).acquire_token_for_client(scopes=scopes)
    assert result.get("token_type") == "Bearer", result
    assert result["expires_in"] > 3000
    _graph_ok(graph, result["access_token"])


def test_msal_certificate_with_public_certificate_ps256(graph: Any) -> None:
    info = graph.info
    credential = {"private_key": Path(info["private_key_pem"]).read_text(),
                  "public_certificate": Path(info["certificate_pem"]).read_text()}
    result = _app(info, credential).acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])
    assert "access_token" in result, result
    _graph_ok(graph, result["access_token"])


def test_msal_certificate_with_sha1_thumbprint_rs256(graph: Any) -> None:
    info = graph.info
    cert = x509.load_pem_x509_certificate(Path(info["certificate_pem"]).read_bytes())
    thumbprint = hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    credential = {"private_key": Path(info["private_key_pem"]).read_text(), "thumbprint": thumbprint}
    result = _app(info, credential).acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])
    assert "access_token" in result, result
    _graph_ok(graph, result["access_token"])


def test_msal_wrong_secret_is_invalid_client(graph: Any) -> None:
    result = _app(graph.info, "not-the-secret").acquire_token_for_client(
        scopes=["https://graph.microsoft.com/.default"])
    assert result["error"] == "invalid_client"
    assert 7000215 in result["error_codes"]
    assert result["error_description"].startswith("AADSTS7000215: ")
    assert "\r\nTrace ID: " in result["error_description"]


def _post_token(info: dict[str, Any], tenant: str | None = None, **form: str) -> requests.Response:
    data = {"grant_type": "client_credentials", "client_id": info["client_id"],
            "scope": "https://graph.microsoft.com/.default", **form}
    data = {k: v for k, v in data.items() if v != "-"}
    return requests.post(f"{info['graph_url']}/{tenant or info['tenant_id']}/oauth2/v2.0/token", data=data,
                         verify=info["ca_bundle"], timeout=10)


@pytest.mark.parametrize(("case", "status", "error", "code"), [
    ("unknown_client", 400, "unauthorized_client", 700016),
    ("unknown_tenant", 400, "invalid_request", 90002),
    ("bad_scope", 400, "invalid_scope", 70011),
    ("no_credential", 401, "invalid_client", 7000216),
    ("wrong_secret", 401, "invalid_client", 7000215),
])
def test_token_endpoint_errors(graph: Any, case: str, status: int, error: str, code: int) -> None:
    info = graph.info
    form: dict[str, str] = {"client_secret": info["client_secret"]}
    tenant = None
    if case == "unknown_client":
        form["client_id"] = str(uuid.uuid4())
    elif case == "unknown_tenant":
        tenant = str(uuid.uuid4())
    elif case == "bad_scope":
        form["scope"] = "User.Read.All"
    elif case == "no_credential":
        form["client_secret"] = "-"
    else:
        form["client_secret"] = "wrong"
    response = _post_token(info, tenant, **form)
    assert response.status_code == status
    body = response.json()
    assert body["error"] == error and body["error_codes"] == [code]
    assert {"timestamp", "trace_id", "correlation_id", "error_uri"} <= set(body)


def test_secret_by_http_basic_and_domain_tenant(graph: Any) -> None:
    info = graph.info
    response = requests.post(
        f"{info['graph_url']}/contoso.example/oauth2/v2.0/token", verify=info["ca_bundle"], timeout=10,
        auth=(info["client_id"], info["client_secret"]),
        data={"grant_type": "client_credentials", "scope": "https://graph.microsoft.com/.default", "claims": "{}"},
    )
    assert response.status_code == 200, response.text


def _assertion(info: dict[str, Any], key: Any, *, aud: str | None = None, exp_delta: int = 600) -> str:
    cert = x509.load_pem_x509_certificate(Path(info["certificate_pem"]).read_bytes())
    x5t = jwt.utils.base64url_encode(cert.fingerprint(hashes.SHA256())).decode()
    now = int(time.time())
    claims = {"aud": aud or f"{info['graph_url']}/{info['tenant_id']}/oauth2/v2.0/token",
              "iss": info["client_id"], "sub": info["client_id"], "jti": str(uuid.uuid4()),
              "iat": now, "exp": now + exp_delta}
    return jwt.encode(claims, key, algorithm="PS256", headers={"x5t#S256": x5t + "="})


@pytest.mark.parametrize(("case", "code"), [("ok", None), ("other_key", 700027), ("wrong_aud", 700027),
                                            ("expired", 500133)])
def test_client_assertion_checks(graph: Any, case: str, code: int | None) -> None:
    info = graph.info
    key = serialization.load_pem_private_key(Path(info["private_key_pem"]).read_bytes(), None)
    if case == "other_key":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assertion = _assertion(info, key, aud="https://elsewhere.example/token" if case == "wrong_aud" else None,
                           exp_delta=-600 if case == "expired" else 600)
    response = _post_token(info, client_assertion=assertion,
                           client_assertion_type="urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    if code is None:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 401
        assert response.json()["error_codes"] == [code]


def test_graph_rejects_missing_invalid_expired_and_revoked_tokens(graph: Any, caller: Any) -> None:
    url = f"{graph.info['graph_url']}/v1.0/users"
    bare = requests.get(url, verify=graph.info["ca_bundle"], timeout=10)
    assert bare.status_code == 401
    error = bare.json()["error"]
    assert error["code"] == "InvalidAuthenticationToken"
    assert set(error["innerError"]) >= {"date", "request-id", "client-request-id"}
    bad = requests.get(url, headers={"Authorization": "Bearer nope"}, verify=graph.info["ca_bundle"], timeout=10)
    assert bad.status_code == 401

    assert caller.get("/v1.0/users?$top=1").status_code == 200
    graph.admin("POST", "/tokens/revoke")
    assert caller.get("/v1.0/users?$top=1").json()["error"]["code"] == "InvalidAuthenticationToken"

    graph.backend.tokens.lifetime = 0
    caller.token = caller.fetch_token()
    expired = caller.get("/v1.0/users?$top=1")
    assert expired.status_code == 401
    assert "expired" in expired.json()["error"]["message"]
