"""XAPI and token routes: parse the request, call the backend, render OData JSON. Nothing else."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from emulators.threecx import odata
from emulators.threecx.contacts import CONTACT_TYPE
from emulators.threecx.errors import BadRequest, TokenError
from emulators.threecx.state import GROUP_TYPE, USER_TYPE, PbxBackend

XAPI = "/xapi/v1"
ODATA_JSON = "application/json; odata.metadata=minimal; odata.streaming=true"

_KEY_INT = re.compile(r"^(?:Id=)?(-?\d+)$")
_KEY_NUMBER = re.compile(r"^Number='((?:[^']|'')*)'$")
_ID_SEGMENT = re.compile(r"\((?:Id=)?-?\d+\)")
_NUMBER_SEGMENT = re.compile(r"\(Number='(?:[^']|'')*'\)")


class Unauthorized(Exception):
    """Missing, expired or revoked bearer token: 401 with an empty body."""


def route_key(method: str, path: str) -> str:
    """Counter key: ``PATCH /xapi/v1/Users(42)`` -> ``PATCH /xapi/v1/Users({Id})``."""
    path = _NUMBER_SEGMENT.sub("(Number={Number})", path)
    return f"{method.upper()} {_ID_SEGMENT.sub('({Id})', path)}"


def odata_json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers=headers, media_type=ODATA_JSON)


def _context(request: Request, fragment: str) -> str:
    return f"{str(request.base_url).rstrip('/')}{XAPI}/$metadata#{fragment}"


def _params(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.query_params.items()}


async def _json_body(request: Request) -> Any:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        raise BadRequest("The request body is not valid JSON.") from None


def _parse_key(key: str) -> tuple[str, Any]:
    match = _KEY_INT.match(key)
    if match:
        return "Id", int(match.group(1))
    match = _KEY_NUMBER.match(key)
    if match:
        return "Number", match.group(1).replace("''", "'")
    raise BadRequest(f"The key value '{key}' is not valid for the entity set.")


def build_router(backend: PbxBackend) -> APIRouter:
    """All non-admin routes of one emulated PBX."""
    router = APIRouter()

    def authorize(request: Request) -> None:
        header = request.headers.get("authorization", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else None
        if request.scope.get("state", {}).get("revoke_token"):
            backend.revoke_token(token)
            raise Unauthorized
        if not backend.authenticate(token):
            raise Unauthorized

    def user_by_key(key: str) -> dict[str, Any]:
        kind, value = _parse_key(key)
        return backend.get_user(value) if kind == "Id" else backend.get_user_by_number(value)

    def entity(request: Request, record: dict[str, Any], entity_type: odata.EntityType,
               set_name: str) -> JSONResponse:
        params = _params(request)
        shape = odata.parse_shape(entity_type, params.get("$select"), params.get("$expand"))
        fragment = odata.context_fragment(set_name, shape) + "/$entity"
        return odata_json({"@odata.context": _context(request, fragment), **shape.apply(record)})

    def collection(request: Request, records: Sequence[dict[str, Any]], entity_type: odata.EntityType,
                   set_name: str, sorted_by: str | None = None) -> JSONResponse:
        params = _params(request)
        count = odata.wants_count(params)
        page, matched, shape = odata.query_collection(records, params, entity_type,
                                                      max_top=backend.config.max_top, sorted_by=sorted_by)
        body: dict[str, Any] = {"@odata.context": _context(request, odata.context_fragment(set_name, shape))}
        if count:
            body["@odata.count"] = matched
        body["value"] = page
        return odata_json(body)

    @router.post("/connect/token")
    async def token(request: Request) -> JSONResponse:
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        header = request.headers.get("authorization", "")
        if header[:6].lower() == "basic ":
            try:
                client_id, _, secret = base64.b64decode(header[6:]).decode().partition(":")
            except ValueError:
                raise TokenError(401, "unauthorized", "The request requires valid user authentication.") from None
        issued = backend.issue_token(client_id, secret, form.get("grant_type", ""))
        return JSONResponse(issued, headers={"Cache-Control": "no-store", "Pragma": "no-cache"})

    @router.get(XAPI + "/Users")
    async def list_users(request: Request) -> JSONResponse:
        authorize(request)
        params = _params(request)
        expand = odata.parse_shape(USER_TYPE, None, params.get("$expand")).expand
        ids = odata.id_filter_keys(params.get("$filter"))
        numbers = odata.eq_filter_values(params.get("$filter"), "Number") if ids is None else None
        return collection(request, backend.user_views(expand=set(expand), ids=ids, numbers=numbers), USER_TYPE,
                          "Users", "Id")

    @router.get(XAPI + "/Users/$count")
    async def count_users(request: Request) -> PlainTextResponse:
        authorize(request)
        params = {"$filter": request.query_params.get("$filter", ""), "$top": "0"}
        _, matched, _ = odata.query_collection(backend.user_views(expand=()), params, USER_TYPE)
        return PlainTextResponse(str(matched))

    @router.get(XAPI + "/Users/Pbx.GetFirstAvailableExtensionNumber()")
    async def first_available(request: Request) -> JSONResponse:
        authorize(request)
        return odata_json({"@odata.context": _context(request, "Pbx.FirstAvailableNumber"),
                           "Number": backend.first_available_number()})

    @router.post(XAPI + "/Users/Pbx.BatchDelete")
    async def batch_delete(request: Request) -> JSONResponse:
        authorize(request)
        body = await _json_body(request)
        if not isinstance(body, dict) or "ids" not in body:
            raise BadRequest("The parameter 'ids' is missing.")
        failures = backend.batch_delete(body["ids"])
        return odata_json({"@odata.context": _context(request, "Collection(Pbx.UserDeleteError)"),
                           "value": failures})

    @router.post(XAPI + "/Users")
    async def create_user(request: Request) -> JSONResponse:
        authorize(request)
        created = backend.create_user(await _json_body(request))
        shape = odata.parse_shape(USER_TYPE, None, None)
        location = f"{str(request.base_url).rstrip('/')}{XAPI}/Users({created['Id']})"
        return odata_json({"@odata.context": _context(request, "Users/$entity"), **shape.apply(created)},
                          status=201, headers={"Location": location})

    @router.get(XAPI + "/Users({key})")
    async def get_user(request: Request, key: str) -> JSONResponse:
        authorize(request)
        return entity(request, user_by_key(key), USER_TYPE, "Users")

    @router.get(XAPI + "/Users({key})/Groups")
    async def get_user_groups(request: Request, key: str) -> JSONResponse:
        authorize(request)
        user = user_by_key(key)
        return collection(request, user["Groups"], odata.REGISTRY["Pbx.UserGroup"], f"Users({user['Id']})/Groups")

    @router.get(XAPI + "/Users({key})/ForwardingProfiles")
    async def get_user_profiles(request: Request, key: str) -> JSONResponse:
        authorize(request)
        user = user_by_key(key)
        return collection(request, user["ForwardingProfiles"], odata.REGISTRY["Pbx.ForwardingProfile"],
                          f"Users({user['Id']})/ForwardingProfiles")

    @router.patch(XAPI + "/Users({key})")
    async def update_user(request: Request, key: str) -> Response:
        authorize(request)
        user = user_by_key(key)
        backend.update_user(user["Id"], await _json_body(request))
        return Response(status_code=204)

    @router.delete(XAPI + "/Users({key})")
    async def delete_user(request: Request, key: str) -> Response:
        authorize(request)
        backend.delete_user(user_by_key(key)["Id"])
        return Response(status_code=204)

    @router.get(XAPI + "/Groups")
    async def list_groups(request: Request) -> JSONResponse:
        authorize(request)
        return collection(request, backend.list_groups(), GROUP_TYPE, "Groups", "Id")

    @router.get(XAPI + "/Groups({key})")
    async def get_group(request: Request, key: str) -> JSONResponse:
        authorize(request)
        kind, value = _parse_key(key)
        if kind != "Id":
            raise BadRequest(f"The key value '{key}' is not valid for the entity set.")
        return entity(request, backend.get_group(value), GROUP_TYPE, "Groups")

    @router.get(XAPI + "/Groups({key})/Members")
    async def get_group_members(request: Request, key: str) -> JSONResponse:
        """``ListMembers``: the group's ``Pbx.UserGroup`` collection, with the OData options the
        swagger declares for it ($top, $skip, $search, $filter, $count, $orderby, $select, $expand)."""
        authorize(request)
        kind, value = _parse_key(key)
        if kind != "Id":
            raise BadRequest(f"The key value '{key}' is not valid for the entity set.")
        group = backend.get_group(value)
        return collection(request, group["Members"], odata.REGISTRY["Pbx.UserGroup"], f"Groups({group['Id']})/Members")

    def contact_id(key: str) -> int:
        kind, value = _parse_key(key)
        if kind != "Id":
            raise BadRequest(f"The key value '{key}' is not valid for the entity set.")
        return int(value)

    @router.get(XAPI + "/Contacts")
    async def list_contacts(request: Request) -> JSONResponse:
        authorize(request)
        expression = _params(request).get("$filter")
        ids = odata.id_filter_keys(expression)
        tags = odata.eq_filter_values(expression, "Tag") if ids is None else None
        return collection(request, backend.contact_views(ids, tags), CONTACT_TYPE, "Contacts", "Id")

    @router.post(XAPI + "/Contacts/Pbx.DeleteContactsById")
    async def delete_contacts_by_id(request: Request) -> Response:
        authorize(request)
        body = await _json_body(request)
        if not isinstance(body, dict) or "ids" not in body:
            raise BadRequest("The parameter 'ids' is missing.")
        backend.delete_contacts(body["ids"])
        return Response(status_code=204)

    @router.post(XAPI + "/Contacts")
    async def create_contact(request: Request) -> JSONResponse:
        authorize(request)
        created = backend.create_contact(await _json_body(request))
        location = f"{str(request.base_url).rstrip('/')}{XAPI}/Contacts({created['Id']})"
        return odata_json({"@odata.context": _context(request, "Contacts/$entity"), **created},
                          status=201, headers={"Location": location})

    @router.get(XAPI + "/Contacts({key})")
    async def get_contact(request: Request, key: str) -> JSONResponse:
        authorize(request)
        return entity(request, backend.get_contact(contact_id(key)), CONTACT_TYPE, "Contacts")

    @router.patch(XAPI + "/Contacts({key})")
    async def update_contact(request: Request, key: str) -> Response:
        authorize(request)
        backend.update_contact(contact_id(key), await _json_body(request))
        return Response(status_code=204)

    @router.delete(XAPI + "/Contacts({key})")
    async def delete_contact(request: Request, key: str) -> Response:
        authorize(request)
        backend.delete_contact(contact_id(key))
        return Response(status_code=204)

    @router.get(XAPI + "/SystemStatus")
    async def system_status(request: Request) -> JSONResponse:
        authorize(request)
        status = backend.system_status()
        select = request.query_params.get("$select")
        if select:
            names = [n.strip() for n in select.split(",") if n.strip()]
            unknown = [n for n in names if n not in status]
            if unknown:
                raise BadRequest(f"Could not find a property named '{unknown[0]}' on type 'Pbx.SystemStatus'.")
            status = {n: status[n] for n in names}
        return odata_json({"@odata.context": _context(request, "SystemStatus"), **status})

    return router
