"""``POST /v1.0/$batch``: JSON batching over the emulator's own ASGI stack.

Each inner request is replayed in-process through the app's request ids, counters and fault plan
over :class:`~emulators.graph.inner.InnerApp` (routing, bearer check, the route), carrying the
batch's ``Authorization`` header, so it is counted under its own route key as well as
``POST /v1.0/$batch``. An inner JSON body is embedded in the batch answer as the text it was sent
as, not parsed and written again. Items without ``dependsOn`` run
concurrently; with ``dependsOn`` they run in dependency order and an item whose dependency failed
answers 424. Items addressed to the same mailbox reserve that mailbox's 4 concurrency slots up
front: the excess items of a wave answer 429 with ``Retry-After: 1``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from fastapi import APIRouter, Depends, Request

from emulators.graph import errors
from emulators.graph.errors import JSONResponse
from emulators.graph.mailbox import MailboxError
from emulators.graph.routes import require_token

if TYPE_CHECKING:
    from emulators.graph.state import TenantBackend

MAX_REQUESTS = 20
MAILBOX_SEGMENTS = frozenset({"contacts", "contactFolders", "calendarView", "calendar", "events", "mailboxSettings",
                              "calendars", "messages", "mailFolders"})
_KEEP_HEADERS = {"content-type": "Content-Type", "retry-after": "Retry-After", "location": "Location",
                 "preference-applied": "Preference-Applied", "www-authenticate": "WWW-Authenticate",
                 "odata-version": "OData-Version", "cache-control": "Cache-Control"}

router = APIRouter(dependencies=[Depends(require_token)])


def _invalid(message: str = "Invalid batch payload format.") -> errors.GraphError:
    return errors.bad_request(message)


def _validate(body: Any) -> list[dict[str, Any]]:
    """The request list. :raises errors.GraphError: 400 for a malformed batch or more than 20 items."""
    if not isinstance(body, dict) or not isinstance(body.get("requests"), list) or not body["requests"]:
        raise _invalid()
    items = body["requests"]
    if len(items) > MAX_REQUESTS:
        raise _invalid(f"Number of batch request steps exceeds the maximum value of {MAX_REQUESTS}.")
    ids: set[str] = set()  # case-folded: Graph's request ids are not case-sensitive, and must be unique
    for item in items:
        if not isinstance(item, dict) or not all(isinstance(item.get(k), str) and item.get(k)
                                                 for k in ("id", "method", "url")):
            raise _invalid("Each batch request needs a string 'id', 'method' and 'url'.")
        if item["id"].casefold() in ids:
            raise _invalid(f"Batch request id '{item['id']}' is not unique.")
        ids.add(item["id"].casefold())
        if item["method"].upper() not in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            raise _invalid(f"Invalid HTTP method '{item['method']}'.")
        if item["url"].lower().startswith(("http://", "https://")):
            raise _invalid("Batch request urls must be relative.")
        if "headers" in item and not isinstance(item["headers"], dict):
            raise _invalid("'headers' must be an object.")
        depends = item.get("dependsOn", [])
        if not isinstance(depends, list) or not all(isinstance(d, str) for d in depends):
            raise _invalid("'dependsOn' must be a list of request ids.")
    canonical = {i["id"].casefold(): i["id"] for i in items}
    for item in items:
        depends = item.get("dependsOn", [])
        unknown = [d for d in depends if d.casefold() not in ids or d.casefold() == item["id"].casefold()]
        if unknown:
            raise _invalid(f"Request '{item['id']}' depends on an unknown request '{unknown[0]}'.")
        if depends:
            item["dependsOn"] = [canonical[d.casefold()] for d in depends]
    return items


def _mailbox_key(url: str) -> str | None:
    parts = [p for p in url.split("?", 1)[0].split("/") if p]
    if parts[:1] == ["v1.0"]:
        parts = parts[1:]
    if len(parts) >= 3 and parts[0] == "users" and parts[2] in MAILBOX_SEGMENTS:
        return unquote(parts[1])
    return None


async def _dispatch(app: Callable[..., Awaitable[None]], outer: Request, item: dict[str, Any],
                    slot: str | None) -> dict[str, Any]:
    """Run one inner request through ``app``; return its batch response entry."""
    url = item["url"].lstrip("/")
    if url.startswith("v1.0/"):
        url = url[len("v1.0/"):]
    path, _, query = url.partition("?")
    raw_path = "/v1.0/" + path
    headers: list[tuple[bytes, bytes]] = [(b"host", outer.headers.get("host", "localhost").encode())]
    auth = outer.headers.get("authorization")
    if auth:
        headers.append((b"authorization", auth.encode("latin-1")))
    for name, value in (item.get("headers") or {}).items():
        headers.append((str(name).lower().encode("latin-1"), str(value).encode("latin-1")))
    payload = b""
    if "body" in item and item["body"] is not None:
        payload = item["body"].encode() if isinstance(item["body"], str) else json.dumps(item["body"]).encode()
        if not any(h[0] == b"content-type" for h in headers):
            headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(payload)).encode()))
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": item["method"].upper(),
        "scheme": outer.url.scheme, "path": unquote(raw_path), "raw_path": raw_path.encode(),
        "query_string": query.encode(), "root_path": "", "headers": headers,
        "client": outer.scope.get("client"), "server": outer.scope.get("server"),
        "state": {"mailbox_slot": slot} if slot else {}, errors.RENDERED_JSON: None,
    }
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": payload, "more_body": False}

    status = 500
    out_headers: dict[str, str] = {}
    chunks: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            for name, value in message.get("headers", []):
                canonical = _KEEP_HEADERS.get(name.decode("latin-1").lower())
                if canonical:
                    out_headers[canonical] = value.decode("latin-1")
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    try:
        await app(scope, receive, send)
    except (ConnectionError, OSError):
        status = 504
        out_headers = {"Content-Type": "application/json"}
        chunks = [json.dumps(errors.GraphError(504, "gatewayTimeout", "The gateway did not receive a response "
                                                                    "in time.").body()).encode()]
    entry: dict[str, Any] = {"id": item["id"], "status": status, "headers": out_headers}
    raw = b"".join(chunks)
    if raw and raw == scope[errors.RENDERED_JSON] and b"\\ud" not in raw:
        # dumps() wrote it, so it reads back to a value dumps() writes the same way: embed it as it is
        # (unless it escapes surrogates, whose pairs would read back as one character)
        entry["body"] = errors.RawJSON(raw)
    elif raw:
        try:
            entry["body"] = json.loads(raw)
        except ValueError:
            entry["body"] = raw.decode("utf-8", "replace")
    return entry


def _failed_dependency(item: dict[str, Any], failed: str) -> dict[str, Any]:
    body = errors.GraphError(424, "FailedDependency", f"Dependency '{failed}' of request '{item['id']}' failed.")
    return {"id": item["id"], "status": 424, "headers": {"Content-Type": "application/json"}, "body": body.body()}


def _reserve(backend: TenantBackend, wave: list[dict[str, Any]]) -> dict[str, tuple[str, str] | None]:
    """Per item id: ``(slot state, user id)`` for mailbox items (``held`` or ``rejected``), else ``None``."""
    out: dict[str, tuple[str, str] | None] = {}
    for item in wave:
        key = _mailbox_key(item["url"])
        out[item["id"]] = None
        if key is None:
            continue
        try:
            user_id = backend.mailbox_for(key).user_id
        except MailboxError:
            continue
        held = backend.mailboxes.concurrency.try_acquire(user_id)
        out[item["id"]] = ("held" if held else "rejected", user_id)
    return out


async def _run_wave(request: Request, wave: list[dict[str, Any]]) -> list[dict[str, Any]]:
    backend: TenantBackend = request.app.state.backend
    app = request.app.state.asgi
    slots = _reserve(backend, wave)
    try:
        return list(await asyncio.gather(*(_dispatch(app, request, item, (slots[item["id"]] or (None, ""))[0])
                                           for item in wave)))
    finally:
        for reserved in slots.values():
            if reserved is not None and reserved[0] == "held":
                backend.mailboxes.concurrency.release(reserved[1])


@router.post("/v1.0/$batch")
async def batch(request: Request) -> JSONResponse:
    try:
        body = json.loads(await request.body() or b"null")
    except ValueError:
        raise _invalid() from None
    items = _validate(body)
    results: dict[str, dict[str, Any]] = {}
    pending = list(items)
    while pending:
        ready = [i for i in pending if all(d in results for d in i.get("dependsOn", []))]
        if not ready:
            raise _invalid("The dependsOn graph has a cycle.")
        runnable = []
        for item in ready:
            failed = next((d for d in item.get("dependsOn", []) if results[d]["status"] >= 400), None)
            if failed is not None:
                results[item["id"]] = _failed_dependency(item, failed)
            else:
                runnable.append(item)
        for entry in await _run_wave(request, runnable):
            results[entry["id"]] = entry
        pending = [i for i in pending if i["id"] not in results]
    return JSONResponse(errors.RawJSON(_render([results[i["id"]] for i in items])), media_type=errors.JSON_MEDIA_TYPE)


def _render(entries: list[dict[str, Any]]) -> bytes:
    """``{"responses": entries}`` as :func:`errors.dumps` writes it, with the inner bodies that are already
    JSON text (:class:`errors.RawJSON`, always an entry's last key) embedded as they are."""
    parts: list[bytes] = []
    for entry in entries:
        body = entry.get("body")
        if isinstance(body, errors.RawJSON):
            head = errors.dumps({k: v for k, v in entry.items() if k != "body"})
            parts.append(head[:-1] + b',"body":' + body.text + b"}")
        else:
            parts.append(errors.dumps(entry))
    return b'{"responses":[' + b",".join(parts) + b"]}"
