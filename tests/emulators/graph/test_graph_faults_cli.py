"""Fault injection, request counters and the command-line entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests

from emulators.graph.app import route_key

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def test_429_with_retry_after_then_success_and_counters(caller: Any, graph: Any) -> None:
    graph.admin("DELETE", "/counters")
    rule = graph.admin("POST", "/faults", json={"kind": "status", "status": 429, "path": "^/v1.0/users$",
                                                "method": "GET", "count": 2, "retry_after": 2}).json()
    assert rule["id"] >= 1
    for _ in range(2):
        throttled = caller.get("/v1.0/users?$top=1", headers={"client-request-id": "retry-me"})
        assert throttled.status_code == 429
        assert throttled.headers["Retry-After"] == "2"
        assert throttled.headers["client-request-id"] == "retry-me"
        error = throttled.json()["error"]
        assert error["code"] == "TooManyRequests"
        assert error["innerError"]["request-id"] == throttled.headers["request-id"]
    assert caller.get("/v1.0/users?$top=1").status_code == 200
    user_id = graph.backend.list_users()[0]["id"]
    assert caller.get(f"/v1.0/users/{user_id}").status_code == 200
    counters = graph.admin("GET", "/counters").json()
    assert counters["requests"]["GET /v1.0/users"] == 3
    assert counters["faults"]["GET /v1.0/users"] == 2
    assert counters["requests"]["GET /v1.0/users/{id}"] == 1
    assert graph.admin("GET", "/faults").json()["faults"][0]["hits"] == 2


def test_outage_is_service_unavailable_and_token_faults_use_aad_shape(caller: Any, graph: Any) -> None:
    graph.admin("POST", "/faults", json={"kind": "outage", "path": "/v1.0/", "duration": 30})
    outage = caller.get("/v1.0/users")
    assert outage.status_code == 503 and outage.json()["error"]["code"] == "serviceNotAvailable"
    graph.admin("DELETE", "/faults")
    assert caller.get("/v1.0/users").status_code == 200

    graph.admin("POST", "/faults", json={"kind": "status", "status": 429, "path": "/oauth2/v2.0/token",
                                         "count": 1, "retry_after": 1})
    info = graph.info
    response = requests.post(f"{info['authority']}/oauth2/v2.0/token", verify=info["ca_bundle"], timeout=10,
                             data={"grant_type": "client_credentials"})
    assert response.status_code == 429
    assert response.json()["error"] == "temporarily_unavailable"
    counters = graph.admin("GET", "/counters").json()["requests"]
    assert counters["POST /{tenant}/oauth2/v2.0/token"] >= 2


def test_revoke_token_fault(caller: Any, graph: Any) -> None:
    graph.admin("POST", "/faults", json={"kind": "revoke_token", "count": 1, "path": "^/v1.0/"})
    assert caller.get("/v1.0/users?$top=1").status_code == 401
    assert caller.get("/v1.0/users?$top=1").status_code == 401
    caller.token = caller.fetch_token()
    assert caller.get("/v1.0/users?$top=1").status_code == 200


@pytest.mark.parametrize(("method", "path", "key"), [
    ("GET", "/v1.0/users", "GET /v1.0/users"),
    ("GET", "/v1.0/users/delta", "GET /v1.0/users/delta"),
    ("GET", "/v1.0/users/alice@contoso.example", "GET /v1.0/users/{id}"),
    ("GET", "/v1.0/groups/0b1c/transitiveMembers/microsoft.graph.user",
     "GET /v1.0/groups/{id}/transitiveMembers/microsoft.graph.user"),
    ("POST", "/bdd640fb-0667-4ad1-9c80-317fa3b1799d/oauth2/v2.0/token", "POST /{tenant}/oauth2/v2.0/token"),
    ("GET", "/contoso.example/v2.0/.well-known/openid-configuration",
     "GET /{tenant}/v2.0/.well-known/openid-configuration"),
])
def test_route_keys(method: str, path: str, key: str) -> None:
    assert route_key(method, path) == key


def test_admin_errors(graph: Any) -> None:
    response = requests.patch(f"{graph.base_url}/_emulator/users/nope", json={"displayName": "x"},
                              verify=graph.ca_bundle, timeout=10)
    assert response.status_code == 404
    bad = requests.post(f"{graph.base_url}/_emulator/faults", json={"kind": "meteor"},
                        verify=graph.ca_bundle, timeout=10)
    assert bad.status_code == 400


def test_cli_prints_one_json_line(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "emulators.graph", "--port", "0", "--tls-dir", str(tmp_path), "--seed", "42",
         "--users", "12"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        info = json.loads(line)
        assert set(info) == {"authority", "graph_url", "tenant_id", "client_id", "client_secret",
                             "certificate_pem", "private_key_pem", "ca_bundle"}
        assert info["authority"] == f"{info['graph_url']}/{info['tenant_id']}"
        assert not info["graph_url"].endswith("/v1.0")
        assert all(Path(info[k]).is_file() for k in ("certificate_pem", "private_key_pem", "ca_bundle"))
        doc = requests.get(f"{info['authority']}/v2.0/.well-known/openid-configuration",
                           verify=info["ca_bundle"], timeout=10, headers={"Connection": "close"})
        assert doc.status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=10)
