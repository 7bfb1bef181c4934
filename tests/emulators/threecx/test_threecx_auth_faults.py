"""Tokens, faults, counters and the CLI of the 3CX emulator."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests

from emulators.threecx.state import PbxBackend, PbxConfig

ROOT = Path(__file__).resolve().parents[3]


def test_token_flow(xapi: Any) -> None:
    response = xapi.token_request()
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["refresh_token"] is None
    assert body["access_token"]


def test_bad_credentials_and_grant(xapi: Any) -> None:
    response = xapi.token_request(client_secret="wrong")
    assert response.status_code == 401
    assert response.json() == {"error": "unauthorized",
                               "error_description": "The request requires valid user authentication."}
    assert xapi.token_request(client_id="someone-else").status_code == 401
    assert xapi.token_request(grant_type="password").status_code == 400


def test_missing_or_bogus_token_is_401(xapi: Any) -> None:
    assert xapi.call("GET", "/Users", token="").status_code == 401
    assert xapi.call("GET", "/Users", token="not-a-token").status_code == 401
    assert xapi.get("/Users").status_code == 200


def test_new_token_revokes_the_previous_one(xapi: Any) -> None:
    first = xapi.token
    second = xapi.login()
    assert first != second
    assert xapi.call("GET", "/Users", token=first).status_code == 401
    assert xapi.call("GET", "/Users", token=second).status_code == 200
    assert xapi.handle.admin("GET", "state").json()["tokens"] == {"live": 1, "issued": 2}


def test_expired_token_is_401(xapi: Any, threecx_emulator: Any) -> None:
    backend = threecx_emulator.backend
    try:
        backend.clock = lambda: time.monotonic() + 3601
        assert xapi.get("/Users").status_code == 401
    finally:
        backend.clock = time.monotonic
    xapi.login()
    assert xapi.get("/Users").status_code == 200


def test_admin_revokes_all_tokens(xapi: Any, threecx_emulator: Any) -> None:
    assert threecx_emulator.admin("POST", "tokens/revoke").json() == {"revoked": 1}
    assert xapi.get("/Users").status_code == 401


def test_legacy_versions_report_expires_in_minutes() -> None:
    backend = PbxBackend(seed=1, unmanaged=False, config=PbxConfig(version="20.0.8.1000"))
    token = backend.issue_token("m365sync", backend.clients["m365sync"], "client_credentials")
    assert token["expires_in"] == 60
    assert backend.list_users() == []


def test_status_fault_with_retry_after(xapi: Any, threecx_emulator: Any) -> None:
    threecx_emulator.admin("POST", "faults", json={"kind": "status", "status": 503, "retry_after": 2,
                                                   "path": r"/xapi/v1/Users$", "method": "GET", "count": 1})
    faulted = xapi.get("/Users")
    assert faulted.status_code == 503 and faulted.headers["Retry-After"] == "2"
    assert set(faulted.json()["error"]) >= {"code", "message"}
    assert xapi.get("/Users").status_code == 200
    counters = xapi.counters()
    assert counters["requests"]["GET /xapi/v1/Users"] == 2
    assert counters["faults"] == {"GET /xapi/v1/Users": 1}
    assert threecx_emulator.admin("GET", "faults").json()["faults"][0]["hits"] == 1


def test_outage_window(xapi: Any, threecx_emulator: Any) -> None:
    threecx_emulator.admin("POST", "faults", json={"kind": "outage", "duration": 0.5, "retry_after": 1})
    assert xapi.get("/Users").status_code == 503
    assert xapi.token_request().status_code == 503
    time.sleep(0.6)
    assert xapi.get("/Users").status_code == 200
    assert threecx_emulator.admin("GET", "faults").json()["faults"] == []


def test_revoke_token_fault(xapi: Any, threecx_emulator: Any) -> None:
    threecx_emulator.admin("POST", "faults", json={"kind": "revoke_token", "path": "/xapi/", "count": 1})
    assert xapi.get("/Users").status_code == 401
    assert xapi.get("/Users").status_code == 401  # the token really is gone
    xapi.login()
    assert xapi.get("/Users").status_code == 200


def test_counter_keys_and_writes(xapi: Any) -> None:
    created = xapi.call("POST", "/Users", json={"Number": "500"}).json()
    xapi.get(f"/Users({created['Id']})")
    xapi.call("PATCH", f"/Users({created['Id']})", json={"FirstName": "x"})
    xapi.get("/Users(Number='500')")
    xapi.call("DELETE", f"/Users({created['Id']})")
    counters = xapi.counters()
    assert counters["requests"] == {
        "POST /connect/token": 1, "POST /xapi/v1/Users": 1, "GET /xapi/v1/Users({Id})": 1,
        "PATCH /xapi/v1/Users({Id})": 1, "GET /xapi/v1/Users(Number={Number})": 1,
        "DELETE /xapi/v1/Users({Id})": 1,
    }
    assert counters["writes"] == 3 and counters["total"] == 6
    xapi.handle.admin("DELETE", "counters")
    xapi.get("/Users")
    assert xapi.counters()["writes"] == 0


def test_cli_prints_one_json_line(tmp_path: Path) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "emulators.threecx", "--port", "0", "--tls-dir", str(tmp_path), "--seed", "7",
         "--no-unmanaged"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        info = json.loads(line)
        assert set(info) == {"base_url", "client_id", "client_secret", "ca_bundle"}
        assert info["base_url"].startswith("https://127.0.0.1:")
        token = requests.post(f"{info['base_url']}/connect/token", verify=info["ca_bundle"], timeout=10,
                              data={"client_id": info["client_id"], "client_secret": info["client_secret"],
                                    "grant_type": "client_credentials"}).json()["access_token"]
        users = requests.get(f"{info['base_url']}/xapi/v1/Users", verify=info["ca_bundle"], timeout=10,
                             headers={"Authorization": f"Bearer {token}"}).json()
        assert users["value"] == []
    finally:
        process.terminate()
        process.wait(timeout=10)
