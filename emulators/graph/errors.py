"""Error shapes: Graph's ``{"error": {code, message, innerError}}`` and the identity platform's AADSTS.

The request ids of the current request live in a context variable set by the app's outer
middleware, so every error body (including fault responses rendered by
:class:`~emulators.common.faults.FaultMiddleware`) carries the same ``request-id`` as the headers.
"""

from __future__ import annotations

import contextvars
import datetime as dt
import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import JSONResponse as _StarletteJSONResponse

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def dumps(content: Any) -> bytes:
    """JSON as Graph writes it: UTF-8, with a lone surrogate (text Graph can hold, e.g. a name cut
    in the middle of a pair) written as its ``\\uXXXX`` escape instead of failing to encode."""
    text = json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return _LONE_SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text).encode("utf-8")


class RawJSON:
    """JSON text :func:`dumps` wrote, for a :class:`JSONResponse` to send as it is."""

    __slots__ = ("text",)

    def __init__(self, text: bytes) -> None:
        self.text = text


RENDERED_JSON = "graph.rendered_json"
"""Scope key a ``$batch`` item sets: the :class:`JSONResponse` answering it stores there the body it sends
when :func:`dumps` wrote it, so the batch can embed that text instead of parsing it back."""


class JSONResponse(_StarletteJSONResponse):
    """Every JSON answer of the Graph emulator (API, ``$batch`` and admin): :func:`dumps`."""

    _rendered: bytes | None = None

    def render(self, content: Any) -> bytes:
        self._rendered = content.text if isinstance(content, RawJSON) else dumps(content)
        return self._rendered

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if RENDERED_JSON in scope and self.body is self._rendered:
            scope[RENDERED_JSON] = self.body
        await super().__call__(scope, receive, send)


JSON_MEDIA_TYPE = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"


@dataclass
class RequestContext:
    request_id: str
    client_request_id: str
    path: str


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("graph_request", default=None)


def set_context(ctx: RequestContext) -> contextvars.Token[RequestContext | None]:
    return _current.set(ctx)


def reset_context(token: contextvars.Token[RequestContext | None]) -> None:
    _current.reset(token)


def current_context() -> RequestContext:
    ctx = _current.get()
    if ctx is None:
        rid = str(uuid.uuid4())
        return RequestContext(rid, rid, "")
    return ctx


def _now_graph() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")


@dataclass
class GraphError(Exception):
    """An error Graph answers with its standard envelope."""

    status: int
    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)
    inner: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        ctx = current_context()
        inner = {"date": _now_graph(), "request-id": ctx.request_id, "client-request-id": ctx.client_request_id,
                 **self.inner}
        return {"error": {"code": self.code, "message": self.message, "innerError": inner}}


def bad_request(message: str, code: str = "BadRequest") -> GraphError:
    return GraphError(400, code, message)


def unsupported_query(message: str) -> GraphError:
    return GraphError(400, "Request_UnsupportedQuery", message)


def not_found(resource: str) -> GraphError:
    return GraphError(404, "Request_ResourceNotFound",
                      f"Resource '{resource}' does not exist or one of its queried reference-property "
                      "objects are not present.")


def unauthenticated(message: str) -> GraphError:
    return GraphError(401, "InvalidAuthenticationToken", message, headers={
        "WWW-Authenticate": 'Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/'
                            'oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000"'})


def sync_state_not_found() -> GraphError:
    return GraphError(400, "syncStateNotFound", "The sync state generation is not found. The delta token is "
                                                "expired and data must be synchronized again.")


# ------------------------------------------------------------------ identity platform

AADSTS_ERROR_URI = "https://login.microsoftonline.com/error?code={code}"


@dataclass
class IdentityError(Exception):
    """An OAuth2 error from the token endpoint, with an AADSTS code."""

    status: int
    error: str
    aadsts: int
    description: str
    headers: dict[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        ctx = current_context()
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        return {
            "error": self.error,
            "error_description": f"AADSTS{self.aadsts}: {self.description}\r\nTrace ID: {ctx.request_id}"
                                 f"\r\nCorrelation ID: {ctx.client_request_id}\r\nTimestamp: {now}",
            "error_codes": [self.aadsts],
            "timestamp": now,
            "trace_id": ctx.request_id,
            "correlation_id": ctx.client_request_id,
            "error_uri": AADSTS_ERROR_URI.format(code=self.aadsts),
        }


# ------------------------------------------------------------------ fault rendering

_GRAPH_FAULTS: dict[int, tuple[str, str]] = {
    400: ("BadRequest", "Bad request."),
    401: ("InvalidAuthenticationToken", "Access token has expired or is not yet valid."),
    403: ("Authorization_RequestDenied", "Insufficient privileges to complete the operation."),
    404: ("Request_ResourceNotFound", "The requested resource does not exist."),
    409: ("Conflict", "Conflict."),
    429: ("TooManyRequests", "Please retry again later."),
    500: ("generalException", "General exception while processing."),
    502: ("badGateway", "Bad gateway."),
    503: ("serviceNotAvailable", "Service unavailable."),
    504: ("gatewayTimeout", "The gateway did not receive a response in time."),
}
_IDENTITY_FAULTS: dict[int, tuple[str, int, str]] = {
    429: ("temporarily_unavailable", 90055, "TenantThrottlingError: There are too many incoming requests. "
                                            "This exception is thrown for blocked tenants."),
    500: ("server_error", 90033, "A transient error has occurred. Please try again."),
    503: ("temporarily_unavailable", 90033, "A transient error has occurred. Please try again."),
}


def is_identity_path(path: str) -> bool:
    """Token and discovery endpoints (``/{tenant}/oauth2/...``, ``/{tenant}/v2.0/...``, ``/common/...``)."""
    parts = [p for p in path.split("/") if p]
    return bool(parts) and parts[0] not in ("v1.0", "beta", "_emulator")


def render_fault(status: int, reason: str) -> tuple[dict[str, Any], dict[str, str]]:
    """:data:`~emulators.common.faults.ErrorRenderer` for Graph and the identity platform."""
    ctx = current_context()
    if is_identity_path(ctx.path):
        error, code, text = _IDENTITY_FAULTS.get(status, ("invalid_request", 90000 + status % 100,
                                                          f"Emulated fault ({reason})."))
        return IdentityError(status, error, code, text).body(), {}
    code, message = _GRAPH_FAULTS.get(status, ("UnknownError", f"Emulated fault ({reason})."))
    inner: dict[str, Any] = {}
    if status == 429:
        inner = {"code": "429", "message": "Please retry after", "status": "429"}
    body = GraphError(status, code, message, inner=inner).body()
    headers = unauthenticated("").headers if status == 401 else {}
    return body, headers
