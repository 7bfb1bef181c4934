"""The vendors' own clients against the emulators, unchanged (``DESIGN.md`` § Emulators).

* **msgraph-sdk** (Microsoft's Python Graph SDK, kiota-generated): its delta request builders emit
  the function-call URL form (``/users/delta()``, ``.../contacts/delta()``,
  ``/calendarView/delta()``); every round is followed through ``@odata.nextLink`` and the
  ``@odata.deltaLink`` with the SDK's own ``with_url`` and parsed into its models.
* **3cx-xapi-python-sdk** (a published Python client whose models are generated from 3CX's
  swagger): ``GroupsService.get_members`` with the OData options the swagger declares for
  ``GET /Groups({Id})/Members``; and the same call built straight from the swagger's path and
  parameter list, so the check does not hang on one client's choices.

Both SDKs are test-only dependencies (pinned in requirements.txt / constraints.txt).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from m365_3cx.graph.auth import GraphCredentials, GraphTokenProvider

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

SWAGGER = Path(os.environ.get("M365_3CX_XAPI_SWAGGER", "/work/shared/reference/3cx-xapi/swagger.yaml"))
"""3CX's swagger (the shared reference copy unless ``M365_3CX_XAPI_SWAGGER`` names another)."""


def _graph_credentials(info: dict[str, Any]) -> GraphCredentials:
    authority_host = str(info["authority"]).rstrip("/").rsplit("/", 1)[0]
    return GraphCredentials(tenant_id=info["tenant_id"], client_id=info["client_id"],
                            client_secret=info["client_secret"], authority_host=authority_host,
                            graph_url=info["graph_url"], ca_bundle=info["ca_bundle"])


def _sdk_client(info: dict[str, Any]) -> tuple[Any, Any]:
    """A ``GraphServiceClient`` on the emulator: the SDK's adapter, a bearer token from msal."""
    import httpx
    from kiota_abstractions.authentication import AccessTokenProvider, AllowedHostsValidator
    from kiota_abstractions.authentication.base_bearer_token_authentication_provider import (
        BaseBearerTokenAuthenticationProvider,
    )
    from msgraph import GraphRequestAdapter, GraphServiceClient

    tokens = GraphTokenProvider(_graph_credentials(info))
    host = str(info["graph_url"]).split("://", 1)[1].split("/", 1)[0]

    class MsalTokens(AccessTokenProvider):
        async def get_authorization_token(self, uri: str, additional_authentication_context: Any = None) -> str:
            return tokens.token()

        def get_allowed_hosts_validator(self) -> AllowedHostsValidator:
            return AllowedHostsValidator([host.split(":", 1)[0], host])

    http = httpx.AsyncClient(verify=str(info["ca_bundle"]), timeout=30)
    adapter = GraphRequestAdapter(BaseBearerTokenAuthenticationProvider(MsalTokens()), client=http)
    adapter.base_url = str(info["graph_url"]).rstrip("/") + "/v1.0"
    return GraphServiceClient(request_adapter=adapter), http


async def _round(first: Any, builder_of: Any) -> tuple[list[Any], str]:
    """Follow one delta round: ``first`` is the first page; ``builder_of(url)`` re-targets the builder."""
    items, page, pages = list(first.value or []), first, 1
    while page.odata_next_link:
        page = await builder_of(page.odata_next_link).get()
        items += page.value or []
        pages += 1
        assert pages < 1000
    assert page.odata_delta_link, "a round ends with a delta link"
    return items, page.odata_delta_link


def test_msgraph_sdk_delta_builders_work_against_the_emulator(graph_emulator: Any) -> None:
    from kiota_abstractions.base_request_configuration import RequestConfiguration
    from msgraph.generated.users.delta.delta_request_builder import DeltaRequestBuilder as UsersDelta
    from msgraph.generated.users.item.calendar_view.delta.delta_request_builder import DeltaRequestBuilder as CalDelta
    from msgraph.generated.users.item.contact_folders.item.contacts.delta.delta_request_builder import (
        DeltaRequestBuilder as ContactDelta,
    )

    backend = graph_emulator.backend
    user = next(u for u in backend.list_users() if u["mail"] and u["userType"] == "Member")
    graph_emulator.admin("POST", f"users/{user['id']}/contacts", json={"givenName": "Sdk", "surname": "Probe",
                                                                       "folder": "SDK folder"})
    graph_emulator.admin("DELETE", "routes")

    async def scenario() -> dict[str, Any]:
        client, http = _sdk_client(graph_emulator.info)
        try:
            users_config = RequestConfiguration(query_parameters=UsersDelta.DeltaRequestBuilderGetQueryParameters(
                select=["displayName", "mail"]))
            first = await client.users.delta.get(request_configuration=users_config)
            users, users_link = await _round(first, lambda url: client.users.delta.with_url(url))
            again, _ = await _round(await client.users.delta.with_url(users_link).get(),
                                    lambda url: client.users.delta.with_url(url))

            mailbox = client.users.by_user_id(user["id"])
            folders = (await mailbox.contact_folders.get()).value
            folder = next(f for f in folders if f.display_name == "SDK folder")
            contacts_builder = mailbox.contact_folders.by_contact_folder_id(folder.id).contacts.delta
            contacts_config = RequestConfiguration(
                query_parameters=ContactDelta.DeltaRequestBuilderGetQueryParameters(select=["givenName", "surname"]))
            contacts, _ = await _round(await contacts_builder.get(request_configuration=contacts_config),
                                       lambda url: contacts_builder.with_url(url))

            calendar = mailbox.calendar_view.delta
            window = RequestConfiguration(query_parameters=CalDelta.DeltaRequestBuilderGetQueryParameters(
                start_date_time="2026-01-01T00:00:00Z", end_date_time="2026-03-01T00:00:00Z"))
            events, _ = await _round(await calendar.get(request_configuration=window),
                                     lambda url: calendar.with_url(url))
            return {"users": users, "again": again, "contacts": contacts, "events": events}
        finally:
            await http.aclose()

    result = asyncio.run(scenario())
    assert len(result["users"]) == backend.user_count and result["again"] == []
    assert all(u.id for u in result["users"]) and any(u.mail for u in result["users"])
    assert [(c.given_name, c.surname) for c in result["contacts"]] == [("Sdk", "Probe")]
    assert all(e.id for e in result["events"])
    routes = graph_emulator.admin("GET", "routes").json()["routes"]
    # the SDK's function-call form reached the delta handlers (not the /users/{id} or 404 routes)
    assert "GET /v1.0/users/delta()" in routes
    assert "GET /v1.0/users/{id}/contactFolders/{id}/contacts/delta()" in routes
    assert "GET /v1.0/users/{id}/calendarView/delta()" in routes


def test_3cx_sdk_lists_group_members_with_the_swagger_options(threecx_emulator: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from threecx import ThreeCXClient
    from threecx.odata import ODataQuery

    info = threecx_emulator.info
    monkeypatch.setenv("SSL_CERT_FILE", str(info["ca_bundle"]))  # its token request trusts the environment
    group = threecx_emulator.backend.list_groups()[0]
    expected = sorted(m["Id"] for m in group["Members"])
    assert expected, "the seeded default group has members"
    with ThreeCXClient(base_url=info["base_url"], client_id=info["client_id"],
                       client_secret=info["client_secret"]) as client:
        everyone = client.groups.get_members(group["Id"])
        page = client.groups.get_members(group["Id"], ODataQuery().select("Id", "Number").order_by("Id").top(2).skip(1))
    assert sorted(m["Id"] for m in everyone) == expected
    assert [m["Id"] for m in page] == expected[1:3]
    assert all(set(m) <= {"Id", "Number", "@odata.type"} for m in page)


def test_group_members_call_built_from_the_swagger(threecx_emulator: Any) -> None:
    import requests

    spec = yaml.safe_load(SWAGGER.read_text())
    operation = spec["paths"]["/Groups({Id})/Members"]["get"]
    shared = spec["components"]["parameters"]
    params = [shared[p["$ref"].rsplit("/", 1)[1]] if "$ref" in p else p for p in operation["parameters"]]
    declared = {p["name"] for p in params if p["in"] == "query"}
    assert declared == {"$top", "$skip", "$search", "$filter", "$count", "$orderby", "$select", "$expand"}

    info = threecx_emulator.info
    group = threecx_emulator.backend.list_groups()[0]
    members = group["Members"]
    number = members[0]["Number"]
    token = requests.post(f"{info['base_url']}/connect/token", verify=info["ca_bundle"], timeout=10, data={
        "client_id": info["client_id"], "client_secret": info["client_secret"],
        "grant_type": "client_credentials"}).json()["access_token"]
    url = info["base_url"] + spec["servers"][0]["url"] + "/Groups({Id})/Members".replace("{Id}", str(group["Id"]))
    values = {"$top": "5", "$skip": "0", "$filter": f"Number eq '{number}'", "$count": "true",
              "$orderby": "Id", "$select": "Id,Number,Name", "$search": f'"{number}"', "$expand": ""}
    query = {k: v for k, v in values.items() if k in declared and v}
    response = requests.get(url, params=query, headers={"Authorization": f"Bearer {token}"},
                            verify=info["ca_bundle"], timeout=10)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["@odata.count"] == len(body["value"]) >= 1
    assert {m["Number"] for m in body["value"]} == {number}
    assert all(set(m) <= {"Id", "Number", "Name", "@odata.type"} for m in body["value"])
    missing = requests.get(url.replace(f"({group['Id']})", "(987654)"), headers={"Authorization": f"Bearer {token}"},
                           verify=info["ca_bundle"], timeout=10)
    assert missing.status_code == 404
