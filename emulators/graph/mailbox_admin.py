"""Mailbox control API under ``/_emulator``: inspect and edit contacts, events, automatic replies;
expire Outlook delta tokens; read and reset the per-mailbox concurrency peaks.

Not authenticated, not counted, never faulted. Errors are ``{"error": "<text>"}`` with 400/404.
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request

from emulators.graph.calendar import TimeZoneError
from emulators.graph.errors import JSONResponse
from emulators.graph.mailbox import ItemNotFound, MailboxNotEnabled, UnknownUser, render_contact

if TYPE_CHECKING:
    from emulators.graph.mailbox import Mailbox, MailboxStore
    from emulators.graph.state import TenantBackend

router = APIRouter(prefix="/_emulator")


def _backend(request: Request) -> TenantBackend:
    return request.app.state.backend


def _store(request: Request) -> MailboxStore:
    return _backend(request).mailboxes


def _mailbox(request: Request, user_id: str) -> Mailbox:
    return _backend(request).mailbox_for(user_id)


async def _json(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return {}
    return await request.json()


async def _object(request: Request) -> dict[str, Any]:
    body = await _json(request)
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


def _guard(func: Any) -> Any:
    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await func(*args, **kwargs)
        except UnknownUser as exc:
            return JSONResponse({"error": f"not found: user {exc.args[0]}"}, status_code=404)
        except MailboxNotEnabled as exc:
            return JSONResponse({"error": f"user {exc.args[0]} has no mailbox"}, status_code=404)
        except ItemNotFound as exc:
            return JSONResponse({"error": f"not found: {exc.args[0]}"}, status_code=404)
        except (ValueError, TypeError, KeyError, TimeZoneError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    return wrapper


@router.get("/users/{user_id}/mailbox")
@_guard
async def get_mailbox(user_id: str, request: Request) -> JSONResponse:
    return JSONResponse(_store(request).dump(_mailbox(request, user_id)))


@router.post("/users/{user_id}/contacts", status_code=201)
@_guard
async def create_contact(user_id: str, request: Request) -> JSONResponse:
    body = await _object(request)
    folder = body.pop("folder", None)
    contact = _store(request).create_contact(_mailbox(request, user_id), body, folder)
    return JSONResponse({**render_contact(contact, immutable=True), "restId": contact.rest_id}, status_code=201)


@router.patch("/users/{user_id}/contacts/{contact_id}")
@_guard
async def update_contact(user_id: str, contact_id: str, request: Request) -> JSONResponse:
    contact = _store(request).update_contact(_mailbox(request, user_id), contact_id, await _object(request))
    return JSONResponse({**render_contact(contact, immutable=True), "restId": contact.rest_id})


@router.delete("/users/{user_id}/contacts/{contact_id}")
@_guard
async def delete_contact(user_id: str, contact_id: str, request: Request) -> JSONResponse:
    _store(request).delete_contact(_mailbox(request, user_id), contact_id)
    return JSONResponse({"ok": True, "id": contact_id})


@router.post("/users/{user_id}/contacts/{contact_id}/move")
@_guard
async def move_contact(user_id: str, contact_id: str, request: Request) -> JSONResponse:
    body = await _object(request)
    contact = _store(request).move_contact(_mailbox(request, user_id), contact_id, body.get("folder"))
    return JSONResponse({**render_contact(contact, immutable=True), "restId": contact.rest_id})


@router.post("/users/{user_id}/events", status_code=201)
@_guard
async def create_event(user_id: str, request: Request) -> JSONResponse:
    store = _store(request)
    event = store.create_event(_mailbox(request, user_id), await _object(request))
    return JSONResponse(store.render_event_master(event), status_code=201)


@router.patch("/users/{user_id}/events/{event_id}")
@_guard
async def update_event(user_id: str, event_id: str, request: Request) -> JSONResponse:
    return JSONResponse(_store(request).update_event(_mailbox(request, user_id), event_id, await _object(request)))


@router.delete("/users/{user_id}/events/{event_id}")
@_guard
async def delete_event(user_id: str, event_id: str, request: Request) -> JSONResponse:
    _store(request).delete_event(_mailbox(request, user_id), event_id)
    return JSONResponse({"ok": True, "id": event_id})


@router.post("/users/{user_id}/events/{series_id}/cancel-occurrence")
@_guard
async def cancel_occurrence(user_id: str, series_id: str, request: Request) -> JSONResponse:
    body = await _object(request)
    day = dt.date.fromisoformat(str(body.get("date")))
    return JSONResponse(_store(request).cancel_occurrence(_mailbox(request, user_id), series_id, day))


@router.put("/users/{user_id}/automaticReplies")
@_guard
async def set_automatic_replies(user_id: str, request: Request) -> JSONResponse:
    return JSONResponse(_store(request).set_automatic_replies(_mailbox(request, user_id), await _object(request)))


@router.post("/mailbox/expire")
@_guard
async def expire(request: Request) -> JSONResponse:
    body = await _object(request)
    kind = body.get("kind")
    if kind not in (None, "contacts", "events"):
        raise ValueError("kind must be 'contacts', 'events' or null")
    user_id = body.get("user_id")
    if user_id is not None:
        user_id = _mailbox(request, str(user_id)).user_id
    dropped = _store(request).expire(user_id, kind, body.get("folder"))
    return JSONResponse({"ok": True, "expired": dropped})


@router.get("/mailbox/concurrency")
async def concurrency(request: Request) -> JSONResponse:
    return JSONResponse(_store(request).concurrency.snapshot())


@router.delete("/mailbox/concurrency")
async def reset_concurrency(request: Request) -> JSONResponse:
    _store(request).concurrency.reset()
    return JSONResponse({"ok": True})
