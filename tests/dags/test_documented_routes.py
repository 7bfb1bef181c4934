"""The allow-lists the DAG tests check the emulators' route logs against catch what they must."""

from __future__ import annotations

import pytest
from documented_routes import GRAPH_ROUTES, swagger_path, undocumented_graph, undocumented_xapi


def test_graph_allow_list_refuses_the_undocumented_default_folder_delta() -> None:
    used = {"GET /v1.0/users/{id}/contactFolders/{id}/contacts/delta": 3, "POST /v1.0/$batch": 1,
            "GET /v1.0/users/{id}/contacts/delta": 2, "GET /v1.0/users/{id}/messages": 1}
    assert undocumented_graph(used) == ["GET /v1.0/users/{id}/contacts/delta", "GET /v1.0/users/{id}/messages"]
    assert all(source for source in GRAPH_ROUTES.values())


def test_xapi_allow_list_is_the_swagger() -> None:
    if not swagger_path().is_file():
        pytest.skip(f"3CX swagger not found at {swagger_path()} (set M365_3CX_XAPI_SWAGGER)")
    used = {"GET /xapi/v1/Users": 1, "PATCH /xapi/v1/Users({Id})": 1, "GET /xapi/v1/Users(Number={Number})": 1,
            "GET /xapi/v1/Groups({Id})/Members": 1, "POST /xapi/v1/Contacts/Pbx.DeleteContactsById": 1,
            "POST /connect/token": 1, "GET /xapi/v1/Contacts/delta": 1, "PUT /xapi/v1/Users({Id})": 1}
    assert undocumented_xapi(used) == ["GET /xapi/v1/Contacts/delta", "PUT /xapi/v1/Users({Id})"]
