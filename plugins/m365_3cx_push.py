"""Airflow api-server plugin: the receiver of Microsoft Graph change notifications.

Mounted at ``/m365-3cx-graph``: ``POST /notifications`` (the subscriptions' ``notificationUrl``)
and ``POST /lifecycle`` (their ``lifecycleNotificationUrl``). Unlike the ops console these routes
are anonymous on purpose: Graph sends no Airflow credential. Each post is authenticated instead
by the ``clientState`` of the subscription it names (see :mod:`m365_3cx.push.receiver`); a
validation request (``?validationToken=``) is answered with the token as ``text/plain``.
Accepted notifications are queued in staging (``push_queue``) and answered 202 at once; the
``m365_3cx_push`` DAG, woken by its AssetWatcher, does the work.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

URL_PREFIX = "/m365-3cx-graph"
MAX_BODY_BYTES = 1_000_000
_ENGINE_TTL = 300.0
_engine_lock = threading.Lock()
_engine_state: dict[str, Any] = {"engine": None, "at": 0.0}


def _engine() -> Any:
    """One staging engine per process, re-read every five minutes (schema ensured on creation)."""
    with _engine_lock:
        engine = _engine_state["engine"]
        if engine is None or time.monotonic() - _engine_state["at"] > _ENGINE_TTL:
            from m365_3cx.airflow.hooks import StagingHook

            if engine is not None:
                engine.dispose()
            engine = StagingHook().get_engine()
            _engine_state.update(engine=engine, at=time.monotonic())
        return engine


def _handle(accept: Callable[[Any, Any, dt.datetime], Any], body: Any) -> Any:
    with _engine().begin() as conn:
        return accept(conn, body, dt.datetime.now(dt.UTC))


async def _receive(request: Request, accept: Callable[[Any, Any, dt.datetime], Any]) -> Response:
    from m365_3cx.push.receiver import validation_token

    if "validationToken" in request.query_params:
        token = validation_token(request.query_params.get("validationToken"))
        if token is None:
            return PlainTextResponse("invalid validationToken", status_code=400)
        return PlainTextResponse(token, status_code=200)
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        return JSONResponse({"status": "bad_request", "detail": "body too large"}, status_code=413)
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    verdict = await run_in_threadpool(_handle, accept, body)
    return JSONResponse(verdict.as_json(), status_code=verdict.status)


def create_app() -> FastAPI:
    """The receiver app (anonymous; every post authenticates itself by clientState)."""
    from m365_3cx.push.receiver import accept_lifecycle, accept_notifications

    app = FastAPI(title="m365-3cx-sync Graph change-notification receiver", docs_url=None, redoc_url=None,
                  openapi_url=None)

    @app.post("/notifications")
    async def notifications(request: Request) -> Response:
        return await _receive(request, accept_notifications)

    @app.post("/lifecycle")
    async def lifecycle(request: Request) -> Response:
        return await _receive(request, accept_lifecycle)

    return app


class M365ThreeCXPushPlugin(AirflowPlugin):
    """Registers the Graph change-notification receiver."""

    name = "m365_3cx_push"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "M365 -> 3CX Graph notification receiver"}]
