"""Control API under ``/_emulator``: state, mutations that feed delta, faults, counters, tokens.

Not authenticated, not counted and never faulted. Errors are ``{"error": "<text>"}``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request

from emulators.graph.errors import JSONResponse
from emulators.graph.state import Conflict, NotFound

if TYPE_CHECKING:
    from emulators.common.faults import FaultPlan, RequestCounters
    from emulators.graph.state import TenantBackend

router = APIRouter(prefix="/_emulator")


def _backend(request: Request) -> TenantBackend:
    return request.app.state.backend


def _faults(request: Request) -> FaultPlan:
    return request.app.state.faults


def _counters(request: Request) -> RequestCounters:
    return request.app.state.counters


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _json(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return {}
    return await request.json()


def _guard(func: Any) -> Any:
    """Map backend exceptions to admin errors (404 / 409 / 400)."""
    import functools

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await func(*args, **kwargs)
        except NotFound as exc:
            return _error(404, f"not found: {exc.args[0]}")
        except Conflict as exc:
            return _error(409, str(exc))
        except (ValueError, TypeError) as exc:
            return _error(400, str(exc))

    return wrapper


@router.get("/state")
async def state(request: Request) -> JSONResponse:
    backend = _backend(request)
    return JSONResponse({**backend.snapshot(), "client_id": backend.app.client_id,
                         "delta_token_max_age": backend.delta_token_max_age})


@router.post("/reset")
@_guard
async def reset(request: Request) -> JSONResponse:
    body = await _json(request)
    backend = _backend(request)
    backend.reset(seed=body.get("seed"), users=body.get("users"))
    if body.get("faults", True):
        _faults(request).clear()
    if body.get("counters", True):
        _counters(request).reset()
    return JSONResponse({"ok": True, "generation": backend.generation, "users": backend.user_count})


@router.post("/users", status_code=201)
@_guard
async def create_user(request: Request) -> JSONResponse:
    return JSONResponse(_backend(request).create_user(await _json(request)), status_code=201)


@router.patch("/users/{user_id}")
@_guard
async def update_user(user_id: str, request: Request) -> JSONResponse:
    return JSONResponse(_backend(request).update_user(user_id, await _json(request)))


@router.delete("/users/{user_id}")
@_guard
async def delete_user(user_id: str, request: Request) -> JSONResponse:
    hard = request.query_params.get("hard", "false").lower() in ("1", "true", "yes")
    _backend(request).delete_user(user_id, hard=hard)
    return JSONResponse({"ok": True, "id": user_id, "hard": hard})


@router.post("/users/{user_id}/restore")
@_guard
async def restore_user(user_id: str, request: Request) -> JSONResponse:
    return JSONResponse(_backend(request).restore_user(user_id))


@router.post("/users/{user_id}/disable")
@_guard
async def disable_user(user_id: str, request: Request) -> JSONResponse:
    return JSONResponse(_backend(request).set_enabled(user_id, False))


@router.post("/users/{user_id}/enable")
@_guard
async def enable_user(user_id: str, request: Request) -> JSONResponse:
    return JSONResponse(_backend(request).set_enabled(user_id, True))


@router.put("/groups/{group_id}/members")
@_guard
async def set_members(group_id: str, request: Request) -> JSONResponse:
    body = await _json(request)
    members = body.get("members") if isinstance(body, dict) else body
    if not isinstance(members, list):
        raise ValueError("body must be a list of ids or {\"members\": [ids]}")
    return JSONResponse(_backend(request).set_group_members(group_id, [str(m) for m in members]))


@router.post("/faults", status_code=201)
@_guard
async def add_fault(request: Request) -> JSONResponse:
    body = await _json(request)
    if not isinstance(body, dict):
        raise ValueError("body must be a FaultRule object")
    return JSONResponse(_faults(request).add(**body).public(), status_code=201)


@router.get("/faults")
async def list_faults(request: Request) -> JSONResponse:
    return JSONResponse({"faults": _faults(request).rules()})


@router.delete("/faults")
async def clear_faults(request: Request) -> JSONResponse:
    _faults(request).clear()
    return JSONResponse({"ok": True})


@router.post("/delta/expire")
async def expire_delta(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True, "expired": _backend(request).expire_delta_tokens()})


@router.get("/counters")
async def counters(request: Request) -> JSONResponse:
    return JSONResponse(_counters(request).snapshot())


@router.delete("/counters")
async def reset_counters(request: Request) -> JSONResponse:
    _counters(request).reset()
    return JSONResponse({"ok": True})


@router.get("/routes")
async def routes(request: Request) -> JSONResponse:
    """Every route key served since the last ``DELETE /routes`` (survives counter resets)."""
    return JSONResponse({"routes": _counters(request).routes()})


@router.delete("/routes")
async def reset_routes(request: Request) -> JSONResponse:
    _counters(request).reset_routes()
    return JSONResponse({"ok": True})


@router.get("/permissions")
async def permissions(request: Request) -> JSONResponse:
    return JSONResponse({"granted": sorted(_backend(request).granted)})


@router.put("/permissions")
@_guard
async def set_permissions(request: Request) -> JSONResponse:
    """``{"granted": [...]}``: the application permissions the app holds (default: all it needs)."""
    body = await _json(request)
    granted = body.get("granted") if isinstance(body, dict) else None
    if not isinstance(granted, list):
        raise ValueError('body must be {"granted": [permission names]}')
    return JSONResponse({"granted": _backend(request).set_permissions([str(g) for g in granted])})


@router.post("/tokens/revoke")
async def revoke_tokens(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True, "revoked": _backend(request).tokens.revoke()})
