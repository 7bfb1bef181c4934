"""``/v1.0/contacts`` (organisational contacts): list, get, delta; and their control API.

Translation only; the store is :mod:`emulators.graph.orgcontacts`. Every Graph route needs
``OrgContact.Read.All`` (else 403 ``Authorization_RequestDenied``). ``$select`` names unknown
properties -> 400 ``Request_BadRequest``; ``$top`` 1..999 (default 100) with an opaque
``$skiptoken`` next link; delta pages follow ``Prefer: odata.maxpagesize`` (default 100) and end
with a ``@odata.deltaLink`` that remembers ``$select``; deleted contacts appear in a later round
as ``{"id", "@removed": {"reason": "deleted"}}``; a token of an earlier reset -> 400
``syncStateNotFound``. Control API (not authenticated): ``POST /_emulator/orgContacts``,
``PATCH|DELETE /_emulator/orgContacts/{id}``, ``GET /_emulator/orgContacts``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Request

from emulators.graph import errors
from emulators.graph.errors import JSONResponse
from emulators.graph.orgcontacts import DEFAULT_SELECT, NOT_IN_DELTA, PROPERTIES, UnknownContact
from emulators.graph.routes import _options, _page_size, _paged, graph_json, require_token

if TYPE_CHECKING:
    from emulators.graph.orgcontacts import OrgContactStore
    from emulators.graph.state import TenantBackend

PERMISSION = "OrgContact.Read.All"
DELTA_PAGE = 100

router = APIRouter(dependencies=[Depends(require_token)])
admin_router = APIRouter(prefix="/_emulator")


def _backend(request: Request) -> TenantBackend:
    return request.app.state.backend


def _store(request: Request) -> OrgContactStore:
    backend = _backend(request)
    if not backend.has_permission(PERMISSION):
        raise errors.GraphError(403, "Authorization_RequestDenied",
                                "Insufficient privileges to complete the operation.")
    return backend.org_contacts


def _select(raw: str | None) -> list[str]:
    if raw is None:
        return list(DEFAULT_SELECT)
    names: list[str] = ["id"]
    for name in (n.strip() for n in raw.split(",") if n.strip()):
        match = next((p for p in PROPERTIES if p.lower() == name.lower()), None)
        if match is None:
            raise errors.bad_request(f"Could not find a property named '{name}' on type 'microsoft.graph.orgContact'.",
                                     "Request_BadRequest")
        if match not in names:
            names.append(match)
    return names


def _project(props: dict[str, Any], select: list[str]) -> dict[str, Any]:
    return {name: props.get(name) for name in select}


def _context(request: Request, suffix: str) -> str:
    return f"{str(request.base_url).rstrip('/')}/v1.0/$metadata#{suffix}"


@router.get("/v1.0/contacts")
def list_org_contacts(request: Request) -> JSONResponse:
    store = _store(request)
    opts = _options(request, {"$select", "$top", "$skiptoken"})
    select = _select(opts.get("$select"))
    _page_size(opts)
    items = [_project(c, select) for c in store.list()]
    return _paged(request, items, opts, _context(request, "contacts"), False)


def _encode(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode(token: str, store: OrgContactStore) -> dict[str, Any]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if not isinstance(data, dict) or {"e", "s", "u", "o", "sel"} - set(data):
            raise ValueError(token)
    except (ValueError, binascii.Error):
        raise errors.bad_request("Badly formed token.", "Request_BadRequest") from None
    if data["e"] != store.epoch:
        raise errors.bad_request("Sync state not found: the delta token is no longer valid.", "syncStateNotFound")
    return data


def _page_limit(request: Request) -> int:
    for header in request.headers.getlist("prefer"):
        for part in header.split(","):
            name, _, value = part.strip().partition("=")
            if name.lower() == "odata.maxpagesize":
                try:
                    return max(1, min(999, int(value.strip().strip('"'))))
                except ValueError:
                    pass
    return DELTA_PAGE


@router.get("/v1.0/contacts/delta")
@router.get("/v1.0/contacts/delta()")
@router.get("/v1.0/contacts/microsoft.graph.delta")
@router.get("/v1.0/contacts/microsoft.graph.delta()")
def org_contacts_delta(request: Request) -> JSONResponse:
    store = _store(request)
    opts = _options(request, {"$select", "$skiptoken", "$deltatoken"})
    token = opts.get("$skiptoken") or opts.get("$deltatoken")
    if token is not None:
        state = _decode(token, store)
        if "$deltatoken" in opts:  # a new round from the link's generation up to now
            state = {**state, "s": state["u"], "u": store.generation, "o": 0}
    else:
        state = {"e": store.epoch, "s": 0, "u": store.generation, "o": 0,
                 "sel": [n for n in _select(opts.get("$select")) if n not in NOT_IN_DELTA]}
    changes = store.changes(int(state["s"]), int(state["u"]))
    size, offset = _page_limit(request), int(state["o"])
    page = changes[offset:offset + size]
    value = [{"id": props["id"], "@removed": {"reason": "deleted"}} if deleted else _project(props, state["sel"])
             for props, deleted in page]
    base = f"{str(request.base_url).rstrip('/')}{request.url.path}?"
    body: dict[str, Any] = {"@odata.context": _context(request, "contacts")}
    if offset + size < len(changes):
        body["@odata.nextLink"] = base + urlencode([("$skiptoken", _encode({**state, "o": offset + size}))],
                                                   quote_via=quote)
    else:
        body["@odata.deltaLink"] = base + urlencode([("$deltatoken", _encode({**state, "o": 0}))], quote_via=quote)
    body["value"] = value
    return graph_json(body)


@router.get("/v1.0/contacts/{contact_id}")
def get_org_contact(contact_id: str, request: Request) -> JSONResponse:
    store = _store(request)
    opts = _options(request, {"$select"})
    try:
        props = store.get(contact_id)
    except UnknownContact:
        raise errors.not_found(contact_id) from None
    return graph_json({"@odata.context": _context(request, "contacts/$entity"),
                       **_project(props, _select(opts.get("$select")))})


async def _object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    body = json.loads(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    return body


def _admin_error(exc: Exception) -> JSONResponse:
    if isinstance(exc, UnknownContact):
        return JSONResponse({"error": f"not found: orgContact {exc.args[0]}"}, status_code=404)
    return JSONResponse({"error": str(exc)}, status_code=400)


@admin_router.get("/orgContacts")
async def admin_list(request: Request) -> JSONResponse:
    return JSONResponse({"orgContacts": _backend(request).org_contacts.list()})


@admin_router.post("/orgContacts", status_code=201)
async def admin_create(request: Request) -> JSONResponse:
    try:
        return JSONResponse(_backend(request).org_contacts.create(await _object(request)), status_code=201)
    except ValueError as exc:
        return _admin_error(exc)


@admin_router.patch("/orgContacts/{contact_id}")
async def admin_update(contact_id: str, request: Request) -> JSONResponse:
    try:
        return JSONResponse(_backend(request).org_contacts.update(contact_id, await _object(request)))
    except (ValueError, UnknownContact) as exc:
        return _admin_error(exc)


@admin_router.delete("/orgContacts/{contact_id}")
async def admin_delete(contact_id: str, request: Request) -> JSONResponse:
    try:
        _backend(request).org_contacts.delete(contact_id)
    except UnknownContact as exc:
        return _admin_error(exc)
    return JSONResponse({"ok": True, "id": contact_id})
