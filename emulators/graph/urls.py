"""The emulator's own base URL as a request sees it, computed once per host (hot on every ``$batch`` item)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

_BASES: dict[tuple[Any, ...], str] = {}
_MAX_BASES = 1024


def base(request: Request) -> str:
    """``str(request.base_url)`` without its trailing slash, remembered per scheme, ``Host`` header,
    server address and root path (Starlette builds and parses a URL object for it on every request)."""
    scope = request.scope
    host = next((value for name, value in scope.get("headers", ()) if name == b"host"), None)
    key = (scope.get("scheme"), host, scope.get("server"), scope.get("app_root_path", scope.get("root_path", "")))
    found = _BASES.get(key)
    if found is None:
        found = str(request.base_url).rstrip("/")
        if len(_BASES) < _MAX_BASES:
            _BASES[key] = found
    return found
