"""Allow-lists of the routes Microsoft and 3CX document, matched against the emulators' route logs.

The emulators log every route key they serve (``GET /_emulator/routes``; ids normalised to
``{id}`` / ``({Id})``, ``$batch`` items under their own keys). A DAG test asserts that every key
the product produced is in these lists, so a product request to a path the vendor does not
document fails the test even when the emulator happens to answer it.

* Graph: the v1.0 routes below, each with the page of Microsoft's reference that documents it.
* 3CX: every path of 3CX's own swagger (``servers[0].url`` + ``paths``) with the method it
  declares, plus its ``securitySchemes`` token URL. The swagger is read from
  ``M365_3CX_XAPI_SWAGGER`` (default: the copy in the shared reference folder).
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

GRAPH_ROUTES: dict[str, str] = {
    # identity platform (msal)
    "GET /common/discovery/instance": "msal instance discovery (learn.microsoft.com/entra/identity-platform)",
    "GET /{tenant}/v2.0/.well-known/openid-configuration": "OpenID Connect metadata (identity platform)",
    "POST /{tenant}/oauth2/v2.0/token": "v2-oauth2-client-creds-grant-flow",
    # directory
    "GET /v1.0/users": "api/user-list",
    "GET /v1.0/users/delta": "api/user-delta",
    "GET /v1.0/users/{id}": "api/user-get",
    "GET /v1.0/groups/{id}/members": "api/group-list-members",
    "GET /v1.0/groups/{id}/members/microsoft.graph.user": "api/group-list-members (OData cast)",
    "GET /v1.0/groups/{id}/transitiveMembers": "api/group-list-transitivemembers",
    "GET /v1.0/groups/{id}/transitiveMembers/microsoft.graph.user": "api/group-list-transitivemembers (cast)",
    "POST /v1.0/$batch": "concepts/json-batching",
    # deleted items: the tests restore a user the way an admin does (the product never calls these)
    "GET /v1.0/directory/deletedItems/microsoft.graph.user": "api/directory-deleteditems-list",
    "POST /v1.0/directory/deletedItems/{id}/restore": "api/directory-deleteditems-restore",
    # Outlook contacts: delta is documented per folder only
    "GET /v1.0/users/{id}/contactFolders": "api/user-list-contactfolders",
    "GET /v1.0/users/{id}/contacts": "api/user-list-contacts",
    "GET /v1.0/users/{id}/contactFolders/{id}/contacts/delta": "api/contact-delta",
    # calendar and mailbox settings
    "GET /v1.0/users/{id}/calendarView": "api/user-list-calendarview",
    "GET /v1.0/users/{id}/calendarView/delta": "api/event-delta",
    "GET /v1.0/users/{id}/mailboxSettings": "api/user-get-mailboxsettings",
    "GET /v1.0/users/{id}/mailboxSettings/automaticRepliesSetting": "api/user-get-mailboxsettings",
    # change notifications (webhooks): concepts/change-notifications-delivery-webhooks
    "POST /v1.0/subscriptions": "api/subscription-post-subscriptions",
    "GET /v1.0/subscriptions": "api/subscription-list",
    "GET /v1.0/subscriptions/{id}": "api/subscription-get",
    "PATCH /v1.0/subscriptions/{id}": "api/subscription-update",
    "DELETE /v1.0/subscriptions/{id}": "api/subscription-delete",
    "POST /v1.0/subscriptions/{id}/reauthorize": "api/subscription-reauthorize",
    # organisational contacts (orgContact)
    "GET /v1.0/contacts": "api/orgcontact-list",
    "GET /v1.0/contacts/delta": "api/orgcontact-delta",
    "GET /v1.0/contacts/{id}": "api/orgcontact-get",
    # Teams presence
    "POST /v1.0/communications/getPresencesByUserId": "api/cloudcommunications-getpresencesbyuserid",
}
"""Documented Graph route keys (as the emulator's ``route_key`` spells them) and their sources."""

DEFAULT_SWAGGER = Path("/work/shared/reference/3cx-xapi/swagger.yaml")


def swagger_path() -> Path:
    """Where 3CX's swagger is read from (``M365_3CX_XAPI_SWAGGER`` or the shared reference copy)."""
    return Path(os.environ.get("M365_3CX_XAPI_SWAGGER", str(DEFAULT_SWAGGER)))


@functools.cache
def xapi_routes() -> tuple[re.Pattern[str], ...]:
    """One pattern per (method, path) of the swagger, matching the 3CX emulator's route keys."""
    import yaml

    # libyaml's parser when PyYAML has it: the 1.2 MB swagger takes seconds instead of ~20 s
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    spec = yaml.load(swagger_path().read_text(), Loader=loader)
    prefix = spec["servers"][0]["url"].rstrip("/")
    patterns: list[re.Pattern[str]] = []
    for path, item in spec["paths"].items():
        regex = re.sub(r"\\\{[^}]+\\\}", r"[^/]+", re.escape(prefix + path))
        for method in item:
            if method in ("get", "post", "put", "patch", "delete"):
                patterns.append(re.compile(f"{method.upper()} {regex}"))
    token_url = spec["components"]["securitySchemes"]["Application"]["flows"]["clientCredentials"]["tokenUrl"]
    patterns.append(re.compile(f"POST {re.escape(token_url)}"))
    return tuple(patterns)


def undocumented_graph(routes: dict[str, int]) -> list[str]:
    """The Graph route keys of ``routes`` that are not documented."""
    return sorted(key for key in routes if key not in GRAPH_ROUTES)


def undocumented_xapi(routes: dict[str, int]) -> list[str]:
    """The 3CX route keys of ``routes`` that the swagger does not declare."""
    allowed = xapi_routes()
    return sorted(key for key in routes if not any(p.fullmatch(key) for p in allowed))
