"""Shared fixtures: one Graph emulator per session over real HTTPS, reset before every test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from emulators.common.handle import EmulatorHandle
from emulators.graph import start


@pytest.fixture(scope="session")
def graph_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorHandle]:
    handle = start(tmp_path_factory.mktemp("graph-tls"), seed=42, users=40)
    yield handle
    handle.stop()


@pytest.fixture()
def graph(graph_emulator: EmulatorHandle) -> EmulatorHandle:
    """The emulator, freshly reseeded, without faults, counters at zero."""
    graph_emulator.admin("POST", "/reset")
    graph_emulator.backend.delta_token_max_age = 7 * 24 * 3600
    graph_emulator.backend.tokens.lifetime = 3599
    return graph_emulator


class GraphCaller:
    """Tiny client: bearer token, CA bundle per request (REQUESTS_CA_BUNDLE would override Session.verify)."""

    def __init__(self, handle: EmulatorHandle) -> None:
        self.handle = handle
        self.info = handle.info
        self.session = requests.Session()
        self.token = self.fetch_token()

    def fetch_token(self) -> str:
        response = self.session.post(
            f"{self.info['authority']}/oauth2/v2.0/token", verify=self.info["ca_bundle"], timeout=10,
            data={"grant_type": "client_credentials", "client_id": self.info["client_id"],
                  "client_secret": self.info["client_secret"], "scope": "https://graph.microsoft.com/.default"},
        )
        response.raise_for_status()
        return str(response.json()["access_token"])

    def get(self, url: str, headers: dict[str, str] | None = None, **kwargs: Any) -> requests.Response:
        if not url.startswith("https://"):
            url = f"{self.info['graph_url']}{url}"
        merged = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        return self.session.get(url, headers=merged, verify=self.info["ca_bundle"], timeout=10, **kwargs)

    def all_pages(self, url: str, headers: dict[str, str] | None = None) -> tuple[list[Any], list[Any]]:
        """Follow nextLinks; return (items, pages)."""
        items: list[dict[str, Any]] = []
        pages: list[dict[str, Any]] = []
        next_url: str | None = url
        while next_url:
            response = self.get(next_url, headers=headers)
            assert response.status_code == 200, response.text
            page = response.json()
            pages.append(page)
            items += page["value"]
            next_url = page.get("@odata.nextLink")
        return items, pages


@pytest.fixture()
def caller(graph: EmulatorHandle) -> GraphCaller:
    return GraphCaller(graph)
