"""Assemble the ASGI app: XAPI routes + admin routes + error rendering, wrapped in faults."""

from __future__ import annotations

from typing import Any

from emulators.common.faults import FaultMiddleware, FaultPlan, RequestCounters
from emulators.threecx.errors import XapiError, odata_error, render_fault
from emulators.threecx.state import PbxBackend, PbxConfig


def create_app(backend: PbxBackend, *, plan: FaultPlan | None = None,
               counters: RequestCounters | None = None) -> Any:
    """The emulator as an ASGI app (``FaultMiddleware`` around a FastAPI app).

    :param backend: the PBX state it serves.
    :param plan: fault rules (a new seeded plan when ``None``).
    :param counters: request counters (new when ``None``).
    """
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException

    from emulators.threecx.admin import PREFIX, build_admin_router
    from emulators.threecx.errors import TokenError
    from emulators.threecx.routes import Unauthorized, build_router, odata_json, route_key

    plan = plan or FaultPlan(seed=backend.seed)
    counters = counters or RequestCounters()
    api = FastAPI(title="3CX XAPI emulator", docs_url=None, redoc_url=None, openapi_url=None)
    api.include_router(build_router(backend))
    api.include_router(build_admin_router(backend, plan, counters))

    @api.exception_handler(XapiError)
    async def _xapi_error(_request: Request, exc: XapiError) -> JSONResponse:
        return odata_json(exc.body(), status=exc.status)

    @api.exception_handler(TokenError)
    async def _token_error(_request: Request, exc: TokenError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @api.exception_handler(Unauthorized)
    async def _unauthorized(_request: Request, _exc: Unauthorized) -> Response:
        return Response(status_code=401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})

    @api.exception_handler(HTTPException)
    async def _http_error(_request: Request, exc: HTTPException) -> JSONResponse:
        return odata_json(odata_error(str(exc.detail)), status=exc.status_code)

    @api.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return odata_json(odata_error(f"Invalid request: {exc.errors()[0].get('msg', '')}"), status=400)

    app = FaultMiddleware(api, plan=plan, counters=counters, route_key=route_key,
                          render_error=render_fault, admin_prefix=PREFIX)
    app.backend = backend  # type: ignore[attr-defined]
    return app


def build(*, seed: int = 7, unmanaged: bool = True, client_id: str = "m365sync",
          client_secret: str | None = None, token_lifetime: int = 3600, **opts: Any) -> tuple[Any, PbxBackend]:
    """A backend from the ``start()``/CLI arguments and the app serving it.

    :raises TypeError: for an unknown option in ``opts``.
    """
    backend = PbxBackend(seed=seed, unmanaged=unmanaged, client_id=client_id, client_secret=client_secret,
                         token_lifetime=token_lifetime, config=PbxConfig(**opts))
    return create_app(backend), backend
