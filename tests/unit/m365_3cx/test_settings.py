from __future__ import annotations

import json
from typing import Any

import pytest

from m365_3cx.errors import ConfigError
from m365_3cx.settings import DEFAULT_SETTINGS_JSON, Settings


def _problems(data: Any) -> str:
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping(data)
    return str(info.value)


def test_defaults() -> None:
    s = Settings.from_mapping(None)
    assert s == Settings.from_mapping({}) == Settings.from_json("") == Settings()
    assert s.numbering.policy == "pool"
    assert (s.numbering.pool_first, s.numbering.pool_last) == ("200", "899")
    assert s.extensions.removal_policy == "disable"
    assert s.extensions.default_region == "US"
    assert s.guards.mass_removal_fraction == 0.10
    assert s.timezone == "UTC"
    assert s.contacts.personal_contacts == "off"
    assert s.presence.mapping["busy"] == "Away"
    assert s.presence.mapping["tentative"] is None
    assert (s.presence.store_subjects, s.presence.shard_size) == (False, 200)


def test_default_json_round_trips() -> None:
    assert Settings.from_json(DEFAULT_SETTINGS_JSON) == Settings()
    assert json.loads(DEFAULT_SETTINGS_JSON) == Settings().to_dict()


def test_overrides_and_to_dict_round_trip() -> None:
    data = {
        "scope": {"group_id": "0b0c1d2e-0000-4000-8000-000000000001", "include_guests": True},
        "numbering": {
            "policy": "attribute",
            "attribute": "extensionAttribute15",
            "pool_first": "1000",
            "pool_last": "1999",
            "suffix_digits": 4,
        },
        "extensions": {"removal_policy": "delete", "default_region": "DE", "group_name": "Sales"},
        "guards": {"mass_removal_min": 0, "mass_removal_fraction": 1},
        "timezone": "Europe/Berlin",
        "contacts": {"personal_contacts": "folder", "exclude_category": None},
        "presence": {"enabled": True, "mapping": {"tentative": "Away"}},
    }
    s = Settings.from_mapping(data)
    assert s.numbering.attribute == "extensionAttribute15"
    assert s.guards.mass_removal_fraction == 1.0
    assert s.presence.mapping["tentative"] == "Away"
    assert s.presence.mapping["busy"] == "Away"  # merged with defaults
    assert Settings.from_mapping(s.to_dict()) == s
    with pytest.raises(TypeError):
        s.presence.mapping["busy"] = "Available"  # type: ignore[index]


def test_invalid_json() -> None:
    with pytest.raises(ConfigError, match="not JSON"):
        Settings.from_json("{nope")
    with pytest.raises(ConfigError, match="must be a JSON object"):
        Settings.from_json("[1]")


def test_all_problems_reported_at_once() -> None:
    msg = _problems({"bogus": 1, "numbering": {"pool_first": "2a0", "colour": "red"}, "timezone": "Mars/X"})
    assert "invalid settings (4 problems)" in msg
    assert "bogus: unknown key" in msg
    assert "numbering.colour: unknown key" in msg
    assert "numbering.pool_first: must be digits" in msg
    assert "timezone: unknown IANA time zone 'Mars/X'" in msg


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"scope": []}, "scope: must be an object"),
        ({"scope": {"group_id": ""}}, "scope.group_id: must not be empty"),
        ({"scope": {"group_id": 5}}, "scope.group_id: must be a string"),
        ({"scope": {"include_guests": "yes"}}, "scope.include_guests: must be true or false"),
        ({"scope": {"user_filter": 1}}, "scope.user_filter: must be a string"),
        ({"numbering": {"policy": "random"}}, "numbering.policy: must be one of attribute, phone_suffix, pool"),
        ({"numbering": {"attribute": "extensionAttribute16"}}, "numbering.attribute: must be one of"),
        ({"numbering": {"suffix_digits": True}}, "numbering.suffix_digits: must be an integer"),
        ({"numbering": {"suffix_digits": 0}}, "numbering.suffix_digits: must be >= 1"),
        ({"numbering": {"pool_first": 200}}, "numbering.pool_first: must be a string of digits"),
        ({"numbering": {"pool_last": "\uff18\uff19\uff19"}}, "numbering.pool_last: must be digits"),
        ({"numbering": {"pool_last": "8999"}}, "numbering.pool_last: must have the same length as pool_first"),
        ({"numbering": {"pool_first": "900"}}, "numbering.pool_first: must be <= pool_last"),
        ({"numbering": {"min_length": 4, "suffix_digits": 4}}, "numbering.pool_first: length must be between"),
        ({"numbering": {"min_length": 5, "max_length": 4}}, "numbering.min_length: must be <= max_length"),
        ({"numbering": {"suffix_digits": 9}}, "numbering.suffix_digits: must be between min_length"),
        ({"numbering": {"fallback_to_pool": 1}}, "numbering.fallback_to_pool: must be true or false"),
        ({"numbering": {"quarantine_days": -1}}, "numbering.quarantine_days: must be >= 0"),
        ({"extensions": {"removal_policy": "purge"}}, "extensions.removal_policy: must be one of"),
        ({"extensions": {"manage_outbound_caller_id": None}}, "extensions.manage_outbound_caller_id: must be"),
        ({"extensions": {"default_region": "XX"}}, "extensions.default_region: must be an ISO 3166"),
        ({"extensions": {"default_region": "us"}}, "extensions.default_region: must be an ISO 3166"),
        ({"extensions": {"group_name": " "}}, "extensions.group_name: must not be empty"),
        ({"guards": {"mass_removal_min": -1}}, "guards.mass_removal_min: must be >= 0"),
        ({"guards": {"mass_removal_fraction": 1.5}}, "guards.mass_removal_fraction: must be between"),
        ({"guards": {"mass_removal_fraction": "0.1"}}, "guards.mass_removal_fraction: must be a number"),
        ({"timezone": 1}, "timezone: must be an IANA time zone name"),
        ({"timezone": "../etc/passwd"}, "timezone: unknown IANA time zone"),
        ({"contacts": {"personal_contacts": "some"}}, "contacts.personal_contacts: must be one of"),
        ({"contacts": {"folder_name": ""}}, "contacts.folder_name: must not be empty"),
        ({"contacts": {"exclude_category": 3}}, "contacts.exclude_category: must be a string"),
        ({"contacts": {"org_contacts": "no"}}, "contacts.org_contacts: must be true or false"),
        ({"presence": {"enabled": 0}}, "presence.enabled: must be true or false"),
        ({"presence": {"mode": "ignore"}}, "presence.mode: must be one of respect, override"),
        ({"presence": {"mapping": []}}, "presence.mapping: must be an object"),
        ({"presence": {"mapping": {"free": "Away"}}}, "presence.mapping.free: unknown key"),
        ({"presence": {"mapping": {"busy": "Do Not Disturb"}}}, "presence.mapping.busy: must be one of"),
        ({"presence": {"mapping": {"default": None}}}, "presence.mapping.default: must be a profile name"),
        ({"presence": {"window_days_back": -1}}, "presence.window_days_back: must be >= 0"),
        ({"presence": {"window_days_back": 0, "window_days_ahead": 0}}, "the calendar window must not be empty"),
        ({"presence": {"store_subjects": "yes"}}, "presence.store_subjects: must be true or false"),
        ({"presence": {"shard_size": 0}}, "presence.shard_size: must be >= 1"),
        ({"extensions": {"delete_after_days": 0}}, "extensions.delete_after_days: must be >= 1"),
        ({"graph": {"batch_concurrency": 0}}, "graph.batch_concurrency: must be >= 1"),
        ({"graph": {"batch_concurrency": 17}}, "graph.batch_concurrency: must be <= 16"),
        ({"graph": {"batch_size": 20}}, "graph.batch_size: unknown key"),
        ({"threecx": {"read_concurrency": 0}}, "threecx.read_concurrency: must be >= 1"),
        ({"extensions": {"delete_after_days": "30"}}, "extensions.delete_after_days: must be an integer"),
        ({"extensions": {"clear_on_empty": {"Enabled": False}}}, "extensions.clear_on_empty: unknown field 'Enabled'"),
        ({"extensions": {"clear_on_empty": {"Mobile": "no"}}}, "extensions.clear_on_empty: Mobile must be true or"),
        ({"extensions": {"clear_on_empty": ["Mobile"]}}, "extensions.clear_on_empty: must be an object"),
        ({"scope": {"protected_upns": "boss@contoso.com"}}, "scope.protected_upns: must be a list of user principal"),
        ({"scope": {"protected_upns": ["boss"]}}, "scope.protected_upns: must be a list of user principal"),
        ({"scope": {"protected_group_id": ""}}, "scope.protected_group_id: must not be empty"),
        ({"scope": {"opt_out_attribute": "department"}}, "scope.opt_out_attribute: must be one of"),
        ({"scope": {"opt_out_value": " "}}, "scope.opt_out_value: must not be empty"),
        ({"scope": {"opt_out_attribute": "extensionAttribute1"}, "numbering": {"policy": "attribute"}},
         "scope.opt_out_attribute: must differ from numbering.attribute"),
    ],
)
def test_validation_rules(data: dict[str, Any], expected: str) -> None:
    msg = _problems(data)
    assert expected in msg
    assert "(1 problem)" in msg


def test_numbering_cross_checks_skipped_when_a_key_is_invalid() -> None:
    msg = _problems({"numbering": {"pool_first": "x", "pool_last": "9999"}})
    assert "numbering.pool_first: must be digits" in msg
    assert "same length" not in msg


def test_alerts_need_recipients_when_on() -> None:
    with pytest.raises(ConfigError, match=r"alerts\.to: channel 'smtp' needs at least one recipient"):
        Settings.from_mapping({"alerts": {"channel": "smtp"}})
    assert Settings.from_mapping({"alerts": {"channel": "smtp", "to": "ops@example.com"}}).alerts.to == (
        "ops@example.com",
    )


def test_adopt_existing_is_off_by_default_and_validated() -> None:
    assert Settings().extensions.adopt_existing == "off"
    assert Settings.from_mapping({"extensions": {"adopt_existing": "email"}}).extensions.adopt_existing == "email"
    with pytest.raises(ConfigError, match=r"extensions\.adopt_existing"):
        Settings.from_mapping({"extensions": {"adopt_existing": "name"}})


def test_removal_protection_and_clear_on_empty_defaults_and_round_trip() -> None:
    default = Settings()
    assert default.extensions.delete_after_days == 30
    assert dict(default.extensions.clear_on_empty) == {"FirstName": True, "LastName": True, "EmailAddress": True,
                                                       "Mobile": True, "OutboundCallerID": True}
    assert (default.scope.protected_upns, default.scope.protected_group_id, default.scope.opt_out_attribute) == (
        (), None, None)
    custom = Settings.from_mapping({
        "extensions": {"removal_policy": "disable_then_delete", "delete_after_days": 14,
                       "clear_on_empty": {"Mobile": False}},
        "scope": {"protected_upns": [" CEO@Contoso.com", "ceo@contoso.com"], "protected_group_id": "g1",
                  "opt_out_attribute": "extensionAttribute9", "opt_out_value": "skip"},
    })
    assert custom.extensions.clear_on_empty["Mobile"] is False and custom.extensions.clear_on_empty["FirstName"]
    assert custom.scope.protected_upns == ("ceo@contoso.com",)
    assert Settings.from_json(json.dumps(custom.to_dict())) == custom


def test_graph_batch_concurrency_defaults_to_four_and_round_trips() -> None:
    assert Settings().graph.batch_concurrency == 4
    assert Settings().threecx.read_concurrency == 4
    settings = Settings.from_mapping({"graph": {"batch_concurrency": 2}})
    assert settings.graph.batch_concurrency == 2
    assert Settings.from_mapping(settings.to_dict()) == settings
