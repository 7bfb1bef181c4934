"""Assemble the Graph + identity emulator as one ASGI app.

Layers, outermost first: :class:`RequestIdMiddleware` (``request-id`` / ``client-request-id``
headers and the error context), :class:`~emulators.common.faults.FaultMiddleware` (counters and
faults), then FastAPI with the identity, Graph and admin routers. ``$batch`` items run through the same
two layers over :class:`~emulators.graph.inner.InnerApp`, which answers as the FastAPI app does.
"""

from __future__ import annotations

import itertools
import random
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from emulators.common.faults import FaultMiddleware, FaultPlan, RequestCounters
from emulators.graph import (
    admin,
    batch,
    errors,
    identity,
    mailbox_admin,
    mailbox_routes,
    orgcontacts_routes,
    presence_routes,
    routes,
    subscription_admin,
    subscription_routes,
)
from emulators.graph.errors import JSONResponse
from emulators.graph.inner import InnerApp
from emulators.graph.state import TenantBackend

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_ID_PARENTS = frozenset({"users", "groups", "members", "transitiveMembers", "contacts", "contactFolders",
                         "childFolders", "events", "calendars", "messages", "mailFolders", "subscriptions"})


def route_key(method: str, path: str) -> str:
    """Counter key with ids normalised: ``GET /v1.0/users/{id}``, ``POST /{tenant}/oauth2/v2.0/token``."""
    parts = [p for p in path.split("/") if p]
    if not parts:
        return f"{method} /"
    if parts[0] not in ("v1.0", "beta"):
        if parts[0] != "common" or parts[1:2] != ["discovery"]:
            parts[0] = "{tenant}"
        return f"{method} /" + "/".join(parts)
    out = [parts[0]]
    for prev, part in itertools.pairwise(parts):
        keyword = part in ("delta", "delta()", "$count") or part.startswith(("microsoft.graph.", "$"))
        out.append("{id}" if (prev in _ID_PARENTS and not keyword) or _GUID.match(part) else part)
    return f"{method} /" + "/".join(out)


_ids = random.Random()


def _request_id() -> str:
    """A random version-4 UUID, as Graph's ``request-id`` (a request id is no secret: a seeded-per-process
    generator spares the ``os.urandom`` call of :func:`uuid.uuid4` on every request and ``$batch`` item)."""
    return str(uuid.UUID(int=_ids.getrandbits(128), version=4))


class RequestIdMiddleware:
    """Give every response ``request-id`` and ``client-request-id`` (the client's, echoed) headers."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id()
        client_request_id = request_id
        for name, value in scope.get("headers", []):
            if name.lower() == b"client-request-id":
                client_request_id = value.decode("latin-1")[:200]
        token = errors.set_context(errors.RequestContext(request_id, client_request_id, scope["path"]))

        async def send_with_ids(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"request-id", request_id.encode()),
                            (b"client-request-id", client_request_id.encode("latin-1"))]
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_ids)
        finally:
            errors.reset_context(token)


def _install_handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.GraphError)
    async def graph_error(_: Request, exc: errors.GraphError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers,
                            media_type=errors.JSON_MEDIA_TYPE)

    @app.exception_handler(errors.IdentityError)
    async def identity_error(_: Request, exc: errors.IdentityError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if request.url.path.startswith("/_emulator"):
            return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)
        code = {404: "Request_ResourceNotFound", 405: "Request_BadRequest"}.get(exc.status_code, "BadRequest")
        err = errors.GraphError(exc.status_code, code, str(exc.detail))
        return JSONResponse(err.body(), status_code=exc.status_code, media_type=errors.JSON_MEDIA_TYPE)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        err = errors.bad_request("Invalid request.")
        return JSONResponse(err.body(), status_code=400, media_type=errors.JSON_MEDIA_TYPE)


def create_app(backend: TenantBackend, *, faults: FaultPlan | None = None,
               counters: RequestCounters | None = None) -> Any:
    """The emulator as an ASGI app.

    :param backend: the tenant state.
    :param faults: fault rules (a fresh seeded plan when omitted).
    :param counters: request counters (fresh when omitted).
    :return: the ASGI app; ``app.fastapi.state`` holds ``backend``, ``faults`` and ``counters``.
    """
    api = FastAPI(title="Microsoft Graph emulator", docs_url=None, redoc_url=None, openapi_url=None)
    api.state.backend = backend
    api.state.faults = faults or FaultPlan(seed=backend.seed)
    api.state.counters = counters or RequestCounters()
    _install_handlers(api)
    # Routes are matched in order, so the hot ones come first: identity, then Graph ($batch and the
    # mailbox routes ahead of the rest), then the ``/_emulator`` admin API, which no Graph path reaches.
    api.include_router(identity.router)
    api.include_router(batch.router)
    api.include_router(mailbox_routes.router)
    api.include_router(subscription_routes.router)
    api.include_router(presence_routes.router)
    api.include_router(orgcontacts_routes.router)
    api.include_router(routes.router)
    api.include_router(admin.router)
    api.include_router(mailbox_admin.router)
    api.include_router(subscription_admin.router)
    api.include_router(presence_routes.admin_router)
    api.include_router(orgcontacts_routes.admin_router)
    def stack(app: Any) -> RequestIdMiddleware:
        return RequestIdMiddleware(FaultMiddleware(
            app, plan=api.state.faults, counters=api.state.counters, route_key=route_key,
            render_error=errors.render_fault,
        ))

    wrapped = stack(api)
    wrapped.fastapi = api  # type: ignore[attr-defined]
    # $batch replays inner requests through the same request ids, counters and faults, over InnerApp
    api.state.asgi = stack(InnerApp(api))
    return wrapped
