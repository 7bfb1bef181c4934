"""Graph user rows and timestamps shared by the staging table tests."""

from __future__ import annotations

import datetime as dt
from typing import Any

from m365_3cx.staging.users import user_row_from_graph

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(hours=1)


def graph_user(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"00000000-0000-4000-8000-{i:012d}",
        "userPrincipalName": f"user{i}@contoso.test",
        "displayName": f"User {i}",
        "givenName": "User",
        "surname": str(i),
        "mail": f"user{i}@contoso.test",
        "mobilePhone": None,
        "businessPhones": ["+1 425 555 0100"],
        "accountEnabled": True,
        "userType": "Member",
        "usageLocation": "US",
        "onPremisesExtensionAttributes": {"extensionAttribute1": "201"},
        **extra,
    }


def uid(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012d}"


def rows(*ids: int, **extra: Any) -> list[dict[str, Any]]:
    return [user_row_from_graph(graph_user(i, **extra)) for i in ids]
