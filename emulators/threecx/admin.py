"""``/_emulator``: control and inspection for tests (state, reset, console edits, faults, counters).

Admin calls are neither counted nor faulted. They answer plain JSON; errors use the same
OData envelope as the XAPI.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from emulators.common.faults import FaultPlan, RequestCounters
from emulators.threecx.errors import BadRequest
from emulators.threecx.routes import _json_body
from emulators.threecx.state import PbxBackend

PREFIX = "/_emulator"
_WRITE_METHODS = ("POST ", "PATCH ", "PUT ", "DELETE ")


def counters_view(counters: RequestCounters) -> dict[str, Any]:
    """The counter snapshot plus ``writes``: POST/PATCH/PUT/DELETE requests received on ``/xapi``."""
    snap = counters.snapshot()
    snap["writes"] = sum(n for key, n in snap["requests"].items()
                         if key.startswith(_WRITE_METHODS) and " /xapi/" in key)
    return snap


def build_admin_router(backend: PbxBackend, plan: FaultPlan, counters: RequestCounters) -> APIRouter:
    router = APIRouter(prefix=PREFIX)

    @router.get("/state")
    async def state() -> JSONResponse:
        return JSONResponse(backend.snapshot())

    @router.post("/reset")
    async def reset(request: Request) -> JSONResponse:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object.")
        backend.reset(seed=body.get("seed"), unmanaged=body.get("unmanaged"))
        plan.clear(seed=backend.seed)
        counters.reset()
        return JSONResponse({"reset": True, "seed": backend.seed, "unmanaged": backend.unmanaged})

    @router.post("/users")
    async def create_user(request: Request) -> JSONResponse:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object.")
        protected = bool(body.pop("Protected", False))
        return JSONResponse(backend.create_user(body, admin=True, protected=protected), status_code=201)

    @router.patch("/users/{user_id}")
    async def update_user(request: Request, user_id: int) -> JSONResponse:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object.")
        protected = body.pop("Protected", None)
        backend.update_user(user_id, body, admin=True)
        if protected is not None:
            backend.set_protected(user_id, bool(protected))
        return JSONResponse(backend.get_user(user_id))

    @router.delete("/users/{user_id}")
    async def delete_user(user_id: int) -> Response:
        backend.set_protected(user_id, False)
        backend.delete_user(user_id)
        return Response(status_code=204)

    @router.post("/contacts")
    async def create_contact(request: Request) -> JSONResponse:
        return JSONResponse(backend.create_contact(await _json_body(request)), status_code=201)

    @router.patch("/contacts/{contact_id}")
    async def update_contact(request: Request, contact_id: int) -> JSONResponse:
        return JSONResponse(backend.update_contact(contact_id, await _json_body(request)))

    @router.delete("/contacts/{contact_id}")
    async def delete_contact(contact_id: int) -> Response:
        backend.delete_contact(contact_id)
        return Response(status_code=204)

    @router.get("/faults")
    async def list_faults() -> JSONResponse:
        return JSONResponse({"faults": plan.rules()})

    @router.post("/faults")
    async def add_fault(request: Request) -> JSONResponse:
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object.")
        try:
            rule = plan.add(**body)
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"Invalid fault rule: {exc}") from None
        return JSONResponse(rule.public(), status_code=201)

    @router.delete("/faults")
    async def clear_faults() -> Response:
        plan.clear()
        return Response(status_code=204)

    @router.post("/tokens/revoke")
    async def revoke_tokens() -> JSONResponse:
        return JSONResponse({"revoked": backend.revoke_all_tokens()})

    @router.get("/counters")
    async def get_counters() -> JSONResponse:
        return JSONResponse(counters_view(counters))

    @router.delete("/counters")
    async def reset_counters() -> Response:
        counters.reset()
        return Response(status_code=204)

    @router.get("/routes")
    async def get_routes() -> JSONResponse:
        """Every route key served since the last ``DELETE /routes`` (survives counter resets)."""
        return JSONResponse({"routes": counters.routes()})

    @router.delete("/routes")
    async def reset_routes() -> Response:
        counters.reset_routes()
        return Response(status_code=204)

    return router
