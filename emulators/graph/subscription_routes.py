"""Graph v1.0 ``/subscriptions`` routes (translation only; the logic is :mod:`emulators.graph.subscriptions`).

Docs: api/subscription-post-subscriptions, api/subscription-list, api/subscription-get,
api/subscription-update, api/subscription-delete, api/subscription-reauthorize.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, Request, Response

from emulators.graph import errors
from emulators.graph.errors import JSONResponse
from emulators.graph.routes import graph_json, require_token
from emulators.graph.subscriptions import SubscriptionError, UnknownSubscription

if TYPE_CHECKING:
    from emulators.graph.subscriptions import SubscriptionHub

router = APIRouter(dependencies=[Depends(require_token)])


def _hub(request: Request) -> SubscriptionHub:
    return request.app.state.backend.subscriptions


def _context(request: Request, entity: bool) -> str:
    base = str(request.base_url).rstrip("/")
    return f"{base}/v1.0/$metadata#subscriptions" + ("/$entity" if entity else "")


async def _body(request: Request) -> Any:
    import json

    raw = await request.body()
    try:
        return json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise errors.bad_request("Invalid request.") from None


def _graph_error(exc: SubscriptionError) -> errors.GraphError:
    return errors.GraphError(exc.status, exc.code, exc.message)


def _not_found(sub_id: str) -> errors.GraphError:
    return errors.GraphError(404, "ResourceNotFound", f"The object was not found. Subscription '{sub_id}' "
                                                      "does not exist or has expired.")


def _immutable_ids(request: Request) -> bool:
    """``Prefer: IdType="ImmutableId"`` at creation: Outlook notifications then carry immutable ids."""
    return any('idtype="immutableid"' in h.lower().replace(" ", "") for h in request.headers.getlist("prefer"))


@router.post("/v1.0/subscriptions")
async def create_subscription(request: Request) -> JSONResponse:
    import starlette.concurrency

    body = await _body(request)
    immutable = _immutable_ids(request)
    hub = _hub(request)
    try:  # the handshake blocks up to 10 s: keep it off the event loop
        sub = await starlette.concurrency.run_in_threadpool(hub.create, body, immutable_ids=immutable)
    except SubscriptionError as exc:
        raise _graph_error(exc) from None
    return graph_json({"@odata.context": _context(request, True), **sub}, status=201)


@router.get("/v1.0/subscriptions")
def list_subscriptions(request: Request) -> JSONResponse:
    return graph_json({"@odata.context": _context(request, False), "value": _hub(request).list()})


@contextlib.contextmanager
def _graph_errors(sub_id: str) -> Iterator[None]:
    """The hub's errors as Graph answers them: 404 for an unknown subscription, else its Graph error."""
    try:
        yield
    except UnknownSubscription:
        raise _not_found(sub_id) from None
    except SubscriptionError as exc:
        raise _graph_error(exc) from None


@router.get("/v1.0/subscriptions/{sub_id}")
def get_subscription(sub_id: str, request: Request) -> JSONResponse:
    with _graph_errors(sub_id):
        sub = _hub(request).get(sub_id)
    return graph_json({"@odata.context": _context(request, True), **sub})


@router.patch("/v1.0/subscriptions/{sub_id}")
async def update_subscription(sub_id: str, request: Request) -> JSONResponse:
    import starlette.concurrency

    body = await _body(request)
    with _graph_errors(sub_id):
        sub = await starlette.concurrency.run_in_threadpool(_hub(request).update, sub_id, body)
    return graph_json({"@odata.context": _context(request, True), **sub})


@router.delete("/v1.0/subscriptions/{sub_id}")
def delete_subscription(sub_id: str, request: Request) -> Response:
    with _graph_errors(sub_id):
        _hub(request).delete(sub_id)
    return Response(status_code=204)


@router.post("/v1.0/subscriptions/{sub_id}/reauthorize")
def reauthorize_subscription(sub_id: str, request: Request) -> Response:
    with _graph_errors(sub_id):
        _hub(request).reauthorize(sub_id)
    return Response(status_code=204)
