"""Change-notification control API under ``/_emulator/subscriptions``: listing with delivery stats,
the delivery log, delivery faults, hold/flush, lifecycle events, expiry, settings and outgoing trust.

Not authenticated, not counted, never faulted. Errors are ``{"error": "<text>"}`` with 400/404.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request

from emulators.graph.errors import JSONResponse
from emulators.graph.mailbox_admin import _object
from emulators.graph.subscriptions import DeliveryFaults, UnknownSubscription

if TYPE_CHECKING:
    from emulators.graph.subscriptions import SubscriptionHub

router = APIRouter(prefix="/_emulator/subscriptions")


def _hub(request: Request) -> SubscriptionHub:
    return request.app.state.backend.subscriptions


def _guard(func: Any) -> Any:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await func(*args, **kwargs)
        except UnknownSubscription as exc:
            return JSONResponse({"error": f"not found: subscription {exc.args[0]}"}, status_code=404)
        except (ValueError, TypeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    return wrapper


@router.get("")
async def list_subscriptions(request: Request) -> JSONResponse:
    return JSONResponse(_hub(request).snapshot())


@router.delete("")
async def clear(request: Request) -> JSONResponse:
    _hub(request).clear()
    return JSONResponse({"ok": True})


@router.get("/log")
@_guard
async def delivery_log(request: Request) -> JSONResponse:
    since = int(request.query_params.get("since", "0"))
    return JSONResponse({"entries": _hub(request).log(since)})


@router.delete("/log")
async def clear_log(request: Request) -> JSONResponse:
    _hub(request).clear_log()
    return JSONResponse({"ok": True})


@router.put("/faults")
@_guard
async def set_faults(request: Request) -> JSONResponse:
    faults = DeliveryFaults.parse(await _object(request))
    _hub(request).set_faults(faults)
    return JSONResponse(_hub(request).snapshot()["faults"])


@router.get("/faults")
async def get_faults(request: Request) -> JSONResponse:
    return JSONResponse(_hub(request).snapshot()["faults"])


@router.delete("/faults")
async def clear_faults(request: Request) -> JSONResponse:
    _hub(request).set_faults(DeliveryFaults())
    return JSONResponse({"ok": True})


@router.put("/config")
@_guard
async def configure(request: Request) -> JSONResponse:
    hub = _hub(request)
    hub.config.update(await _object(request))
    return JSONResponse(hub.snapshot()["config"])


@router.post("/pause")
async def pause(request: Request) -> JSONResponse:
    _hub(request).pause()
    return JSONResponse({"ok": True, "paused": True})


@router.post("/resume")
async def resume(request: Request) -> JSONResponse:
    _hub(request).resume()
    return JSONResponse({"ok": True, "paused": False})


@router.post("/drain")
@_guard
async def drain(request: Request) -> JSONResponse:
    import starlette.concurrency

    body = await _object(request)
    done = await starlette.concurrency.run_in_threadpool(_hub(request).drain, float(body.get("timeout", 10)))
    return JSONResponse({"ok": done})


@router.post("/trust")
@_guard
async def trust(request: Request) -> JSONResponse:
    body = await _object(request)
    _hub(request).trust(pem=body.get("pem"), path=body.get("path"))
    return JSONResponse({"ok": True})


@router.put("/permissions")
@_guard
async def set_permissions(request: Request) -> JSONResponse:
    granted = (await _object(request)).get("granted")
    if not isinstance(granted, list):
        raise ValueError('body must be {"granted": [permission names]}')
    blocked = _hub(request).set_granted(granted)
    return JSONResponse({"granted": sorted(_hub(request).granted), "blocked": blocked})


@router.post("/{sub_id}/lifecycle")
@_guard
async def lifecycle(sub_id: str, request: Request) -> JSONResponse:
    body = await _object(request)
    return JSONResponse(_hub(request).fire_lifecycle(sub_id, str(body.get("event")),
                                                     block=bool(body.get("block", False))))


@router.post("/{sub_id}/expire")
@_guard
async def expire(sub_id: str, request: Request) -> JSONResponse:
    _hub(request).expire_now(sub_id)
    return JSONResponse({"ok": True, "id": sub_id})
