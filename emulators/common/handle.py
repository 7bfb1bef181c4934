"""A started emulator as tests and scripts see it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import requests

from emulators.common.server import ServerHandle


@dataclass
class EmulatorHandle:
    """A running emulator.

    :param info: the same dict the CLI prints as its one JSON start line.
    :param server: the HTTPS server running it.
    :param backend: the in-memory state object (tests may inspect it directly).
    """

    info: dict[str, Any]
    server: ServerHandle
    backend: Any
    _session: requests.Session = field(default_factory=requests.Session, repr=False)

    @property
    def base_url(self) -> str:
        return self.server.base_url

    @property
    def ca_bundle(self) -> str:
        return str(self.info["ca_bundle"])

    def admin(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """Call the admin API: ``admin("POST", "/faults", json={...})`` -> ``/_emulator/faults``."""
        url = f"{self.base_url}/_emulator/{path.lstrip('/')}"
        response = self._session.request(method, url, verify=self.ca_bundle, timeout=30, **kwargs)
        response.raise_for_status()
        return response

    def stop(self) -> None:
        self._session.close()
        self.server.stop()
        close = getattr(self.backend, "close", None)
        if callable(close):
            close()
