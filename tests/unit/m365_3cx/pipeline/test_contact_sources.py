"""orgContact -> the Outlook contact shape the staging boundary and row builder take (pure)."""

from __future__ import annotations

from m365_3cx.pipeline.contact_sources import org_contact_as_contact
from m365_3cx.staging.contacts import contact_row_from_graph


def test_phones_go_to_their_slots_and_the_rest_is_left_out() -> None:
    phones = [("business", "+1 206 555 0100"), ("mobile", "+1 206 555 0101"), ("mobile", "+1 206 555 0102"),
              ("home", "+1 206 555 0103"), ("businessFax", "+1 206 555 0104"), ("pager", "5"), ("business", None),
              ("business", "  ")]
    item = {"id": "o1", "displayName": "Fabrikam Desk", "givenName": "Fab", "surname": "Desk",
            "companyName": "Fabrikam", "department": "Sales", "jobTitle": "Desk", "mail": "desk@fabrikam.example",
            "phones": [*({"type": kind, "number": number} for kind, number in phones), "junk"]}
    contact = org_contact_as_contact(item)
    assert contact["mobilePhone"] == "+1 206 555 0101"
    assert contact["businessPhones"] == ["+1 206 555 0100"] and contact["homePhones"] == ["+1 206 555 0103"]
    assert contact["emailAddresses"] == [{"address": "desk@fabrikam.example"}]
    assert contact["categories"] == []  # orgContacts have no categories
    row = contact_row_from_graph(contact, "org", None, "org")
    assert (row["owner_id"], row["source"], row["company_name"], row["email_addresses"]) == (
        "org", "org", "Fabrikam", ["desk@fabrikam.example"])


def test_removed_markers_and_empty_contacts_survive() -> None:
    assert org_contact_as_contact({"id": "o2", "@removed": {"reason": "deleted"}})["@removed"] == {"reason": "deleted"}
    empty = org_contact_as_contact({"id": "o3"})
    assert (empty["mobilePhone"], empty["businessPhones"], empty["emailAddresses"]) == (None, [], [])
