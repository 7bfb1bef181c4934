"""``contacts.shared_mailboxes``, ``contacts.shared_mailbox_folder`` and ``contacts.org_contacts``."""

from __future__ import annotations

import pytest

from m365_3cx.errors import ConfigError
from m365_3cx.settings import Settings


def test_other_sources_are_off_by_default() -> None:
    contacts = Settings().contacts
    assert (contacts.shared_mailboxes, contacts.shared_mailbox_folder, contacts.org_contacts) == ((), None, False)


def test_shared_mailboxes_are_kept_once_each_and_round_trip() -> None:
    s = Settings.from_mapping({"contacts": {"shared_mailboxes": ["Reception@contoso.com", "sales@contoso.com",
                                                                 "reception@CONTOSO.com"],
                                            "shared_mailbox_folder": "Phonebook", "org_contacts": True}})
    assert s.contacts.shared_mailboxes == ("reception@contoso.com", "sales@contoso.com")
    assert s.contacts.shared_mailbox_folder == "Phonebook"
    assert Settings.from_mapping(s.to_dict()) == s


@pytest.mark.parametrize(("value", "problem"), [
    ({"shared_mailboxes": ["reception"]}, "contacts.shared_mailboxes: must be a list of user principal names"),
    ({"shared_mailboxes": "reception@contoso.com"}, "contacts.shared_mailboxes: must be a list"),
    ({"shared_mailbox_folder": ""}, "contacts.shared_mailbox_folder: must not be empty"),
    ({"org_contacts": "yes"}, "contacts.org_contacts: must be true or false"),
])
def test_bad_values_are_named(value: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_mapping({"contacts": value})
    assert problem in str(info.value)
