"""A small XAPI client over the session's 3CX emulator (``threecx_emulator`` from tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests


class Xapi:
    """Calls the emulator with ``verify=`` per request (REQUESTS_CA_BUNDLE overrides Session.verify)."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle
        self.session = requests.Session()
        self.token: str | None = None

    @property
    def base(self) -> str:
        return self.handle.base_url

    def token_request(self, **form: str) -> requests.Response:
        data = {"client_id": self.handle.info["client_id"], "client_secret": self.handle.info["client_secret"],
                "grant_type": "client_credentials", **form}
        return self.session.post(f"{self.base}/connect/token", data=data, verify=self.handle.ca_bundle,
                                 timeout=10)

    def login(self) -> str:
        response = self.token_request()
        response.raise_for_status()
        self.token = response.json()["access_token"]
        return self.token

    def call(self, method: str, path: str, *, token: str | None = None, **kwargs: Any) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        bearer = token if token is not None else self.token
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        return self.session.request(method, f"{self.base}/xapi/v1{path}", headers=headers,
                                    verify=self.handle.ca_bundle, timeout=10, **kwargs)

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.call("GET", path, params=params)

    def counters(self) -> dict[str, Any]:
        return self.handle.admin("GET", "counters").json()


@pytest.fixture
def xapi(threecx_emulator: Any) -> Iterator[Xapi]:
    """A logged-in client on freshly reset emulator state."""
    client = Xapi(threecx_emulator)
    client.login()
    yield client
    client.session.close()
