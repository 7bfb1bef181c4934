"""Outlook routes under ``/v1.0/users/{id|upn}/``: contacts, contact folders, calendarView, events,
mailbox settings, and their delta forms (translation only; state lives in :mod:`emulators.graph.mailbox`).

Every call holds one of the mailbox's 4 concurrency slots while it runs (``$batch`` items reserve
theirs up front); without a free slot the answer is 429 with ``Retry-After``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, urlencode

from fastapi import APIRouter, Depends, Request

from emulators.graph import calendar as cal
from emulators.graph import errors, urls
from emulators.graph.errors import JSONResponse
from emulators.graph.mailbox import (
    CONTACT_PROPERTIES,
    EVENT_PROPERTIES,
    BadSyncToken,
    ItemNotFound,
    Mailbox,
    MailboxNotEnabled,
    SyncStateGone,
    UnknownUser,
    render_contact,
    render_instance,
)
from emulators.graph.routes import graph_json, require_token

if TYPE_CHECKING:
    from emulators.graph.mailbox import DeltaPage
    from emulators.graph.state import TenantBackend

DEFAULT_PAGE = 10
MAX_PAGE = 1000
THROTTLE_CODE = "ApplicationThrottled"
THROTTLE_MESSAGE = "Application is over its MailboxConcurrency limit."
"""Graph's answer to a fifth concurrent request on one mailbox (as observed in the wild, e.g.
magodo/terraform-provider-outlook#21, alcionai/corso#3695)."""

router = APIRouter(dependencies=[Depends(require_token)])


def _backend(request: Request) -> TenantBackend:
    return request.app.state.backend


def _base(request: Request) -> str:
    return urls.base(request)


# ------------------------------------------------------------------ errors

def mailbox_not_enabled() -> errors.GraphError:
    return errors.GraphError(404, "MailboxNotEnabledForRESTAPI",
                             "The mailbox is either inactive, soft-deleted, or is hosted on-premise.")


def item_not_found() -> errors.GraphError:
    return errors.GraphError(404, "ErrorItemNotFound", "The specified object was not found in the store.")


def too_many_requests() -> errors.GraphError:
    return errors.GraphError(429, THROTTLE_CODE, THROTTLE_MESSAGE, headers={"Retry-After": "1"})


def invalid_parameter(message: str) -> errors.GraphError:
    return errors.GraphError(400, "ErrorInvalidParameter", message)


def _sync_gone(exc: SyncStateGone) -> errors.GraphError:
    return errors.GraphError(410, "SyncStateNotFound", f"The sync state generation is not found; "
                             f"generation={exc.generation};[highest={exc.highest}][{exc.highest}].")


def _bad_token() -> errors.GraphError:
    return errors.GraphError(400, "ErrorInvalidSyncStateData", "The sync state data is corrupt or otherwise invalid.")


# ------------------------------------------------------------------ request helpers

def resolve(request: Request, key: str) -> Mailbox:
    """The mailbox of ``key`` (id or UPN). :raises errors.GraphError: 404 for unknown users and no mailbox."""
    try:
        return _backend(request).mailbox_for(key)
    except UnknownUser:
        raise errors.GraphError(404, "ErrorInvalidUser", f"The requested user '{key}' is invalid.") from None
    except MailboxNotEnabled:
        raise mailbox_not_enabled() from None


@contextlib.contextmanager
def mailbox_slot(request: Request, mbx: Mailbox) -> Iterator[None]:
    """Hold a concurrency slot of ``mbx`` for the request (``$batch`` items arrive with one reserved)."""
    state = request.scope.get("state", {})
    reserved = state.get("mailbox_slot")
    if reserved == "held":
        yield
        return
    if reserved == "rejected":
        raise too_many_requests()
    tracker = _backend(request).mailboxes.concurrency
    if not tracker.try_acquire(mbx.user_id):
        raise too_many_requests()
    try:
        yield
    finally:
        tracker.release(mbx.user_id)


def _prefer(request: Request) -> dict[str, str]:
    """``Prefer`` preferences by lower-case name (values unquoted)."""
    out: dict[str, str] = {}
    for header in request.headers.getlist("prefer"):
        for part in header.split(","):
            name, _, value = part.strip().partition("=")
            if name:
                out[name.strip().lower()] = value.strip().strip('"')
    return out


class Preferences:
    """The Outlook preferences of one request and the ``Preference-Applied`` header they yield."""

    def __init__(self, request: Request, *, timezone: bool = False) -> None:
        prefs = _prefer(request)
        applied: list[str] = []
        self.immutable = prefs.get("idtype", "").lower() == "immutableid"
        if self.immutable:
            applied.append('IdType="ImmutableId"')
        self.page_size: int | None = None
        raw = prefs.get("odata.maxpagesize")
        if raw is not None:
            try:
                self.page_size = max(1, min(MAX_PAGE, int(raw)))
                applied.append(f"odata.maxpagesize={self.page_size}")
            except ValueError:
                self.page_size = None
        self.zone: str | None = None
        if timezone and prefs.get("outlook.timezone"):
            try:
                cal.zone(prefs["outlook.timezone"])
                self.zone = prefs["outlook.timezone"]
                applied.append(f'outlook.timezone="{self.zone}"')
            except cal.TimeZoneError:
                self.zone = None
        self.headers = {"Preference-Applied": ", ".join(applied)} if applied else None


def _options(request: Request, allowed: set[str]) -> dict[str, str]:
    opts: dict[str, str] = {}
    # what request.query_params.multi_items() holds, without building its multi-dict per request
    for name, value in parse_qsl(request.scope["query_string"].decode("latin-1"), keep_blank_values=True):
        low = name.lower()
        if not low.startswith("$"):
            continue
        if low not in allowed:
            raise errors.GraphError(400, "ErrorInvalidUrlQuery",
                                    f"The query parameter '{name}' is invalid or not supported for this request.")
        opts[low] = value
    return opts


def _int(opts: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = opts.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise errors.bad_request(f"Invalid value '{raw}' for {name} query option found.") from None
    if not low <= value <= high:
        raise errors.GraphError(400, "ErrorInvalidUrlQuery", f"The value '{raw}' of {name} is out of range.")
    return value


def parse_select(raw: str | None, known: tuple[str, ...], type_name: str) -> list[str] | None:
    """``$select`` against ``known`` (case-insensitive). :raises errors.GraphError: 400 for unknown names."""
    if raw is None or not raw.strip():
        return None
    names: list[str] = []
    for part in raw.split(","):
        name = part.strip()
        if not name:
            continue
        match = next((p for p in known if p.lower() == name.lower()), None)
        if match is None:
            raise errors.GraphError(400, "RequestBroker--ParseUri",
                                    f"Could not find a property named '{name}' on type '{type_name}'.")
        if match not in names:
            names.append(match)
    return names


def project(item: dict[str, Any], select: list[str] | tuple[str, ...] | None) -> dict[str, Any]:
    if select is None:
        return item
    keep = {"@odata.etag", "@odata.type", "id", *select}
    return {k: v for k, v in item.items() if k in keep}


def _paged(request: Request, items: list[dict[str, Any]], opts: dict[str, str], context: str,
           prefs: Preferences) -> JSONResponse:
    top = _int(opts, "$top", prefs.page_size or DEFAULT_PAGE, 1, MAX_PAGE)
    skip = _int(opts, "$skip", 0, 0, 10**9)
    body: dict[str, Any] = {"@odata.context": context, "value": items[skip:skip + top]}
    if skip + top < len(items):
        params = [(k, v) for k, v in request.query_params.multi_items() if k.lower() not in ("$skip", "$top")]
        params += [("$top", str(top)), ("$skip", str(skip + top))]
        body["@odata.nextLink"] = (f"{_base(request)}{request.url.path}?"
                                   + urlencode(params, quote_via=quote, safe="$,'()=:@"))
    return graph_json(body, headers=prefs.headers)


def _context(request: Request, key: str, tail: str) -> str:
    return f"{_base(request)}/v1.0/$metadata#users('{quote(key, safe='@')}')/{tail}"


def _delta_body(request: Request, page: DeltaPage, context: str, render: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"@odata.context": context}
    link = f"{_base(request)}{request.url.path}?"
    if page.next_token is not None:
        body["@odata.nextLink"] = link + urlencode([("$skiptoken", page.next_token)])
    else:
        body["@odata.deltaLink"] = link + urlencode([("$deltatoken", page.delta_token or "")])
    body["value"] = [render(kind, payload) for kind, payload in page.entries]
    return body


# ------------------------------------------------------------------ contacts

_CONTACT_LIST_OPTIONS = {"$select", "$top", "$skip"}


def _contact_list(request: Request, key: str, folder_id: str | None) -> JSONResponse:
    mbx = resolve(request, key)
    with mailbox_slot(request, mbx):
        opts = _options(request, _CONTACT_LIST_OPTIONS)
        select = parse_select(opts.get("$select"), CONTACT_PROPERTIES, "Microsoft.OutlookServices.Contact")
        prefs = Preferences(request)
        store = _backend(request).mailboxes
        try:
            folder = store.folder(mbx, folder_id) if folder_id else store.folder(mbx, mbx.root_folder_id)
        except ItemNotFound:
            raise item_not_found() from None
        items = [render_contact(c, immutable=prefs.immutable, select=select) for c in store.contacts_in(mbx, folder.id)]
        tail = f"contactFolders('{folder.id}')/contacts" if folder_id else "contacts"
        return _paged(request, items, opts, _context(request, key, tail), prefs)


@router.get("/v1.0/users/{key}/contacts")
async def list_contacts(key: str, request: Request) -> JSONResponse:
    return _contact_list(request, key, None)


@router.get("/v1.0/users/{key}/contactFolders/{folder_id}/contacts")
async def list_folder_contacts(key: str, folder_id: str, request: Request) -> JSONResponse:
    return _contact_list(request, key, folder_id)


def _contacts_delta(request: Request, key: str, folder_id: str | None) -> JSONResponse:
    mbx = resolve(request, key)
    with mailbox_slot(request, mbx):
        opts = _options(request, {"$select", "$skiptoken", "$deltatoken"})
        select = parse_select(opts.get("$select"), CONTACT_PROPERTIES, "Microsoft.OutlookServices.Contact")
        prefs = Preferences(request)
        store = _backend(request).mailboxes
        try:
            folder = store.folder(mbx, folder_id or mbx.root_folder_id)
            page = store.contacts_delta(mbx, folder.id, skiptoken=opts.get("$skiptoken"),
                                        deltatoken=opts.get("$deltatoken"), select=select,
                                        limit=prefs.page_size or DEFAULT_PAGE)
        except ItemNotFound:
            raise item_not_found() from None
        except SyncStateGone as exc:
            raise _sync_gone(exc) from None
        except BadSyncToken:
            raise _bad_token() from None

        def render(kind: str, payload: Any) -> dict[str, Any]:
            if kind == "removed":
                immutable_id, rest_id = payload
                return {"@odata.type": "#microsoft.graph.contact", "id": immutable_id if prefs.immutable else rest_id,
                        "@removed": {"reason": "deleted"}}
            return render_contact(payload, immutable=prefs.immutable, select=page.select)

        tail = "contacts" if folder_id is None else f"contactFolders('{folder.id}')/contacts"
        suffix = f"({','.join(page.select)})" if page.select else ""
        body = _delta_body(request, page, _context(request, key, tail) + suffix + "/delta", render)
        return graph_json(body, headers=prefs.headers)


def delta_routes(prefix: str) -> list[str]:
    """Every spelling Graph accepts for a bound ``delta`` function: ``delta``, ``delta()``,
    ``microsoft.graph.delta`` and ``microsoft.graph.delta()`` (msgraph-sdk emits ``delta()``)."""
    return [f"{prefix}/{name}" for name in ("delta", "delta()", "microsoft.graph.delta", "microsoft.graph.delta()")]


def _route_all(paths: list[str]) -> Any:
    def wrap(func: Any) -> Any:
        for path in reversed(paths):
            func = router.get(path)(func)
        return func
    return wrap


@_route_all(delta_routes("/v1.0/users/{key}/contacts"))
async def contacts_delta(key: str, request: Request) -> JSONResponse:
    """Not documented for v1.0 (contact delta is documented per folder): answered as Graph answers a
    segment it does not serve, after the mailbox checks."""
    resolve(request, key)
    raise errors.bad_request("Resource not found for the segment 'delta'.")


@_route_all(delta_routes("/v1.0/users/{key}/contactFolders/{folder_id}/contacts"))
async def folder_contacts_delta(key: str, folder_id: str, request: Request) -> JSONResponse:
    return _contacts_delta(request, key, folder_id)


@router.get("/v1.0/users/{key}/contacts/{contact_id}")
@router.get("/v1.0/users/{key}/contactFolders/{folder_id}/contacts/{contact_id}")
async def get_contact(key: str, contact_id: str, request: Request, folder_id: str | None = None) -> JSONResponse:
    mbx = resolve(request, key)
    with mailbox_slot(request, mbx):
        opts = _options(request, {"$select"})
        select = parse_select(opts.get("$select"), CONTACT_PROPERTIES, "Microsoft.OutlookServices.Contact")
        prefs = Preferences(request)
        try:
            contact = _backend(request).mailboxes.find_contact(mbx, contact_id)
        except ItemNotFound:
            raise item_not_found() from None
        if not prefs.immutable and contact_id != contact.rest_id:
            raise item_not_found()
        body = {"@odata.context": _context(request, key, "contacts/$entity"),
                **render_contact(contact, immutable=prefs.immutable, select=select)}
        return graph_json(body, headers=prefs.headers)


@router.get("/v1.0/users/{key}/contactFolders")
async def list_contact_folders(key: str, request: Request) -> JSONResponse:
    mbx = resolve(request, key)
    with mailbox_slot(request, mbx):
        opts = _options(request, {"$select", "$top", "$skip"})
        select = parse_select(opts.get("$select"), ("id", "displayName", "parentFolderId"),
                              "Microsoft.OutlookServices.ContactFolder")
        items = [project(f, select) for f in _backend(request).mailboxes.child_folders(mbx)]
        return _paged(request, items, opts, _context(request, key, "contactFolders"), Preferences(request))


@router.get("/v1.0/users/{key}/contactFolders/{folder_id}")
async def get_contact_folder(key: str, folder_id: str, request: Request) -> JSONResponse:
    mbx = resolve(request, key)
    with mailbox_slot(request, mbx):
        try:
            folder = _backend(request).mailboxes.folder(mbx, folder_id)
        except ItemNotFound:
            raise item_not_found() from None
        return graph_json({"@odata.context": _context(request, key, "contactFolders/$entity"), **folder.public()})


# ------------------------------------------------------------------ calendar

def _window(request: Request, *, required: bool = True) -> tuple[dt.datetime, dt.datetime] | None:
    params = {k.lower(): v for k, v in request.query_params.items()}
    raw_start, raw_end = params.get("startdatetime"), params.get("enddatetime")
    if raw_start is None or raw_end is None:
        if not required and raw_start is None and raw_end is None:
            return None
        raise invalid_parameter("This request requires a time window specified by the query string parameters "
                                "StartDateTime and EndDateTime.")
    bounds = []
    for name, raw in (("StartDateTime", raw_start), ("EndDateTime", raw_end)):
        try:
            bounds.append(cal.parse_query_datetime(raw))
        except ValueError:
            raise invalid_parameter(f"The value '{raw}' of parameter '{name}' is invalid.") from None
    if bounds[1] < bounds[0]:
        raise invalid_parameter("The parameter 'EndDateTime' must be later than 'StartDateTime'.")
    return bounds[0], bounds[1]


@router.get("/v1.0/users/{key}/calendarView")
@router.get("/v1.0/users/{key}/calendar/calendarView")
async def calendar_view(key: str, request: Request) -> JSONResponse:
    mbx = resolve(request, key)
    with mailbox_slot(request, mbx):
        opts = _options(request, {"$select", "$top", "$skip"})
        window = _window(request)
        assert window is not None
        select = parse_select(opts.get("$select"), EVENT_PROPERTIES, "Microsoft.OutlookServices.Event")
        prefs = Preferences(request, timezone=True)
        instances = _backend(request).mailboxes.instances(mbx, *window)
        items = [project(render_instance(i, prefs.zone), select) for i in instances]
        return _paged(request, items, opts, _context(request, key, "calendarView"), prefs)


@_route_all(delta_routes("/v1.0/users/{key}/calendarView"))
async def calendar_view_delta(key: str, request: Request) -> JSONResponse:
    mbx = resolve(request, key)
    with mailbox_slot(request, mbx):
        opts = _options(request, {"$skiptoken", "$deltatoken"})
        tokens = "$skiptoken" in opts or "$deltatoken" in opts
        window = _window(request, required=not tokens)
        prefs = Preferences(request, timezone=True)
        try:
            page = _backend(request).mailboxes.events_delta(
                mbx, window=window, skiptoken=opts.get("$skiptoken"), deltatoken=opts.get("$deltatoken"),
                limit=prefs.page_size or DEFAULT_PAGE)
        except SyncStateGone as exc:
            raise _sync_gone(exc) from None
        except BadSyncToken:
            raise _bad_token() from None

        def render(kind: str, payload: Any) -> dict[str, Any]:
            if kind == "removed":
                return {"@odata.type": "#microsoft.graph.event", "id": payload[0], "@removed": {"reason": "deleted"}}
            return {"@odata.type": "#microsoft.graph.event", **render_instance(payload, prefs.zone)}

        body = _delta_body(request, page, f"{_base(request)}/v1.0/$metadata#Collection(event)", render)
        return graph_json(body, headers=prefs.headers)


@router.get("/v1.0/users/{key}/events")
@router.get("/v1.0/users/{key}/calendar/events")
async def list_events(key: str, request: Request) -> JSONResponse:
    mbx = resolve(request, key)
    with mailbox_slot(request, mbx):
        opts = _options(request, {"$select", "$top", "$skip"})
        select = parse_select(opts.get("$select"), EVENT_PROPERTIES, "Microsoft.OutlookServices.Event")
        store = _backend(request).mailboxes
        items = [project(store.render_event_master(e), select)
                 for e in sorted(mbx.events.values(), key=lambda e: e.seq)]
        return _paged(request, items, opts, _context(request, key, "events"), Preferences(request))


# ------------------------------------------------------------------ mailbox settings

@router.get("/v1.0/users/{key}/mailboxSettings")
async def mailbox_settings(key: str, request: Request) -> JSONResponse:
    mbx = resolve(request, key)
    with mailbox_slot(request, mbx):
        opts = _options(request, {"$select"})
        settings = _backend(request).mailboxes.settings(mbx)
        select = parse_select(opts.get("$select"), tuple(settings), "Microsoft.OutlookServices.MailboxSettings")
        if select is not None:
            settings = {k: v for k, v in settings.items() if k in select}
        return graph_json({"@odata.context": _context(request, key, "mailboxSettings"), **settings})


@router.get("/v1.0/users/{key}/mailboxSettings/automaticRepliesSetting")
async def automatic_replies(key: str, request: Request) -> JSONResponse:
    mbx = resolve(request, key)
    with mailbox_slot(request, mbx):
        _options(request, set())
        setting = _backend(request).mailboxes.automatic_replies(mbx)
        context = _context(request, key, "mailboxSettings/automaticRepliesSetting")
        return graph_json({"@odata.context": context, **setting})


@router.get("/v1.0/users/{key}/mailboxSettings/{rest:path}")
@router.api_route("/v1.0/users/{key}/contacts/{rest:path}", methods=["GET", "POST", "PATCH", "DELETE"])
@router.api_route("/v1.0/users/{key}/contactFolders/{rest:path}", methods=["GET", "POST", "PATCH", "DELETE"])
@router.api_route("/v1.0/users/{key}/calendarView/{rest:path}", methods=["GET"])
@router.api_route("/v1.0/users/{key}/events/{rest:path}", methods=["GET", "POST", "PATCH", "DELETE"])
def other_mailbox_path(key: str, rest: str, request: Request) -> JSONResponse:
    """Anything else on a mailbox: 404 for mailbox-less users first, then an unsupported segment."""
    resolve(request, key)
    raise errors.bad_request(f"Resource not found for the segment '{rest.split('/')[-1]}'.")
