"""``POST /v1.0/communications/getPresencesByUserId`` and its control API (translation only).

Graph: body ``{"ids": [...]}`` (1..650 strings, else 400 ``BadRequest``); the app needs
``Presence.Read.All`` (else 403 ``Forbidden``); over 1,500 requests in 30 s -> 429
``TooManyRequests`` with ``Retry-After``. Ids that are no (live) user of the tenant are left out
of the answer (Microsoft does not document this case). Control API (not authenticated, never
faulted): ``PUT /_emulator/users/{id}/presence``, ``GET|PUT /_emulator/presence/limits``.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request

from emulators.graph import errors
from emulators.graph.errors import JSONResponse
from emulators.graph.presence import MAX_IDS, Throttled
from emulators.graph.routes import graph_json, require_token
from emulators.graph.state import NotFound

if TYPE_CHECKING:
    from emulators.graph.state import TenantBackend

PERMISSION = "Presence.Read.All"

router = APIRouter(dependencies=[Depends(require_token)])
admin_router = APIRouter(prefix="/_emulator")


def _backend(request: Request) -> TenantBackend:
    return request.app.state.backend


async def _ids(request: Request) -> list[str]:
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        raise errors.bad_request("Unable to read JSON request payload.") from None
    ids = body.get("ids") if isinstance(body, dict) else None
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) and i for i in ids):
        raise errors.bad_request("The request body must contain 'ids', a non-empty collection of user ids.")
    if len(ids) > MAX_IDS:
        raise errors.bad_request(f"The number of ids ({len(ids)}) exceeds the maximum of {MAX_IDS} per request.")
    return ids


@router.post("/v1.0/communications/getPresencesByUserId")
async def get_presences_by_user_id(request: Request) -> JSONResponse:
    backend = _backend(request)
    if not backend.has_permission(PERMISSION):
        raise errors.GraphError(403, "Forbidden", f"Insufficient privileges: the application lacks {PERMISSION}.")
    ids = await _ids(request)
    try:
        backend.presence.count_request()
    except Throttled as exc:
        raise errors.GraphError(429, "TooManyRequests", "Too many requests. Please retry after the time given.",
                                headers={"Retry-After": str(exc.args[0])}) from None
    live = backend.live_user_ids(ids)
    value = [backend.presence.render(uid) for uid in dict.fromkeys(ids) if uid in live]
    return graph_json({"@odata.context": f"{str(request.base_url).rstrip('/')}/v1.0/$metadata"
                                         "#Collection(microsoft.graph.presence)", "value": value})


async def _object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    body = json.loads(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


@admin_router.put("/users/{user_id}/presence")
async def set_presence(user_id: str, request: Request) -> JSONResponse:
    backend = _backend(request)
    try:
        body = await _object(request)
        uid = backend.get_user(user_id)["id"]
        return JSONResponse(backend.presence.set(uid, str(body.get("availability")), str(body.get("activity"))))
    except NotFound:
        return JSONResponse({"error": f"not found: user {user_id}"}, status_code=404)
    except ValueError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)


@admin_router.get("/presence/limits")
async def presence_limits(request: Request) -> JSONResponse:
    return JSONResponse(_backend(request).presence.stats())


@admin_router.put("/presence/limits")
async def set_presence_limits(request: Request) -> JSONResponse:
    """``{"requests": N, "window_seconds": S}``: the rate limit (default 1,500 per 30 s)."""
    try:
        body = await _object(request)
        _backend(request).presence.set_limits(int(body.get("requests", 0)), float(body.get("window_seconds", 30)))
    except (ValueError, TypeError) as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return JSONResponse(_backend(request).presence.stats())
