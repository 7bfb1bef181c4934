"""Typed, validated settings of the sync (the ``m365_3cx_settings`` Variable).

Every key has a default, so ``Settings()`` and ``Settings.from_mapping({})`` are
complete. :meth:`Settings.from_mapping` checks the whole document at once and
raises a single :class:`~m365_3cx.errors.ConfigError` that lists every problem
with its dotted key path, e.g.::

    invalid settings (2 problems):
      - numbering.pool_first: must be digits, got '2a0'
      - timezone: unknown IANA time zone 'Mars/Olympus'

Sections ``contacts`` and ``presence`` are validated now and used by the
contacts and presence features.
"""

from __future__ import annotations

import json
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from m365_3cx.errors import ConfigError

__all__ = [
    "DEFAULT_SETTINGS_JSON",
    "PROFILE_NAMES",
    "ContactsSettings",
    "ExtensionsSettings",
    "GuardSettings",
    "LogSettings",
    "NumberingSettings",
    "PresenceSettings",
    "PushSettings",
    "RetentionSettings",
    "ScopeSettings",
    "Settings",
    "TeamsPresenceSettings",
    "ThreeCXSettings",
]

#: The XAPI's internal names of the five 3CX V20 status profiles.
PROFILE_NAMES: Final = ("Available", "Away", "Out of office", "Custom 1", "Custom 2")

#: Keys of ``presence.mapping``: Graph ``showAs`` values plus ``automatic_replies`` and ``default``.
PRESENCE_MAPPING_DEFAULTS: Final[Mapping[str, str | None]] = MappingProxyType(
    {
        "busy": "Away",
        "oof": "Out of office",
        "automatic_replies": "Out of office",
        "workingElsewhere": "Custom 2",
        "tentative": None,
        "default": "Available",
    }
)

#: Graph presence values (learn.microsoft.com/graph/api/resources/presence): ``availability`` and ``activity``.
TEAMS_AVAILABILITY: Final = ("Available", "AvailableIdle", "Away", "BeRightBack", "Busy", "BusyIdle",
                             "DoNotDisturb", "Offline", "PresenceUnknown")
TEAMS_ACTIVITY: Final = ("Available", "Away", "BeRightBack", "Busy", "DoNotDisturb", "InACall",
                         "InAConferenceCall", "Inactive", "InAMeeting", "Offline", "OffWork", "OutOfOffice",
                         "PresenceUnknown", "Presenting", "UrgentInterruptionsOnly")
TEAMS_PRESENCE_VALUES: Final = tuple(dict.fromkeys((*TEAMS_AVAILABILITY, *TEAMS_ACTIVITY)))

#: Keys of ``presence.teams.mapping`` set by default (``None`` = no change); any other
#: :data:`TEAMS_PRESENCE_VALUES` key may be added. 3CX's "Out of office" profile is the one its
#: clients show as Do Not Disturb.
TEAMS_MAPPING_DEFAULTS: Final[Mapping[str, str | None]] = MappingProxyType(
    {
        "Available": None,
        "AvailableIdle": None,
        "Busy": "Away",
        "BusyIdle": "Away",
        "DoNotDisturb": "Out of office",
        "Away": "Away",
        "BeRightBack": "Away",
        "Offline": None,
        "PresenceUnknown": None,
    }
)

_EXTENSION_ATTRIBUTES: Final = tuple(f"extensionAttribute{i}" for i in range(1, 16))

#: Keys of ``extensions.clear_on_empty``: the managed 3CX fields a Graph value can empty.
CLEAR_ON_EMPTY_DEFAULTS: Final[Mapping[str, bool]] = MappingProxyType(
    {"FirstName": True, "LastName": True, "EmailAddress": True, "Mobile": True, "OutboundCallerID": True}
)


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class ScopeSettings:
    """Which Entra users are in scope.

    :param group_id: only (transitive) members of this group; ``None`` = all users.
    :param include_guests: include ``userType == "Guest"`` users.
    :param user_filter: a Graph ``$filter`` fragment ANDed to the user query.
    :param protected_upns: users (UPNs, case-insensitive) whose extensions the sync never creates,
        changes or removes.
    :param protected_group_id: the same for the (transitive) members of this group; ``None`` = none.
    :param opt_out_attribute: the ``onPremisesExtensionAttributes`` key a user opts out with;
        ``None`` = no opt-out. An opted-out user's extension is left alone like a protected one.
    :param opt_out_value: the value of ``opt_out_attribute`` that opts out (trimmed, case-insensitive).
    """

    group_id: str | None = None
    include_guests: bool = False
    user_filter: str | None = None
    protected_upns: tuple[str, ...] = ()
    protected_group_id: str | None = None
    opt_out_attribute: str | None = None
    opt_out_value: str = "no-3cx-sync"


@dataclass(frozen=True)
class NumberingSettings:
    """How a new user gets an extension number.

    :param policy: ``attribute``, ``phone_suffix`` or ``pool``.
    :param attribute: the ``onPremisesExtensionAttributes`` key read by policy ``attribute``.
    :param suffix_digits: how many trailing digits of ``businessPhones[0]`` policy ``phone_suffix`` uses.
    :param pool_first: first number of the pool (digits).
    :param pool_last: last number of the pool (digits, same length as ``pool_first``).
    :param min_length: shortest acceptable extension number.
    :param max_length: longest acceptable extension number.
    :param fallback_to_pool: take a pool number when the policy yields none or an unusable one.
    :param quarantine_days: days a released number stays reserved for its former user.
    """

    policy: str = "pool"
    attribute: str = "extensionAttribute1"
    suffix_digits: int = 3
    pool_first: str = "200"
    pool_last: str = "899"
    min_length: int = 2
    max_length: int = 7
    fallback_to_pool: bool = True
    quarantine_days: int = 30


@dataclass(frozen=True)
class ExtensionsSettings:
    """How 3CX extensions are managed.

    :param removal_policy: what happens to the extension of a deleted, disabled or out-of-scope
        user: ``disable``, ``delete`` or ``ignore``.
    :param manage_outbound_caller_id: also sync ``OutboundCallerID`` (from ``businessPhones[0]``).
    :param default_region: ISO 3166 alpha-2 region for numbers without a country code when the
        user has no ``usageLocation``.
    :param group_name: 3CX department for new users; ``None`` = the PBX's default group.
    :param adopt_existing: ``off`` (default: extensions the sync did not create are never touched)
        or ``email``: an unmanaged extension whose e-mail address is an in-scope user's own (and
        that no other extension shares, and 3CX's own M365 sync does not own) becomes that
        user's managed extension, keeping its number.
    :param delete_after_days: with ``removal_policy = "disable_then_delete"``: days an extension
        stays disabled (the user may come back and gets it back, enabled, same number) before it is
        deleted (a guarded, audited removal).
    :param clear_on_empty: managed 3CX field -> whether an empty Graph value clears the 3CX value
        (``true``, the default for every field) or leaves what 3CX holds. Read-only mapping.
    """

    removal_policy: str = "disable"
    manage_outbound_caller_id: bool = False
    default_region: str = "US"
    group_name: str | None = None
    adopt_existing: str = "off"
    delete_after_days: int = 30
    clear_on_empty: Mapping[str, bool] = field(default_factory=lambda: MappingProxyType(dict(CLEAR_ON_EMPTY_DEFAULTS)))


@dataclass(frozen=True)
class ThreeCXSettings:
    """How the apply steps talk to the PBX.

    :param write_concurrency: 3CX writes in flight at once inside one apply task (over the one
        shared token; throttling answers, 429/503 with ``Retry-After``, are honoured per request).
        The ``threecx_api`` pool still keeps apply tasks of different runs apart.
    :param read_concurrency: pages of a collection (users, phonebook, profiles) read at once by a
        snapshot, over the same token (``$orderby=Id&$top=100&$skip`` offsets read ahead).
    """

    write_concurrency: int = 4
    read_concurrency: int = 4


@dataclass(frozen=True)
class GraphSettings:
    """How the extract steps talk to Microsoft Graph.

    :param batch_concurrency: ``$batch`` requests in flight at once inside one extract task.
        Items of one mailbox never exceed Outlook's 4 concurrent requests between them; each
        inner 429/503 is retried after its ``Retry-After``. The ``graph_api`` pool bounds the
        tasks, so at most pool slots x this many batches are in flight.
    """

    batch_concurrency: int = 4


@dataclass(frozen=True)
class GuardSettings:
    """Safety guards of the apply step.

    :param mass_removal_min: removals always allowed in one run.
    :param mass_removal_fraction: share of managed extensions that may be removed in one run;
        the limit is ``max(mass_removal_min, fraction * managed)``.
    :param approval_timeout_minutes: how long a run over the guard waits for a human decision on
        its removals; no answer in time rejects them (the rest of the plan is applied). Capped by
        the DAG's run timeout.
    :param lease_wait_seconds: how long a run's snapshot/plan/apply step waits for a feature
        another run is syncing before it fails (retriable; :mod:`m365_3cx.staging.lease`).
    :param lease_ttl_minutes: a feature lease not renewed for this long (a killed worker) may be
        taken over; keep it above the tasks' execution timeout (30 min).
    """

    mass_removal_min: int = 5
    mass_removal_fraction: float = 0.10
    approval_timeout_minutes: int = 60
    lease_wait_seconds: int = 120
    lease_ttl_minutes: int = 45


@dataclass(frozen=True)
class AlertSettings:
    """Failure alerts sent by the DAGs' ``on_failure_callback`` (off by default).

    :param channel: ``off`` or ``smtp`` (through an Airflow SMTP connection).
    :param smtp_conn_id: the SMTP connection id.
    :param to: recipients.
    :param from_email: sender; ``None`` = the SMTP connection's default.
    :param base_url: Airflow UI base URL, for a link to the failed run; ``None`` = no link.
    :param stale_users_minutes: the watchdog alerts when no users sync (full or delta run) succeeded
        for this long; ``0`` = never.
    :param stale_phonebook_minutes: the same for the phonebook (full or delta run).
    :param stale_status_minutes: the same for the 3CX statuses (hourly or delta run; only with
        ``presence.enabled``).
    """

    channel: str = "off"
    smtp_conn_id: str = "smtp_default"
    to: tuple[str, ...] = ()
    from_email: str | None = None
    base_url: str | None = None
    stale_users_minutes: int = 90
    stale_phonebook_minutes: int = 90
    stale_status_minutes: int = 180


@dataclass(frozen=True)
class RetentionSettings:
    """How long the run history stays in staging (daily cleanup by ``m365_3cx_maintenance``).

    :param days: runs, plans, audit, notes and traces older than this are deleted (maps never).
    """

    days: int = 180


@dataclass(frozen=True)
class LogSettings:
    """What the task logs show.

    :param plan_preview: how many planned changes each plan step lists in its log (0 = none).
    """

    plan_preview: int = 10


@dataclass(frozen=True)
class ContactsSettings:
    """Sources of the company phonebook (contacts feature).

    :param personal_contacts: ``all`` folders, one ``folder`` or ``off``.
    :param folder_name: the contact folder read when ``personal_contacts == "folder"``.
    :param exclude_category: contacts with this Outlook category are skipped; ``None`` = none
        (personal and shared-mailbox contacts; organisational contacts have no categories).
    :param org_contacts: also sync the tenant's organisational contacts (``/contacts``,
        ``OrgContact.Read.All``).
    :param shard_size: users per mapped extract task (contacts of a shard are read with ``$batch``).
    :param shared_mailboxes: UPNs of shared mailboxes whose contacts go to the company phonebook
        (``Contacts.Read``; read whatever ``personal_contacts`` says).
    :param shared_mailbox_folder: the contact folder read in each shared mailbox; ``None`` = the
        default Contacts folder.
    """

    personal_contacts: str = "off"
    folder_name: str = "3CX"
    exclude_category: str | None = "Private"
    org_contacts: bool = False
    shard_size: int = 200
    shared_mailboxes: tuple[str, ...] = ()
    shared_mailbox_folder: str | None = None


def _default_mapping() -> Mapping[str, str | None]:
    return MappingProxyType(dict(PRESENCE_MAPPING_DEFAULTS))


def _default_teams_mapping() -> Mapping[str, str | None]:
    return MappingProxyType(dict(TEAMS_MAPPING_DEFAULTS))


@dataclass(frozen=True)
class TeamsPresenceSettings:
    """Teams presence -> 3CX status (``presence.teams``; needs ``presence.enabled``).

    :param enabled: poll every managed user's Teams presence (``Presence.Read.All``) on each
        delta and hourly run and let mapped values decide the status (see
        :mod:`m365_3cx.transform.presence` for the precedence).
    :param mapping: Graph ``activity``/``availability`` value -> 3CX profile name, or ``None`` =
        no change (the calendar and the default decide). ``activity`` is looked up first.
    :param max_age_minutes: a polled presence older than this no longer counts (a poll failed or
        the user left the poll); keep it above the delta interval.
    :param requests_per_30s: client-side budget of presence requests (650 users each) per 30 s;
        Graph allows 1,500 per app per tenant.
    """

    enabled: bool = False
    mapping: Mapping[str, str | None] = field(default_factory=_default_teams_mapping)
    max_age_minutes: int = 15
    requests_per_30s: int = 100


@dataclass(frozen=True)
class PresenceSettings:
    """Calendar presence (presence feature).

    :param enabled: switch 3CX profiles from calendars and automatic replies.
    :param mode: ``respect`` (switch back only from a profile the sync set) or ``override``.
    :param mapping: ``showAs`` value / ``automatic_replies`` / ``default`` -> 3CX profile name
        (``None`` = does not count). Read-only mapping.
    :param window_days_back: calendar window start, days before now.
    :param window_days_ahead: calendar window end, days after now.
    :param store_subjects: store event subjects in staging (never for private/confidential events).
    :param shard_size: users per mapped calendar-extract task (dynamic task mapping).
    :param teams: :class:`TeamsPresenceSettings`.
    """

    enabled: bool = False
    mode: str = "respect"
    mapping: Mapping[str, str | None] = field(default_factory=_default_mapping)
    window_days_back: int = 1
    window_days_ahead: int = 7
    store_subjects: bool = False
    shard_size: int = 200
    teams: TeamsPresenceSettings = field(default_factory=TeamsPresenceSettings)


@dataclass(frozen=True)
class PushSettings:
    """Graph change notifications (push): seconds instead of the delta interval.

    :param enabled: keep Graph subscriptions and let notifications trigger the ``m365_3cx_push`` DAG.
    :param notification_url: public HTTPS URL of the receiver's ``/notifications`` route (through
        the reverse proxy in front of the Airflow api-server).
    :param lifecycle_url: public HTTPS URL of the receiver's ``/lifecycle`` route.
    :param renew_margin_minutes: renew a subscription when it expires within this many minutes.
    """

    enabled: bool = False
    notification_url: str | None = None
    lifecycle_url: str | None = None
    renew_margin_minutes: int = 360


# --------------------------------------------------------------------------- validators


class _Invalid(Exception):
    """One problem with one value (message without the key path)."""


_MISSING: Final = object()


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"must be true or false, got {_type_name(value)}")
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string, got {_type_name(value)}")
    if not value.strip():
        raise _Invalid("must not be empty")
    return value


def _optional(check: Callable[[object], Any]) -> Callable[[object], Any]:
    def _check(value: object) -> Any:
        return None if value is None else check(value)

    return _check


def _choice(*allowed: str) -> Callable[[object], str]:
    def _check(value: object) -> str:
        if not isinstance(value, str) or value not in allowed:
            shown = repr(value) if isinstance(value, str) else _type_name(value)
            raise _Invalid(f"must be one of {', '.join(allowed)}; got {shown}")
        return value

    return _check


def _int(minimum: int | None = None, maximum: int | None = None) -> Callable[[object], int]:
    def _check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"must be an integer, got {_type_name(value)}")
        if minimum is not None and value < minimum:
            raise _Invalid(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise _Invalid(f"must be <= {maximum}, got {value}")
        return value

    return _check


def _float(minimum: float, maximum: float) -> Callable[[object], float]:
    def _check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _Invalid(f"must be a number, got {_type_name(value)}")
        if not minimum <= value <= maximum:
            raise _Invalid(f"must be between {minimum} and {maximum}, got {value}")
        return float(value)

    return _check


def _https_url(value: object) -> str:
    text = _str(value).strip()
    if not text.lower().startswith("https://") or len(text) > 2000 or any(c.isspace() for c in text):
        raise _Invalid(f"must be an https:// URL, got {text[:80]!r}")
    return text


def _addresses(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and "@" in v for v in value):
        raise _Invalid(f"must be a list of e-mail addresses, got {str(value)[:60]!r}")
    return tuple(v.strip() for v in value)


def _upns(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and "@" in v.strip()[1:-1] for v in value):
        raise _Invalid(f"must be a list of user principal names (name@domain), got {str(value)[:60]!r}")
    return tuple(sorted({v.strip().lower() for v in value}))


def _clear_on_empty(value: object) -> Mapping[str, bool]:
    if not isinstance(value, Mapping):
        raise _Invalid(f"must be an object of field -> true/false, got {_type_name(value)}")
    merged = dict(CLEAR_ON_EMPTY_DEFAULTS)
    for key, flag in value.items():
        if key not in CLEAR_ON_EMPTY_DEFAULTS:
            raise _Invalid(f"unknown field {key!r} (known: {', '.join(CLEAR_ON_EMPTY_DEFAULTS)})")
        if not isinstance(flag, bool):
            raise _Invalid(f"{key} must be true or false, got {_type_name(flag)}")
        merged[key] = flag
    return MappingProxyType(merged)


def _digits(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be a string of digits, got {_type_name(value)}")
    if not value.isascii() or not value.isdigit():
        raise _Invalid(f"must be digits, got {value!r}")
    return value


def _region(value: object) -> str:
    import phonenumbers

    if not isinstance(value, str) or value not in phonenumbers.SUPPORTED_REGIONS:
        shown = repr(value) if isinstance(value, str) else _type_name(value)
        raise _Invalid(f"must be an ISO 3166 alpha-2 region known to phonenumbers (e.g. 'US'), got {shown}")
    return value


def _timezone(value: object) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"must be an IANA time zone name, got {_type_name(value)}")
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise _Invalid(f"unknown IANA time zone {value!r}") from None
    return value


def _profile(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value not in PROFILE_NAMES:
        shown = repr(value) if isinstance(value, str) else _type_name(value)
        raise _Invalid(f"must be one of {', '.join(PROFILE_NAMES)} or null; got {shown}")
    return value


# key -> validator, per section; the dataclass supplies the defaults.
_SECTIONS: Final[dict[str, tuple[type, dict[str, Callable[[object], Any]]]]] = {
    "scope": (
        ScopeSettings,
        {"group_id": _optional(_str), "include_guests": _bool, "user_filter": _optional(_str),
         "protected_upns": _upns, "protected_group_id": _optional(_str),
         "opt_out_attribute": _optional(_choice(*_EXTENSION_ATTRIBUTES)), "opt_out_value": _str},
    ),
    "numbering": (
        NumberingSettings,
        {
            "policy": _choice("attribute", "phone_suffix", "pool"),
            "attribute": _choice(*_EXTENSION_ATTRIBUTES),
            "suffix_digits": _int(1, 15),
            "pool_first": _digits,
            "pool_last": _digits,
            "min_length": _int(1, 15),
            "max_length": _int(1, 15),
            "fallback_to_pool": _bool,
            "quarantine_days": _int(0, 3650),
        },
    ),
    "threecx": (ThreeCXSettings, {"write_concurrency": _int(1, 32), "read_concurrency": _int(1, 16)}),
    "graph": (GraphSettings, {"batch_concurrency": _int(1, 16)}),
    "extensions": (
        ExtensionsSettings,
        {
            "removal_policy": _choice("disable", "delete", "disable_then_delete", "ignore"),
            "manage_outbound_caller_id": _bool,
            "default_region": _region,
            "group_name": _optional(_str),
            "adopt_existing": _choice("off", "email"),
            "delete_after_days": _int(1, 3650),
            "clear_on_empty": _clear_on_empty,
        },
    ),
    "guards": (
        GuardSettings,
        {"mass_removal_min": _int(0), "mass_removal_fraction": _float(0.0, 1.0),
         "approval_timeout_minutes": _int(1),
         "lease_wait_seconds": _int(0, 86_400), "lease_ttl_minutes": _int(1, 24 * 60)},
    ),
    "alerts": (
        AlertSettings,
        {
            "channel": _choice("off", "smtp"),
            "smtp_conn_id": _str,
            "to": _addresses,
            "from_email": _optional(_str),
            "base_url": _optional(_str),
            "stale_users_minutes": _int(0, 525_600),
            "stale_phonebook_minutes": _int(0, 525_600),
            "stale_status_minutes": _int(0, 525_600),
        },
    ),
    "retention": (RetentionSettings, {"days": _int(7, 36_500)}),
    "logs": (LogSettings, {"plan_preview": _int(0, 1000)}),
    "contacts": (
        ContactsSettings,
        {
            "personal_contacts": _choice("all", "folder", "off"),
            "folder_name": _str,
            "exclude_category": _optional(_str),
            "org_contacts": _bool,
            "shard_size": _int(1, 5000),
            "shared_mailboxes": _upns,
            "shared_mailbox_folder": _optional(_str),
        },
    ),
    "presence": (
        PresenceSettings,
        {
            "enabled": _bool,
            "mode": _choice("respect", "override"),
            "mapping": lambda value: value,  # checked key by key in _parse_mapping
            "window_days_back": _int(0, 366),
            "window_days_ahead": _int(0, 366),
            "store_subjects": _bool,
            "shard_size": _int(1, 5000),
            "teams": lambda value: value,  # checked key by key in _parse_teams
        },
    ),
    "push": (
        PushSettings,
        {
            "enabled": _bool,
            "notification_url": _optional(_https_url),
            "lifecycle_url": _optional(_https_url),
            "renew_margin_minutes": _int(15, 2880),
        },
    ),
}

_TEAMS_FIELDS: Final[dict[str, Callable[[object], Any]]] = {
    "enabled": _bool,
    "mapping": lambda value: value,
    "max_age_minutes": _int(1, 24 * 60),
    "requests_per_30s": _int(1, 1000),
}


def _parse_section(name: str, raw: object, problems: list[str]) -> dict[str, Any]:
    """Validate one section; append problems; return the valid keyword arguments."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        problems.append(f"{name}: must be an object, got {_type_name(raw)}")
        return {}
    _, fields = _SECTIONS[name]
    values: dict[str, Any] = {}
    for key in raw:
        if key not in fields:
            problems.append(f"{name}.{key}: unknown key (known: {', '.join(fields)})")
    for key, check in fields.items():
        if key not in raw:
            continue
        try:
            values[key] = check(raw[key])
        except _Invalid as exc:
            problems.append(f"{name}.{key}: {exc}")
    return values


def _parse_mapping(raw: object, problems: list[str]) -> Mapping[str, str | None] | None:
    path = "presence.mapping"
    if not isinstance(raw, Mapping):
        problems.append(f"{path}: must be an object, got {_type_name(raw)}")
        return None
    merged = dict(PRESENCE_MAPPING_DEFAULTS)
    ok = True
    for key, value in raw.items():
        if key not in PRESENCE_MAPPING_DEFAULTS:
            problems.append(f"{path}.{key}: unknown key (known: {', '.join(PRESENCE_MAPPING_DEFAULTS)})")
            ok = False
            continue
        try:
            merged[key] = _profile(value)
        except _Invalid as exc:
            problems.append(f"{path}.{key}: {exc}")
            ok = False
            continue
        if key == "default" and merged[key] is None:
            problems.append(f"{path}.default: must be a profile name, not null")
            ok = False
    return MappingProxyType(merged) if ok else None


def _parse_teams(raw: object, problems: list[str]) -> TeamsPresenceSettings | None:
    """``presence.teams``: its keys, and its mapping merged over :data:`TEAMS_MAPPING_DEFAULTS`."""
    path = "presence.teams"
    if not isinstance(raw, Mapping):
        problems.append(f"{path}: must be an object, got {_type_name(raw)}")
        return None
    before = len(problems)
    values: dict[str, Any] = {}
    for key in raw:
        if key not in _TEAMS_FIELDS:
            problems.append(f"{path}.{key}: unknown key (known: {', '.join(_TEAMS_FIELDS)})")
    for key, check in _TEAMS_FIELDS.items():
        if key in raw:
            try:
                values[key] = check(raw[key])
            except _Invalid as exc:
                problems.append(f"{path}.{key}: {exc}")
    if "mapping" in values:
        mapping = values.pop("mapping")
        if not isinstance(mapping, Mapping):
            problems.append(f"{path}.mapping: must be an object, got {_type_name(mapping)}")
        else:
            merged = dict(TEAMS_MAPPING_DEFAULTS)
            for key, value in mapping.items():
                if key not in TEAMS_PRESENCE_VALUES:
                    problems.append(f"{path}.mapping.{key}: not a Graph presence availability or activity "
                                    f"value (known: {', '.join(TEAMS_PRESENCE_VALUES)})")
                    continue
                try:
                    merged[key] = _profile(value)
                except _Invalid as exc:
                    problems.append(f"{path}.mapping.{key}: {exc}")
            values["mapping"] = MappingProxyType(merged)
    return TeamsPresenceSettings(**values) if len(problems) == before else None


def _check_numbering(n: NumberingSettings, problems: list[str]) -> None:
    p = "numbering"
    if n.min_length > n.max_length:
        problems.append(f"{p}.min_length: must be <= max_length ({n.max_length}), got {n.min_length}")
        return
    if len(n.pool_first) != len(n.pool_last):
        problems.append(f"{p}.pool_last: must have the same length as pool_first ({len(n.pool_first)} digits)")
    elif int(n.pool_first) > int(n.pool_last):
        problems.append(f"{p}.pool_first: must be <= pool_last ({n.pool_last}), got {n.pool_first}")
    if not n.min_length <= len(n.pool_first) <= n.max_length:
        problems.append(
            f"{p}.pool_first: length must be between min_length ({n.min_length}) "
            f"and max_length ({n.max_length}), got {len(n.pool_first)}"
        )
    if not n.min_length <= n.suffix_digits <= n.max_length:
        problems.append(
            f"{p}.suffix_digits: must be between min_length ({n.min_length}) "
            f"and max_length ({n.max_length}), got {n.suffix_digits}"
        )


# --------------------------------------------------------------------------- root


@dataclass(frozen=True)
class Settings:
    """All settings of the sync; build with :meth:`from_mapping` or :meth:`from_json`.

    :param scope: :class:`ScopeSettings`.
    :param numbering: :class:`NumberingSettings`.
    :param extensions: :class:`ExtensionsSettings`.
    :param guards: :class:`GuardSettings`.
    :param alerts: :class:`AlertSettings`.
    :param timezone: IANA time zone of all-day calendar events that carry none (DAG schedules use the
        ``M365_3CX_TIMEZONE`` environment variable).
    :param contacts: :class:`ContactsSettings`.
    :param presence: :class:`PresenceSettings`.
    :param retention: :class:`RetentionSettings`.
    :param logs: :class:`LogSettings`.
    :param threecx: :class:`ThreeCXSettings`.
    :param graph: :class:`GraphSettings`.
    :param push: :class:`PushSettings`.
    """

    scope: ScopeSettings = field(default_factory=ScopeSettings)
    numbering: NumberingSettings = field(default_factory=NumberingSettings)
    extensions: ExtensionsSettings = field(default_factory=ExtensionsSettings)
    guards: GuardSettings = field(default_factory=GuardSettings)
    alerts: AlertSettings = field(default_factory=AlertSettings)
    timezone: str = "UTC"
    contacts: ContactsSettings = field(default_factory=ContactsSettings)
    presence: PresenceSettings = field(default_factory=PresenceSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    logs: LogSettings = field(default_factory=LogSettings)
    threecx: ThreeCXSettings = field(default_factory=ThreeCXSettings)
    graph: GraphSettings = field(default_factory=GraphSettings)
    push: PushSettings = field(default_factory=PushSettings)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> Settings:
        """Validate a settings document and build :class:`Settings`.

        :param data: the parsed document; ``None`` or ``{}`` gives the defaults.
        :raises ConfigError: listing every unknown key and wrong type or value, each with its
            dotted key path.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(f"invalid settings: must be a JSON object, got {_type_name(data)}")
        problems: list[str] = []
        known = (*_SECTIONS, "timezone")
        for key in data:
            if key not in known:
                problems.append(f"{key}: unknown key (known: {', '.join(known)})")

        sections: dict[str, Any] = {}
        for name, (klass, _) in _SECTIONS.items():
            values = _parse_section(name, data.get(name), problems)
            if name == "presence" and "mapping" in values:
                mapping = _parse_mapping(values.pop("mapping"), problems)
                if mapping is not None:
                    values["mapping"] = mapping
            if name == "presence" and "teams" in values:
                teams = _parse_teams(values.pop("teams"), problems)
                if teams is not None:
                    values["teams"] = teams
            sections[name] = klass(**values)
        alerts: AlertSettings = sections["alerts"]
        if alerts.channel != "off" and not alerts.to:
            problems.append(f"alerts.to: channel {alerts.channel!r} needs at least one recipient")
        if not any(p.startswith("numbering.") for p in problems):  # cross-checks need valid keys
            _check_numbering(sections["numbering"], problems)
        scope: ScopeSettings = sections["scope"]
        numbering: NumberingSettings = sections["numbering"]
        if scope.opt_out_attribute is not None and numbering.policy == "attribute" \
                and scope.opt_out_attribute == numbering.attribute:
            problems.append(f"scope.opt_out_attribute: must differ from numbering.attribute "
                            f"({numbering.attribute} holds the extension numbers)")
        presence: PresenceSettings = sections["presence"]
        push: PushSettings = sections["push"]
        if push.enabled and not (push.notification_url and push.lifecycle_url):
            problems.append("push.enabled: needs push.notification_url and push.lifecycle_url")
        if presence.window_days_back + presence.window_days_ahead == 0:
            problems.append("presence.window_days_ahead: the calendar window must not be empty")
        if presence.teams.enabled and not presence.enabled:
            problems.append("presence.teams.enabled: needs presence.enabled (Teams presence is merged into "
                            "the calendar status)")

        timezone = "UTC"
        if "timezone" in data:
            try:
                timezone = _timezone(data["timezone"])
            except _Invalid as exc:
                problems.append(f"timezone: {exc}")

        if problems:
            lines = "\n".join(f"  - {p}" for p in problems)
            noun = "problem" if len(problems) == 1 else "problems"
            raise ConfigError(f"invalid settings ({len(problems)} {noun}):\n{lines}")
        return cls(timezone=timezone, **sections)

    @classmethod
    def from_json(cls, text: str | None) -> Settings:
        """Parse and validate a JSON settings document (the Airflow Variable's value).

        :param text: JSON text; ``None`` or blank gives the defaults.
        :raises ConfigError: when the text is not JSON or not valid settings.
        """
        if text is None or not text.strip():
            return cls()
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"invalid settings: not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
            ) from None
        return cls.from_mapping(data)

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a JSON-serialisable dict (round-trips through :meth:`from_mapping`)."""
        result: dict[str, Any] = {}
        for name in ("scope", "numbering", "extensions", "guards", "alerts", "timezone", "contacts", "presence",
                     "retention", "logs", "threecx", "graph", "push"):
            value = getattr(self, name)
            if isinstance(value, str):
                result[name] = value
                continue
            section = {key: getattr(value, key) for key in _SECTIONS[name][1]}
            if "mapping" in section:
                section["mapping"] = dict(section["mapping"])
            if "clear_on_empty" in section:
                section["clear_on_empty"] = dict(section["clear_on_empty"])
            if "protected_upns" in section:
                section["protected_upns"] = list(section["protected_upns"])
            if "teams" in section:
                teams = section["teams"]
                section["teams"] = {key: getattr(teams, key) for key in _TEAMS_FIELDS}
                section["teams"]["mapping"] = dict(teams.mapping)
            if "to" in section:
                section["to"] = list(section["to"])
            if "shared_mailboxes" in section:
                section["shared_mailboxes"] = list(section["shared_mailboxes"])
            result[name] = section
        return result


#: The default settings as JSON: a documented starting point for the Variable.
DEFAULT_SETTINGS_JSON: Final[str] = json.dumps(Settings().to_dict(), indent=2)
