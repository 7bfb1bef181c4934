"""Graph v1.0 routes: parse the request, call the backend, render Graph's JSON (translation only)."""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

from emulators.graph import errors, query, urls
from emulators.graph.errors import JSONResponse
from emulators.graph.mailbox import fresh
from emulators.graph.state import BadToken, DeltaCursor, NotFound, SyncStateNotFound

if TYPE_CHECKING:
    from emulators.graph.state import TenantBackend

DEFAULT_PAGE = 100
MAX_PAGE = 999
MAX_DELTA_IDS = 50


def _backend(request: Request) -> TenantBackend:
    return request.app.state.backend


async def require_token(request: Request) -> None:
    """Bearer token check for every Graph route: 401 ``InvalidAuthenticationToken`` otherwise."""
    backend = _backend(request)
    header = request.headers.get("authorization", "")
    token = header[7:].strip() if header[:7].lower() == "bearer " else ""
    if token and request.scope.get("state", {}).get("revoke_token"):
        backend.tokens.revoke(token)
    status = backend.tokens.check(token)
    if status == "empty":
        raise errors.unauthenticated("Access token is empty.")
    if status == "expired":
        raise errors.unauthenticated("Lifetime validation failed, the token is expired.")
    if status != "ok":
        raise errors.unauthenticated("Access token validation failure. Invalid audience.")


router = APIRouter(dependencies=[Depends(require_token)])


def graph_json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers, media_type=errors.JSON_MEDIA_TYPE)


def _base(request: Request) -> str:
    return urls.base(request)


def _options(request: Request, allowed: set[str]) -> dict[str, str]:
    """OData system query options (``$``-prefixed, case-insensitive names) of the request."""
    opts: dict[str, str] = {}
    for name, value in request.query_params.multi_items():
        low = name.lower()
        if not low.startswith("$"):
            continue
        if low == "$skip":
            raise errors.bad_request("'$skip' is not supported by the service.", "Request_BadRequest")
        if low not in allowed:
            raise errors.unsupported_query(f"The query option '{name}' is not supported for this request.")
        opts[low] = value
    return opts


def _page_size(opts: dict[str, str]) -> int:
    raw = opts.get("$top")
    if raw is None:
        return DEFAULT_PAGE
    try:
        top = int(raw)
    except ValueError:
        raise errors.bad_request(f"Invalid value '{raw}' for $top query option found.") from None
    if not 1 <= top <= MAX_PAGE:
        raise errors.unsupported_query(f"Invalid page size specified: '{top}'. Must be between 1 and "
                                       f"{MAX_PAGE} inclusive.")
    return top


def _count_requested(request: Request, opts: dict[str, str]) -> bool:
    raw = opts.get("$count")
    if raw is None or raw.lower() == "false":
        return False
    if raw.lower() != "true":
        raise errors.bad_request(f"Invalid value '{raw}' for $count query option found.")
    if request.headers.get("consistencylevel", "").lower() != "eventual":
        raise errors.unsupported_query("$count is not currently supported without the ConsistencyLevel: "
                                       "eventual header.")
    return True


def _select(opts: dict[str, str]) -> list[str] | None:
    try:
        return query.parse_select(opts.get("$select"))
    except query.QueryError as exc:
        raise errors.GraphError(400, exc.code, exc.message) from None


def _filter(opts: dict[str, str], advanced: bool) -> query.Filter | None:
    try:
        return query.parse_filter(opts.get("$filter"), advanced=advanced)
    except query.QueryError as exc:
        raise errors.GraphError(400, exc.code, exc.message) from None


def _encode_offset(offset: int) -> str:
    raw = json.dumps({"o": offset, "v": 1}, separators=(",", ":")).encode()
    return "RFNwdAIAAQAAA" + base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_offset(token: str) -> int:
    try:
        if not token.startswith("RFNwdAIAAQAAA"):
            raise ValueError(token)
        body = token[len("RFNwdAIAAQAAA"):]
        offset = int(json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))["o"])
        if offset < 0:
            raise ValueError(offset)
        return offset
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise errors.bad_request("Invalid $skiptoken.", "Request_BadRequest") from None


def _link(request: Request, extra: list[tuple[str, str]], *, keep_query: bool) -> str:
    params: list[tuple[str, str]] = []
    if keep_query:
        params = [(k, v) for k, v in request.query_params.multi_items()
                  if k.lower() not in ("$skiptoken", "$deltatoken")]
    params += extra
    return f"{_base(request)}{request.url.path}?" + urlencode(params, quote_via=quote, safe="$,'()=:@")


def _context(request: Request, entity: str, select: list[str] | None) -> str:
    suffix = f"({','.join(select)})" if select else ""
    return f"{_base(request)}/v1.0/$metadata#{entity}{suffix}"


def _paged(request: Request, items: list[dict[str, Any]], opts: dict[str, str], context: str,
           count: bool, *, total: int | None = None) -> JSONResponse:
    """One page of ``items``; with ``total``, ``items`` is already the page at the skiptoken's offset
    and ``total`` the size of the whole collection."""
    top = _page_size(opts)
    offset = _offset(opts)
    size = len(items) if total is None else total
    body: dict[str, Any] = {"@odata.context": context}
    if count and offset == 0:
        body["@odata.count"] = size
    if offset + top < size:
        body["@odata.nextLink"] = _link(request, [("$skiptoken", _encode_offset(offset + top))], keep_query=True)
    body["value"] = items[offset:offset + top] if total is None else items
    return graph_json(body)


def _offset(opts: dict[str, str]) -> int:
    return _decode_offset(opts["$skiptoken"]) if "$skiptoken" in opts else 0


# ------------------------------------------------------------------ /me

@router.api_route("/v1.0/me", methods=["GET", "POST", "PATCH", "DELETE"])
@router.api_route("/v1.0/me/{rest:path}", methods=["GET", "POST", "PATCH", "DELETE"])
def me(request: Request) -> JSONResponse:
    raise errors.bad_request("/me request is only valid with delegated authentication flow.")


# ------------------------------------------------------------------ users

_LIST_OPTIONS = {"$select", "$filter", "$top", "$count", "$skiptoken"}


@router.get("/v1.0/users")
def list_users(request: Request) -> JSONResponse:
    opts = _options(request, _LIST_OPTIONS)
    select = _select(opts)
    _page_size(opts)
    count = _count_requested(request, opts)
    flt = _filter(opts, advanced=count)
    # Only the page is rendered (a copy of the selected properties), not every user of the tenant.
    total, items = _backend(request).users_page(flt.predicate if flt else None, _offset(opts), _page_size(opts),
                                                lambda user: fresh(query.project(user, select)))
    return _paged(request, items, opts, _context(request, "users", select), count, total=total)


@router.get("/v1.0/users/$count")
def count_users(request: Request) -> PlainTextResponse:
    if request.headers.get("consistencylevel", "").lower() != "eventual":
        raise errors.bad_request("Count is not currently supported without the ConsistencyLevel: eventual "
                                 "header.", "Request_BadRequest")
    opts = _options(request, {"$filter"})
    flt = _filter(opts, advanced=True)
    return PlainTextResponse(str(len(_backend(request).list_users(flt.predicate if flt else None))))


def _prefer(request: Request) -> tuple[int | None, bool]:
    size: int | None = None
    minimal = False
    for header in request.headers.getlist("prefer"):
        for part in header.split(","):
            name, _, value = part.strip().partition("=")
            if name.lower() == "odata.maxpagesize":
                try:
                    size = max(1, min(MAX_PAGE, int(value.strip().strip('"'))))
                except ValueError:
                    continue
            elif name.lower() == "return" and value.strip().strip('"').lower() == "minimal":
                minimal = True
    return size, minimal


@router.get("/v1.0/users/delta")
@router.get("/v1.0/users/delta()")
@router.get("/v1.0/users/microsoft.graph.delta")
@router.get("/v1.0/users/microsoft.graph.delta()")
def users_delta(request: Request) -> JSONResponse:
    backend = _backend(request)
    opts = _options(request, {"$select", "$filter", "$skiptoken", "$deltatoken"})
    select = _select(opts)
    flt = _filter(opts, advanced=False)
    ids = None
    if flt is not None:
        if flt.ids is None:
            raise errors.unsupported_query("Only 'id eq' filters (joined with 'or') are supported on users delta.")
        if len(flt.ids) > MAX_DELTA_IDS:
            raise errors.unsupported_query(f"At most {MAX_DELTA_IDS} ids can be filtered on in a delta query.")
        ids = flt.ids
    size, minimal = _prefer(request)
    limit = size or DEFAULT_PAGE
    applied = [f"odata.maxpagesize={size}"] if size else []
    if minimal:
        applied.append("return=minimal")
    headers = {"Preference-Applied": ", ".join(applied)} if applied else None
    context = _context(request, "users", select)
    try:
        if opts.get("$deltatoken", "").lower() == "latest":
            cursor = backend.start_delta(select, ids, latest=True)
            return graph_json({"@odata.context": context, "@odata.deltaLink": _delta_link(request, cursor),
                               "value": []}, headers=headers)
        if "$deltatoken" in opts:
            cursor = backend.resume_delta(DeltaCursor.decode(opts["$deltatoken"]), is_delta_token=True)
        elif "$skiptoken" in opts:
            cursor = backend.resume_delta(DeltaCursor.decode(opts["$skiptoken"]), is_delta_token=False)
        else:
            cursor = backend.start_delta(select, ids)
    except SyncStateNotFound:
        raise errors.sync_state_not_found() from None
    except BadToken:
        raise errors.bad_request("Badly formed token.") from None
    page = backend.delta_page(cursor, limit, minimal=minimal)
    if cursor.select is not None:
        context = _context(request, "users", list(cursor.select))
    body: dict[str, Any] = {"@odata.context": context}
    if page.next_cursor is not None:
        body["@odata.nextLink"] = _link(request, [("$skiptoken", page.next_cursor.encode())], keep_query=False)
    else:
        assert page.delta_cursor is not None
        body["@odata.deltaLink"] = _delta_link(request, page.delta_cursor)
    body["value"] = page.items
    return graph_json(body, headers=headers)


def _delta_link(request: Request, cursor: DeltaCursor) -> str:
    return _link(request, [("$deltatoken", cursor.encode())], keep_query=False)


@router.get("/v1.0/users/{key}")
def get_user(key: str, request: Request) -> JSONResponse:
    opts = _options(request, {"$select"})
    select = _select(opts)
    try:
        user = _backend(request).get_user(key)
    except NotFound:
        raise errors.not_found(key) from None
    return graph_json({"@odata.context": _context(request, "users", select) + "/$entity",
                       **query.project(user, select)})


# ------------------------------------------------------------------ deleted items (what an admin restores)
# learn.microsoft.com/graph/api/directory-deleteditems-list ("GET /directory/deletedItems/microsoft.graph.user")
# and .../directory-deleteditems-restore ("POST /directory/deletedItems/{id}/restore": 200 with the restored
# object; a user comes back in the next /users/delta round as created). Permissions are not modelled here
# (Microsoft: User.DeleteRestore.All for users), as for the other directory routes.

@router.get("/v1.0/directory/deletedItems/microsoft.graph.user")
def deleted_users(request: Request) -> JSONResponse:
    opts = _options(request, {"$select", "$top", "$count", "$skiptoken"})
    select = _select(opts)
    count = _count_requested(request, opts)
    names = [*(select or query.DEFAULT_USER_SELECT), "deletedDateTime"]
    items = [{"@odata.type": "#microsoft.graph.user", **query.project(u, names)}
             for u in _backend(request).deleted_users()]
    return _paged(request, items, opts, f"{_base(request)}/v1.0/$metadata#directory/deletedItems/microsoft.graph.user",
                  count)


@router.post("/v1.0/directory/deletedItems/{object_id}/restore")
def restore_deleted_item(object_id: str, request: Request) -> JSONResponse:
    try:
        user = _backend(request).restore_user(object_id)
    except NotFound:
        raise errors.not_found(object_id) from None
    return graph_json({"@odata.context": f"{_base(request)}/v1.0/$metadata#directoryObjects/$entity",
                       "@odata.type": "#microsoft.graph.user", **query.project(user, None)})


# ------------------------------------------------------------------ groups

@router.get("/v1.0/groups/{group_id}")
def get_group(group_id: str, request: Request) -> JSONResponse:
    try:
        group = _backend(request).get_group(group_id)
    except NotFound:
        raise errors.not_found(group_id) from None
    return graph_json({"@odata.context": f"{_base(request)}/v1.0/$metadata#groups/$entity", **group})


def _members(request: Request, group_id: str, *, transitive: bool, users_only: bool) -> JSONResponse:
    opts = _options(request, {"$select", "$top", "$count", "$skiptoken"})
    select = _select(opts)
    _page_size(opts)
    count = _count_requested(request, opts)
    try:
        members = _backend(request).group_members(group_id, transitive=transitive)
    except NotFound:
        raise errors.not_found(group_id) from None
    items: list[dict[str, Any]] = []
    for kind, obj in members:
        if kind == "user":
            items.append({"@odata.type": "#microsoft.graph.user", **query.project(obj, select)})
        elif not users_only:
            group = {k: v for k, v in obj.items() if select is None or k in select or k == "id"}
            items.append({"@odata.type": "#microsoft.graph.group", **group})
    entity = "users" if users_only else "directoryObjects"
    return _paged(request, items, opts, _context(request, entity, select), count)


@router.get("/v1.0/groups/{group_id}/members")
def group_members(group_id: str, request: Request) -> JSONResponse:
    return _members(request, group_id, transitive=False, users_only=False)


@router.get("/v1.0/groups/{group_id}/members/microsoft.graph.user")
def group_member_users(group_id: str, request: Request) -> JSONResponse:
    return _members(request, group_id, transitive=False, users_only=True)


@router.get("/v1.0/groups/{group_id}/transitiveMembers")
def group_transitive_members(group_id: str, request: Request) -> JSONResponse:
    return _members(request, group_id, transitive=True, users_only=False)


@router.get("/v1.0/groups/{group_id}/transitiveMembers/microsoft.graph.user")
def group_transitive_users(group_id: str, request: Request) -> JSONResponse:
    return _members(request, group_id, transitive=True, users_only=True)


# ------------------------------------------------------------------ anything else under /v1.0

@router.api_route("/v1.0/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
def unknown_segment(rest: str, request: Request) -> JSONResponse:
    segment = [p for p in rest.split("/") if p][-1:] or ["v1.0"]
    raise errors.bad_request(f"Resource not found for the segment '{segment[0]}'.")
