"""A deterministic Entra tenant: one ``random.Random(seed)`` draws every id, name and number.

The same ``(seed, users)`` always yields the same tenant, app registration and groups. Quotas
are index based so every category shows up in small tenants: about 10 % disabled accounts,
5 % guests, some users without phones, without mail or without an extension attribute.
"""

from __future__ import annotations

import datetime as dt
import random
import unicodedata
import uuid
from dataclasses import dataclass, field
from typing import Any

DEFAULT_DOMAIN = "contoso.example"
GUEST_DOMAIN = "fabrikam.example"

GIVEN_NAMES = (
    "Zoë", "Łukasz", "José", "Øyvind", "Ngọc", "Siobhán", "Anaïs", "Björn", "Chloé", "Dara",
    "Emma", "François", "Grace", "Hannah", "İlkay", "Jürgen", "Katarzyna", "Liam", "Mário", "Noah",
    "Olivia", "Pål", "Renée", "Sofía", "Thomas", "Uwe", "Valérie", "William", "Xavier", "Yasmin",
    "Adele", "Ben", "Carlos", "Diego", "Elif", "Fatima", "Gonçalo", "Hiroshi", "Ingrid", "Jan",
)
SURNAMES = (
    "Müller", "Nowak", "García", "Østergård", "Nguyễn", "O'Sullivan", "Dubois", "Schröder", "Smith",
    "Jones", "Brown", "de Vries", "van der Berg", "Janssen", "Lefèvre", "Martin", "Bernard", "Weiß",
    "Kowalczyk", "Fernández", "Ó Briain", "Johansson", "Hansen", "Taylor", "Wilson", "Moreau",
    "Peeters", "Rossi", "Yılmaz", "Zieliński", "Becker", "Clarke", "Davies", "Evans", "Fischer",  # noqa: RUF001
)
DEPARTMENTS = ("Sales", "Support", "Finance", "Engineering", "Marketing", "Operations", "HR", "Legal")
JOB_TITLES = ("Account Manager", "Support Engineer", "Accountant", "Software Engineer", "Team Lead",
              "Office Manager", "Consultant", "Recruiter", "Product Owner", "Sales Representative")
COUNTRIES = ("US", "GB", "DE", "FR", "NL")
OFFICES = {"US": "Redmond", "GB": "London", "DE": "Berlin", "FR": "Paris", "NL": "Amsterdam"}
LANGUAGES = {"US": "en-US", "GB": "en-GB", "DE": "de-DE", "FR": "fr-FR", "NL": "nl-NL"}
COUNTRY_NAMES = {"US": "United States", "GB": "United Kingdom", "DE": "Germany", "FR": "France",
                 "NL": "Netherlands"}

_FOLD = str.maketrans({"Ł": "L", "ł": "l", "Ø": "O", "ø": "o", "ß": "ss", "Đ": "D", "đ": "d",
                       "ı": "i", "Æ": "AE", "æ": "ae", "'": "", " ": ""})  # noqa: RUF001


def ascii_fold(text: str) -> str:
    """``"Østergård"`` -> ``"Ostergard"``: for mail nicknames and UPNs."""
    text = text.translate(_FOLD)
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def new_guid(rng: random.Random) -> str:
    """A version-4 GUID string drawn from ``rng``."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _digits(rng: random.Random, n: int) -> str:
    return "".join(str(rng.randrange(10)) for _ in range(n))


def business_phone(rng: random.Random, country: str) -> str:
    """A landline in one of the formats people type into Entra for ``country``."""
    if country == "US":
        last = f"01{_digits(rng, 2)}"
        return rng.choice((f"+1 (425) 555-{last}", f"+1 425-555-{last}", f"(206) 555-{last}",
                           f"+1 425 555 {last} ext. {_digits(rng, 3)}"))
    if country == "GB":
        last = f"0{_digits(rng, 3)}"
        return rng.choice((f"+44 20 7946 {last}", f"020 7946 {last}", f"+44 (0)20 7946 {last}"))
    if country == "DE":
        return rng.choice((f"030 {_digits(rng, 7)}", f"+49 30 {_digits(rng, 8)}", f"+49 (89) {_digits(rng, 6)}-0"))
    if country == "FR":
        d = [_digits(rng, 2) for _ in range(4)]
        return rng.choice((f"+33 1 {' '.join(d)}", f"01 {' '.join(d)}", f"+33 (0)1 {'.'.join(d)}"))
    return rng.choice((f"+31 20 {_digits(rng, 3)} {_digits(rng, 4)}", f"020-{_digits(rng, 7)}"))


def mobile_phone(rng: random.Random, country: str) -> str:
    """A mobile number in one of the formats people type into Entra for ``country``."""
    if country == "US":
        return rng.choice((f"+1 206 555 01{_digits(rng, 2)}", f"+1 (206) 555-01{_digits(rng, 2)}"))
    if country == "GB":
        return rng.choice((f"+44 7700 900{_digits(rng, 3)}", f"07700 900{_digits(rng, 3)}"))
    if country == "DE":
        return rng.choice((f"+49 151 {_digits(rng, 8)}", f"0151 {_digits(rng, 8)}", f"0170/{_digits(rng, 7)}"))
    if country == "FR":
        return rng.choice((f"+33 6 {_digits(rng, 2)} {_digits(rng, 2)} {_digits(rng, 2)} {_digits(rng, 2)}",
                           f"06{_digits(rng, 8)}"))
    return rng.choice((f"+31 6 {_digits(rng, 8)}", f"06-{_digits(rng, 8)}"))


def empty_extension_attributes() -> dict[str, str | None]:
    """``onPremisesExtensionAttributes`` with all 15 slots unset."""
    return {f"extensionAttribute{i}": None for i in range(1, 16)}


@dataclass
class AppSeed:
    """The tenant and its one registered app (client credentials)."""

    tenant_id: str
    client_id: str
    client_secret: str
    display_name: str = "m365-3cx-sync (emulator)"


@dataclass
class TenantSeed:
    """What :func:`build_tenant` produces."""

    app: AppSeed
    users: list[dict[str, Any]]
    groups: list[dict[str, Any]] = field(default_factory=list)


def _secret(rng: random.Random) -> str:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_."
    head = "".join(rng.choice(alphabet) for _ in range(3))
    return f"{head}8Q~" + "".join(rng.choice(alphabet) for _ in range(34))


def build_tenant(seed: int = 42, users: int = 40, domain: str = DEFAULT_DOMAIN) -> TenantSeed:
    """Build the seeded tenant.

    :param seed: seed of the single random source.
    :param users: number of users.
    :param domain: the tenant's verified domain (UPNs and mail).
    """
    rng = random.Random(seed)
    app = AppSeed(tenant_id=new_guid(rng), client_id=new_guid(rng), client_secret=_secret(rng))
    used_upns: set[str] = set()
    extensions = rng.sample(range(100, 300), k=min(users, 200))
    base_created = dt.datetime(2021, 3, 1, 8, 0, tzinfo=dt.UTC)
    people: list[dict[str, Any]] = []
    for i in range(users):
        given = GIVEN_NAMES[i % len(GIVEN_NAMES)] if i < len(GIVEN_NAMES) else rng.choice(GIVEN_NAMES)
        surname = rng.choice(SURNAMES)
        country = COUNTRIES[rng.randrange(len(COUNTRIES))]
        guest = i % 20 == 13
        nickname = f"{ascii_fold(given)}.{ascii_fold(surname)}".lower()
        candidate, n = nickname, 1
        while candidate in used_upns:
            n += 1
            candidate = f"{nickname}{n}"
        used_upns.add(candidate)
        if guest:
            upn = f"{candidate}_{GUEST_DOMAIN.replace('.', '_')}#EXT#@{domain}"
            mail: str | None = f"{candidate}@{GUEST_DOMAIN}"
        else:
            upn = f"{candidate}@{domain}"
            mail = None if i % 12 == 9 else upn
        no_phones = i % 8 == 5
        phones = [] if no_phones or rng.random() < 0.2 else [business_phone(rng, country)]
        mobile = None if no_phones or rng.random() < 0.25 else mobile_phone(rng, country)
        attrs = empty_extension_attributes()
        if not guest and i % 9 != 4 and i < len(extensions):
            attrs["extensionAttribute1"] = str(extensions[i])
        elif i % 18 == 4:
            attrs["extensionAttribute1"] = ""
        attrs["extensionAttribute2"] = rng.choice(("Standard", "Premium", None))
        created = base_created + dt.timedelta(days=rng.randrange(900), minutes=rng.randrange(1440))
        people.append({
            "id": new_guid(rng),
            "displayName": f"{given} {surname}",
            "givenName": given,
            "surname": surname,
            "userPrincipalName": upn,
            "mail": mail,
            "mailNickname": candidate,
            "businessPhones": phones,
            "mobilePhone": mobile,
            "jobTitle": None if guest else rng.choice(JOB_TITLES),
            "officeLocation": None if guest else OFFICES[country],
            "preferredLanguage": LANGUAGES[country],
            "accountEnabled": i % 10 != 7,
            "usageLocation": country,
            "department": None if guest else rng.choice(DEPARTMENTS),
            "companyName": "Fabrikam" if guest else "Contoso",
            "employeeId": None if guest else f"E{10000 + i}",
            "city": OFFICES[country],
            "country": COUNTRY_NAMES[country],
            "userType": "Guest" if guest else "Member",
            "createdDateTime": created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "onPremisesExtensionAttributes": attrs,
            "onPremisesSyncEnabled": None,
            "otherMails": [],
            "proxyAddresses": [] if mail is None or guest else [f"SMTP:{mail}"],
        })
    telephony_id, overflow_id, staff_id = new_guid(rng), new_guid(rng), new_guid(rng)
    enabled_members = [u for u in people if u["accountEnabled"] and u["userType"] == "Member"]
    overflow = [u["id"] for j, u in enumerate(enabled_members) if j % 7 == 3]
    direct = [u["id"] for u in enabled_members if u["id"] not in overflow]
    groups = [
        {"id": telephony_id, "displayName": "Telephony Users", "mailNickname": "telephony-users",
         "description": "Users who get a 3CX extension", "members": [*direct, overflow_id]},
        {"id": overflow_id, "displayName": "Telephony Overflow", "mailNickname": "telephony-overflow",
         "description": "Nested in Telephony Users", "members": overflow},
        {"id": staff_id, "displayName": "All Staff", "mailNickname": "all-staff",
         "description": "Every member account", "members": [u["id"] for u in people if u["userType"] == "Member"]},
    ]
    return TenantSeed(app=app, users=people, groups=groups)
