from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest

from m365_3cx.settings import Settings
from m365_3cx.transform.scope import (
    OPTED_OUT,
    PROTECTED_GROUP,
    PROTECTED_UPN,
    ProtectionParams,
    ScopeParams,
    explain_scope,
    protection_of,
    protections,
)

PROTECT = ProtectionParams(upns=frozenset({"boss@contoso.example"}), group_id="g-protected",
                           opt_out_attribute="extensionAttribute5", opt_out_value="no-3cx-sync")


def staged(**kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"user_id": "u1", "user_principal_name": "ann@contoso.example", "mail": "ann@contoso.example",
                           "deleted": False, "deleted_at": None, "in_scope": True, "scope_miss": None,
                           "user_type": "Member", "account_enabled": True, "extension_attributes": {},
                           "protected_group": False}
    row.update(kw)
    return row


@pytest.mark.parametrize(("row", "expected"), [
    (staged(), None),
    (staged(user_principal_name="Boss@Contoso.Example"), PROTECTED_UPN),
    (staged(protected_group=True), PROTECTED_GROUP),
    (staged(extension_attributes={"extensionAttribute5": "  NO-3CX-Sync "}), OPTED_OUT),
    (staged(extension_attributes={"extensionAttribute5": "yes"}), None),
    (staged(user_principal_name="boss@contoso.example", protected_group=True), PROTECTED_UPN),
])
def test_protection_of(row: dict[str, Any], expected: str | None) -> None:
    assert protection_of(row["user_principal_name"], row["extension_attributes"], row["protected_group"],
                         PROTECT) == expected


def test_nothing_is_protected_by_default() -> None:
    params = ProtectionParams.from_settings(Settings())
    frame = pd.DataFrame([staged(protected_group=True, extension_attributes={"extensionAttribute5": "no-3cx-sync"})])
    assert protections(frame, params).to_list() == [None]


def test_protection_params_from_settings() -> None:
    settings = Settings.from_mapping({"scope": {"protected_upns": ["Boss@Contoso.Example"],
                                                "protected_group_id": "g-protected",
                                                "opt_out_attribute": "extensionAttribute5"}})
    assert ProtectionParams.from_settings(settings) == PROTECT


SCOPE = ScopeParams(group_id="g-phones", user_filter="department eq 'Sales'", protection=PROTECT)


def codes(row: dict[str, Any], params: ScopeParams = SCOPE) -> tuple[str, list[str]]:
    why = explain_scope(row, params)
    return why.verdict, [c for c, _ in why.reasons]


@pytest.mark.parametrize(("row", "verdict", "expected"), [
    (staged(), "in_scope", ["in_scope"]),
    (staged(in_scope=False, scope_miss="group"), "out_of_scope", ["not_in_group"]),
    (staged(in_scope=False, scope_miss="filter"), "out_of_scope", ["filter"]),
    (staged(in_scope=False, scope_miss="group,filter"), "out_of_scope", ["not_in_group", "filter"]),
    (staged(in_scope=False), "out_of_scope", ["not_in_group"]),  # staged before scope_miss existed
    (staged(user_type="Guest"), "out_of_scope", ["guest"]),
    (staged(account_enabled=False), "out_of_scope", ["disabled"]),
    (staged(deleted=True, deleted_at=datetime(2026, 3, 1, tzinfo=UTC)), "out_of_scope", ["deleted"]),
    (staged(user_principal_name="boss@contoso.example"), "protected", ["protected_upn", "in_scope"]),
    (staged(protected_group=True, account_enabled=False), "protected", ["disabled", "protected_group"]),
    (staged(extension_attributes={"extensionAttribute5": "no-3cx-sync"}), "protected", ["opted_out", "in_scope"]),
    (staged(mail=None), "in_scope", ["in_scope", "no_mail"]),
])
def test_explain_scope(row: dict[str, Any], verdict: str, expected: list[str]) -> None:
    assert codes(row) == (verdict, expected)


def test_explanations_quote_the_settings() -> None:
    messages = dict(explain_scope(staged(in_scope=False, scope_miss="group,filter"), SCOPE).reasons)
    assert "g-phones" in messages["not_in_group"]
    assert "department eq 'Sales'" in messages["filter"]
    deleted = dict(explain_scope(staged(deleted=True, deleted_at=datetime(2026, 3, 1, 8, tzinfo=UTC)), SCOPE).reasons)
    assert "2026-03-01 08:00" in deleted["deleted"]
    opted = dict(explain_scope(staged(extension_attributes={"extensionAttribute5": "no-3cx-sync"}), SCOPE).reasons)
    assert "extensionAttribute5" in opted["opted_out"] and "never created, changed or removed" in opted["opted_out"]
    everyone = dict(explain_scope(staged(user_type="Guest"), ScopeParams(include_guests=True)).reasons)
    assert everyone["in_scope"].startswith("in scope: every user is in scope") and "guest, included" in \
        everyone["in_scope"]
    assert explain_scope(staged(), SCOPE).as_dict()["reasons"][0]["code"] == "in_scope"
