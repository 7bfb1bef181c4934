"""Deterministic starting data: departments and the unmanaged extensions a sync must never touch.

Every generated value comes from the one ``random.Random`` the backend owns, so the same seed
gives the same PBX. The client secret is derived from the seed alone (stable across resets).
"""

from __future__ import annotations

import random
import string
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emulators.threecx.state import PbxBackend

GROUPS: list[dict[str, Any]] = [
    {"Name": "DEFAULT", "IsDefault": True},
    {"Name": "Sales", "IsDefault": False},
]

UNMANAGED_USERS: list[dict[str, Any]] = [
    {"Number": "100", "FirstName": "Reception", "LastName": "", "EmailAddress": "reception@contoso.example"},
    {"Number": "101", "FirstName": "Conference", "LastName": "Room", "EmailAddress": ""},
    {"Number": "102", "FirstName": "Megan", "LastName": "Bowen", "EmailAddress": "MeganB@contoso.example",
     "Tags": ["MS"], "MS365SignInEnabled": True, "MS365ContactsEnabled": True},
    {"Number": "999", "FirstName": "Fax", "LastName": "Server", "EmailAddress": "", "Tags": ["FaxServer"],
     "HideInPhonebook": True, "_protected": True},
]
"""``_protected`` users cannot be deleted (like 3CX system extensions)."""


def client_secret_for(seed: int) -> str:
    """The service principal's API key the emulator accepts by default for ``seed``."""
    rng = random.Random(f"threecx-client-secret:{seed}")
    return "".join(rng.choice(string.ascii_letters + string.digits) for _ in range(32))


def random_text(rng: random.Random, length: int, alphabet: str = string.ascii_letters + string.digits) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


def seed_backend(backend: PbxBackend, *, unmanaged: bool) -> None:
    """Fill an empty backend: the departments, then (optionally) the unmanaged extensions."""
    for group in GROUPS:
        backend.add_group(**group)
    if unmanaged:
        for spec in UNMANAGED_USERS:
            body = dict(spec)
            protected = bool(body.pop("_protected", False))
            backend.create_user(body, admin=True, protected=protected)


def seed_synthetic(backend: PbxBackend, *, users: int = 0, contacts: int = 0) -> None:
    """Add ``users`` extensions (numbers from 20000) and ``contacts`` phonebook entries, as a sync would
    have created them (``Tags``/``Tag`` set), through the backend's own validation; for benchmarks."""
    for i in range(users):
        backend.create_user({"Number": str(20000 + i), "FirstName": f"Bench{i}", "LastName": "User",
                             "EmailAddress": f"bench{i}@contoso.example"}, admin=True)
    for i in range(contacts):
        backend.create_contact({"FirstName": f"Contact{i}", "LastName": "Bench", "CompanyName": "Fabrikam",
                                "PhoneNumber": f"+49 30 {1000000 + i}", "Tag": f"m365:bench:{i}",
                                "ContactType": "M365"})
