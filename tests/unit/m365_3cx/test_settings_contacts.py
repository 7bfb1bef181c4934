from __future__ import annotations

import pytest

from m365_3cx.errors import ConfigError
from m365_3cx.settings import Settings


def test_contacts_defaults() -> None:
    contacts = Settings().contacts
    assert (contacts.personal_contacts, contacts.folder_name, contacts.exclude_category) == ("off", "3CX", "Private")
    assert contacts.org_contacts is False and contacts.shard_size == 200


def test_contacts_section_round_trips() -> None:
    settings = Settings.from_mapping({"contacts": {"personal_contacts": "folder", "folder_name": "Phone",
                                                   "exclude_category": None, "shard_size": 50}})
    assert settings.contacts.shard_size == 50 and settings.contacts.exclude_category is None
    assert Settings.from_mapping(settings.to_dict()) == settings


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"shard_size": 0}, "contacts.shard_size: must be >= 1"),
        ({"shard_size": 5001}, "contacts.shard_size: must be <= 5000"),
        ({"shard_size": "200"}, "contacts.shard_size: must be an integer"),
        ({"personal_contacts": "some"}, "contacts.personal_contacts: must be one of all, folder, off"),
        ({"folder_name": " "}, "contacts.folder_name: must not be empty"),
    ],
)
def test_invalid_contacts_settings_name_the_key(value: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.from_mapping({"contacts": value})
    assert message in str(err.value)
