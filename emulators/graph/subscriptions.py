"""Change notifications: subscriptions, the validation handshake and webhook delivery (no routes).

:class:`SubscriptionHub` holds the app's subscriptions and background delivery workers. The
tenant's mutations call :meth:`SubscriptionHub.user_changed` / :meth:`SubscriptionHub.item_changed`,
which only match subscriptions and queue notifications; the workers batch what arrived within
``batch_window`` seconds per notification URL into one ``{"value": [...]}`` POST (different URLs in
parallel, one URL in order), retry failures with exponential backoff and apply the admin delivery
faults (delay, drop, duplicate, reorder, hold). Lifecycle notifications go to
``lifecycleNotificationUrl`` the same way.

Sources (Microsoft Graph docs, learn.microsoft.com/graph/...):
``api/resources/subscription`` (properties, max lifetimes), ``change-notifications-overview``
(supported resources and quotas), ``change-notifications-delivery-webhooks`` (handshake, payload,
3 s answer, retries up to 4 hours), ``change-notifications-lifecycle-events`` (lifecycle payloads,
which resources get which event, ``/reauthorize``).
"""

from __future__ import annotations

import copy
import datetime as dt
import heapq
import itertools
import random
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

USERS_MAX_MINUTES = 41_760
"""user, group, other directory resources: 41,760 minutes (under 29 days)."""
OUTLOOK_MAX_MINUTES = 4_230
"""Outlook message, event, contact: 4,230 minutes (under three days)."""
USERS_QUOTA_PER_APP_TENANT = 100
"""user/group: 100 total subscriptions per app and tenant combination."""
OUTLOOK_QUOTA_PER_MAILBOX = 1_000
"""Outlook: a maximum of 1,000 active subscriptions per mailbox for all applications."""
CLIENT_STATE_MAX = 128
CHANGE_TYPES = ("created", "updated", "deleted")
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")
OUTLOOK_ONLY_EVENTS = frozenset({"subscriptionRemoved", "missed"})
"""subscriptionRemoved and missed are sent for Outlook message/event/contact only."""
PERMISSIONS: dict[str, frozenset[str]] = {
    "users": frozenset({"User.Read.All", "Directory.Read.All"}),
    "contacts": frozenset({"Contacts.Read"}),
    "events": frozenset({"Calendars.Read"}),
}
"""Application permissions that allow a subscription per resource kind: the permissions tables of
api/subscription-post-subscriptions (User.Read.All, Contacts.Read, Calendars.Read; the page adds that
"MS Graph Subscriptions will not be able to support write access permissions where only read access
privileges are needed", so ReadWrite grants do not count). Directory.Read.All reads every user too."""
DEFAULT_GRANTED = frozenset({"User.Read.All", "Contacts.Read", "Calendars.Read", "MailboxSettings.Read",
                             "GroupMember.Read.All", "Presence.Read.All", "OrgContact.Read.All"})
"""What the emulated app registration is consented to (the product's documented least privileges)."""
DELIVERY_WORKERS = 4
VALIDATION_TOKEN_TEXT = "Validation: Testing client application reachability for subscription Request-Id: {}"

_RESOURCE = re.compile(r"^/?users(?:/(?P<user>[^/()]+)(?:/(?P<coll>contacts|events))?)?/?$", re.IGNORECASE)


class SubscriptionError(Exception):
    """A request Graph refuses: HTTP status, Graph error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class UnknownSubscription(KeyError):
    """No subscription with this id (or it expired)."""


@dataclass(frozen=True)
class Target:
    """What a subscription's ``resource`` watches: ``users`` (all or one) or one mailbox's items."""

    kind: str  # "users" | "contacts" | "events"
    user_id: str | None

    @property
    def outlook(self) -> bool:
        return self.kind != "users"


@dataclass
class DeliveryConfig:
    """Delivery timing and limits (Graph's values unless a test shortens them).

    :param batch_window: seconds notifications of one URL are collected into one POST.
    :param max_batch: most notifications in one POST.
    :param delivery_timeout: seconds the receiver has to answer 2xx (Graph: 3).
    :param validation_timeout: seconds the handshake may take (Graph: 10).
    :param retry_base: first retry delay in seconds, doubled per attempt up to ``retry_max_backoff``.
    :param retry_window: seconds after which a notification is discarded (Graph: up to 4 hours).
    :param max_attempts: most delivery attempts per POST (0 = only ``retry_window`` limits).
    :param quota_users: user subscriptions per app and tenant.
    :param quota_mailbox: Outlook subscriptions per mailbox.
    """

    batch_window: float = 0.2
    max_batch: int = 100
    delivery_timeout: float = 3.0
    validation_timeout: float = 10.0
    retry_base: float = 1.0
    retry_max_backoff: float = 60.0
    retry_window: float = 4 * 3600.0
    max_attempts: int = 0
    quota_users: int = USERS_QUOTA_PER_APP_TENANT
    quota_mailbox: int = OUTLOOK_QUOTA_PER_MAILBOX

    def update(self, changes: dict[str, Any]) -> None:
        """:raises ValueError: for unknown names or negative values."""
        unknown = set(changes) - set(asdict(self))
        if unknown:
            raise ValueError(f"unknown delivery settings: {', '.join(sorted(unknown))}")
        for name, value in changes.items():
            number = int(value) if name in ("max_batch", "max_attempts", "quota_users", "quota_mailbox") \
                else float(value)
            if number < 0 or (name == "max_batch" and number < 1):
                raise ValueError(f"{name} must be positive")
            setattr(self, name, number)


@dataclass
class DeliveryFaults:
    """Admin delivery faults; counters (``drop``, ``duplicate``) count notifications/POSTs down.

    :param delay: seconds every POST waits before its first attempt.
    :param drop: the next N change notifications are silently not delivered.
    :param drop_fraction: share (0..1) of change notifications silently not delivered.
    :param duplicate: the next N POSTs are sent twice.
    :param duplicate_fraction: share of POSTs sent twice.
    :param reorder: notifications within a POST, and POSTs due together, go out in reverse order.
    """

    delay: float = 0.0
    drop: int = 0
    drop_fraction: float = 0.0
    duplicate: int = 0
    duplicate_fraction: float = 0.0
    reorder: bool = False

    @classmethod
    def parse(cls, body: dict[str, Any]) -> DeliveryFaults:
        """:raises ValueError: for unknown names or out-of-range values."""
        unknown = set(body) - set(asdict(cls()))
        if unknown:
            raise ValueError(f"unknown delivery faults: {', '.join(sorted(unknown))}")
        faults = cls(delay=float(body.get("delay", 0)), drop=int(body.get("drop", 0)),
                     drop_fraction=float(body.get("drop_fraction", 0)), duplicate=int(body.get("duplicate", 0)),
                     duplicate_fraction=float(body.get("duplicate_fraction", 0)),
                     reorder=bool(body.get("reorder", False)))
        if faults.delay < 0 or faults.drop < 0 or faults.duplicate < 0:
            raise ValueError("delay, drop and duplicate must not be negative")
        if not (0 <= faults.drop_fraction <= 1 and 0 <= faults.duplicate_fraction <= 1):
            raise ValueError("fractions must be between 0 and 1")
        return faults


@dataclass
class Stats:
    queued: int = 0
    delivered: int = 0
    dropped: int = 0
    lost_while_blocked: int = 0
    discarded: int = 0
    failed_attempts: int = 0
    lifecycle_sent: int = 0
    last_delivered: str | None = None


@dataclass
class Subscription:
    id: str
    resource: str
    target: Target
    change_types: tuple[str, ...]
    notification_url: str
    lifecycle_url: str | None
    client_state: str | None
    expires: dt.datetime
    application_id: str
    creator_id: str
    immutable_ids: bool
    tls_version: str
    reauthorization_required: bool = False
    blocked: bool = False
    """Delivery paused until reauthorized (notifications meanwhile are lost, as Graph documents)."""
    stats: Stats = field(default_factory=Stats)

    def public(self, *, with_client_state: bool = True) -> dict[str, Any]:
        """The ``microsoft.graph.subscription`` JSON (List subscriptions leaves ``clientState`` null:
        "the clientState property value is not returned for security purposes")."""
        return {
            "id": self.id, "resource": self.resource, "applicationId": self.application_id,
            "changeType": ",".join(self.change_types),
            "clientState": self.client_state if with_client_state else None,
            "notificationUrl": self.notification_url, "notificationQueryOptions": None,
            "lifecycleNotificationUrl": self.lifecycle_url, "expirationDateTime": graph_time(self.expires),
            "creatorId": self.creator_id, "includeResourceData": False,
            "latestSupportedTlsVersion": self.tls_version, "encryptionCertificate": None,
            "encryptionCertificateId": None, "notificationUrlAppId": None,
        }


@dataclass(order=True)
class _Post:
    """One webhook POST (a batch), ordered by due time in the outbox heap."""

    due: float
    seq: int
    url: str = field(compare=False)
    kind: str = field(compare=False)  # "notification" | "lifecycle"
    items: list[dict[str, Any]] = field(compare=False)
    attempt: int = field(default=0, compare=False)
    first_due: float = field(default=0.0, compare=False)


def graph_time(value: dt.datetime) -> str:
    """A UTC time as Graph writes subscription times: ``2026-12-02T05:00:00.123Z`` (``Z``, no offset)."""
    utc = value.astimezone(dt.UTC)
    if utc.microsecond:
        return utc.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    return utc.strftime("%Y-%m-%dT%H:%M:%SZ")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _parse_time(value: Any) -> dt.datetime:
    """ISO 8601 with up to 7 fractional digits (Graph's ``.0000000Z``); naive = UTC. :raises ValueError:"""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(value)
    text = value.strip()
    if text[-1] in "Zz":
        text = text[:-1] + "+00:00"
    match = re.match(r"^(.*T\d\d:\d\d:\d\d)\.(\d+)(.*)$", text)
    if match:
        text = f"{match.group(1)}.{match.group(2)[:6].ljust(6, '0')}{match.group(3)}"
    parsed = dt.datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _bad(message: str, code: str = "InvalidRequest") -> SubscriptionError:
    return SubscriptionError(400, code, message)


class SubscriptionHub:
    """Subscriptions of the tenant's app and their delivery.

    :param tenant_id: ``tenantId`` of every notification.
    :param application_id: the registered app (``applicationId``, ``creatorId``'s app).
    :param resolve_user: maps a user id or UPN to ``(user id, has mailbox)``; raises ``KeyError``
        for an unknown user.
    :param config: delivery timing (defaults are Graph's).
    """

    def __init__(self, tenant_id: str, application_id: str,
                 resolve_user: Callable[[str], tuple[str, bool]] | None = None,
                 config: DeliveryConfig | None = None, seed: int = 0) -> None:
        self.tenant_id = tenant_id
        self.application_id = application_id
        self.service_principal_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"sp/{application_id}"))
        self.resolve_user = resolve_user
        self.defaults = config or DeliveryConfig()
        self.config = copy.copy(self.defaults)
        self.faults = DeliveryFaults()
        self._cond = threading.Condition(threading.RLock())
        self._subs: dict[str, Subscription] = {}
        self._pending: list[tuple[str, dict[str, Any]]] = []  # (url, item) waiting for the batch window
        self._pending_since: float | None = None
        self._outbox: list[_Post] = []
        self._in_flight = 0
        self._busy_urls: set[str] = set()
        self.granted: set[str] = set(DEFAULT_GRANTED)
        self._paused = False
        self._seq = itertools.count(1)
        self._log: list[dict[str, Any]] = []
        self._log_seq = 0
        self._rng = random.Random(f"{seed}/delivery")
        self._trusted: list[str] = []
        self._bundle_dir: tempfile.TemporaryDirectory[str] | None = None
        self._bundle: str | bool = True
        self._threads: list[threading.Thread] = []
        self._closed = False

    # ------------------------------------------------------------ outgoing TLS trust
    def trust(self, pem: str | None = None, path: str | Path | None = None) -> None:
        """Trust a CA (PEM text or file) for the handshake and deliveries, besides those already trusted."""
        text = Path(path).read_text() if path is not None else (pem or "")
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ValueError("not a PEM certificate bundle")
        with self._cond:
            self._trusted.append(text.strip() + "\n")
            if self._bundle_dir is None:
                self._bundle_dir = tempfile.TemporaryDirectory(prefix="graph-emu-ca-")
            bundle = Path(self._bundle_dir.name) / "outgoing-ca.pem"
            bundle.write_text("".join(self._trusted))
            self._bundle = str(bundle)

    @property
    def ca_bundle(self) -> str | bool:
        """The CA file outgoing HTTPS verifies against (``True`` = system store when nothing is trusted)."""
        return self._bundle

    # ------------------------------------------------------------ Graph API
    def _target(self, resource: Any) -> Target:
        if not isinstance(resource, str) or not resource.strip():
            raise _bad("resource is a required property for subscription creation.")
        if resource.strip().lower().lstrip("/").startswith("me/") or resource.strip().lower() in ("me", "/me"):
            raise _bad("/me request is only valid with delegated authentication flow.", "BadRequest")
        match = _RESOURCE.match(resource.strip())
        if match is None:
            raise _bad(f"Resource '{resource}' is not supported for subscriptions by this service.",
                       "ExtensionError")
        user, coll = match.group("user"), match.group("coll")
        if user is None:
            return Target("users", None)
        if self.resolve_user is None:
            return Target(coll.lower() if coll else "users", user)
        try:
            user_id, has_mailbox = self.resolve_user(user)
        except KeyError:
            raise SubscriptionError(404, "ResourceNotFound", f"Resource '{user}' does not exist.") from None
        if coll and not has_mailbox:
            raise SubscriptionError(404, "MailboxNotEnabledForRESTAPI", "REST API is not yet supported for "
                                    "this mailbox.")
        return Target(coll.lower() if coll else "users", user_id)

    def _expiry(self, value: Any, target: Target, *, creating: bool) -> dt.datetime:
        if value in (None, ""):
            raise _bad("expirationDateTime is a required property for subscription "
                       + ("creation." if creating else "update."))
        try:
            expires = _parse_time(value)
        except ValueError:
            raise _bad(f"Invalid value '{value}' for expirationDateTime.") from None
        limit = OUTLOOK_MAX_MINUTES if target.outlook else USERS_MAX_MINUTES
        now = _now()
        if expires <= now:
            raise _bad("Subscription expiration can only be in the future.", "ExtensionError")
        if expires > now + dt.timedelta(minutes=limit):
            raise _bad(f"Subscription expiration can only be {limit} minutes in the future.", "ExtensionError")
        return expires

    @staticmethod
    def _https(value: Any, name: str) -> str:
        if not isinstance(value, str) or not value:
            raise _bad(f"{name} is a required property for subscription creation.")
        scheme = urlsplit(value).scheme.lower()
        if scheme != "https":
            label = "NotificationUrl" if name == "notificationUrl" else "LifecycleNotificationUrl"
            raise _bad(f"{label} scheme='{scheme}' is not supported.")
        return value

    def _change_types(self, value: Any, target: Target) -> tuple[str, ...]:
        if not isinstance(value, str) or not value.strip():
            raise _bad("changeType is a required property for subscription creation.")
        parts = [p.strip() for p in value.split(",")]
        allowed = ("updated", "deleted") if target.kind == "users" else CHANGE_TYPES
        bad = [p for p in parts if p not in allowed]
        if bad:
            # users support only updated,deleted (creation arrives as updated); the wording is what Graph
            # answered for 'created' on users (microsoftgraph/microsoft-graph-docs #4819)
            raise _bad(f"Invalid 'changeType' attribute: '{bad[0]}'.")
        return tuple(dict.fromkeys(parts))

    def create(self, body: dict[str, Any], *, immutable_ids: bool = False) -> dict[str, Any]:
        """Validate ``body``, run the handshake on both URLs, store and return the subscription.

        :raises SubscriptionError: what Graph answers with a 4xx.
        """
        if not isinstance(body, dict):
            raise _bad("Invalid request.", "BadRequest")
        known = {"changeType", "notificationUrl", "lifecycleNotificationUrl", "resource", "expirationDateTime",
                 "clientState", "latestSupportedTlsVersion", "includeResourceData", "@odata.type"}
        unknown = sorted(set(body) - known)
        if unknown:
            raise _bad(f"Property '{unknown[0]}' is not supported or not writable on subscription.", "BadRequest")
        if body.get("includeResourceData"):
            raise _bad("Rich notifications (includeResourceData) require an encryptionCertificate; the "
                       "emulator supports basic notifications only.")
        target = self._target(body.get("resource"))
        change_types = self._change_types(body.get("changeType"), target)
        notification_url = self._https(body.get("notificationUrl"), "notificationUrl")
        lifecycle = body.get("lifecycleNotificationUrl")
        lifecycle_url = self._https(lifecycle, "lifecycleNotificationUrl") if lifecycle is not None else None
        client_state = body.get("clientState")
        if client_state is not None and (not isinstance(client_state, str) or len(client_state) > CLIENT_STATE_MAX):
            raise _bad(f"clientState must be a string of at most {CLIENT_STATE_MAX} characters.")
        expires = self._expiry(body.get("expirationDateTime"), target, creating=True)
        tls = body.get("latestSupportedTlsVersion") or "v1_2"
        if tls not in ("v1_0", "v1_1", "v1_2", "v1_3"):
            raise _bad(f"Invalid latestSupportedTlsVersion '{tls}'.")
        self._check_permission(target, "Create")
        self._check_quota(target)
        self.validate_url(notification_url)
        if lifecycle_url is not None:
            self.validate_url(lifecycle_url)
        sub = Subscription(str(uuid.uuid4()), str(body["resource"]), target, change_types, notification_url,
                           lifecycle_url, client_state, expires, self.application_id, self.service_principal_id,
                           immutable_ids, tls)
        with self._cond:
            self._check_quota(target)
            self._subs[sub.id] = sub
            self._ensure_thread()
            return sub.public()

    def _allowed(self, target: Target) -> bool:
        with self._cond:
            return bool(PERMISSIONS[target.kind] & self.granted)

    def _check_permission(self, target: Target, operation: str) -> None:
        """403 as Graph answered apps without the resource's permission (msgraph-sdk-dotnet #365)."""
        if not self._allowed(target):
            raise SubscriptionError(403, "ExtensionError", f"Operation: {operation}; Exception: [Status Code: "
                                    "Forbidden; Reason: Forbidden]")

    def set_granted(self, permissions: Iterable[str]) -> list[str]:
        """Replace the app's consented application permissions. Subscriptions that lose their permission
        get ``reauthorizationRequired`` (if they have a lifecycle URL) and stop delivering until they are
        reauthorized with the permission back; returns their ids."""
        with self._cond:
            self.granted = {str(p) for p in permissions}
            hit = []
            for sub in self._subs.values():
                if not self._allowed(sub.target) and not sub.blocked:
                    sub.blocked = sub.reauthorization_required = True
                    hit.append(sub.id)
                    if sub.lifecycle_url is not None:
                        self._lifecycle(sub, "reauthorizationRequired")
            return hit

    def _check_quota(self, target: Target) -> None:
        with self._cond:
            self._sweep_expired()
            if target.outlook:
                count = sum(1 for s in self._subs.values() if s.target.outlook and s.target.user_id == target.user_id)
                limit, what = self.config.quota_mailbox, "active subscriptions per mailbox"
            else:
                count = sum(1 for s in self._subs.values() if not s.target.outlook)
                limit, what = self.config.quota_users, "subscriptions per app and tenant for user resources"
            if count >= limit:
                raise SubscriptionError(403, "ExtensionError", f"Operation: Create; Exception: [Status Code: "
                                        f"Forbidden; Reason: The subscription quota of {limit} {what} has been "
                                        "reached.]")

    def validate_url(self, url: str) -> None:
        """The handshake: POST ``?validationToken=…`` (text/plain); 200 + text/plain + the token, in time.

        :raises SubscriptionError: 400 as Graph words it when the endpoint fails.
        """
        import requests

        token = VALIDATION_TOKEN_TEXT.format(uuid.uuid4())
        started = time.monotonic()
        entry: dict[str, Any] = {"kind": "validation", "url": url, "attempt": 1, "subscriptions": [], "count": 0}
        try:
            separator = "&" if urlsplit(url).query else "?"
            response = requests.post(f"{url}{separator}validationToken={quote(token, safe='')}", data=b"",
                                     headers={"Content-Type": "text/plain; charset=utf-8"},
                                     timeout=self.config.validation_timeout, verify=self._bundle,
                                     allow_redirects=False)
        except requests.Timeout:
            self._record(entry, "timeout", started)
            raise _bad("Subscription validation request timed out.") from None
        except requests.RequestException as exc:
            self._record(entry, f"error: {type(exc).__name__}", started)
            raise _bad("Subscription validation request failed. Notification endpoint must respond with 200 OK "
                       "to validation request.", "ValidationError") from None
        self._record(entry, response.status_code, started)
        if time.monotonic() - started > self.config.validation_timeout:
            raise _bad("Subscription validation request timed out.")
        if response.status_code != 200:
            raise _bad("Subscription validation request failed. Notification endpoint must respond with 200 OK "
                       "to validation request.", "ValidationError")
        media = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "text/plain" or response.text != token:
            raise _bad("Subscription validation request failed. Response must exactly match validationToken "
                       "query parameter.", "ValidationError")

    def get(self, sub_id: str) -> dict[str, Any]:
        """:raises UnknownSubscription: :raises SubscriptionError: 403 without the resource's permission."""
        with self._cond:
            sub = self._find(sub_id)
            self._check_permission(sub.target, "Get")
            return sub.public()

    def _find(self, sub_id: str) -> Subscription:
        self._sweep_expired()
        sub = self._subs.get(sub_id)
        if sub is None:
            raise UnknownSubscription(sub_id)
        return sub

    def list(self) -> list[dict[str, Any]]:
        with self._cond:
            self._sweep_expired()
            return [s.public(with_client_state=False) for s in self._subs.values()]

    def update(self, sub_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Renew (``expirationDateTime``) and/or move (``notificationUrl``, validated again); reauthorizes.

        :raises UnknownSubscription: :raises SubscriptionError:
        """
        if not isinstance(body, dict):
            raise _bad("Invalid request.", "BadRequest")
        extra = sorted(set(body) - {"expirationDateTime", "notificationUrl", "@odata.type"})
        if extra:
            raise _bad(f"Property '{extra[0]}' cannot be updated on a subscription.", "BadRequest")
        with self._cond:
            target = self._find(sub_id).target
        self._check_permission(target, "Update")
        expires = self._expiry(body.get("expirationDateTime"), target, creating=False) \
            if "expirationDateTime" in body or "notificationUrl" not in body else None
        url = None
        if "notificationUrl" in body:
            url = self._https(body["notificationUrl"], "notificationUrl")
            self.validate_url(url)
        with self._cond:
            sub = self._find(sub_id)
            if expires is not None:
                sub.expires = expires
            if url is not None:
                sub.notification_url = url
            sub.reauthorization_required = sub.blocked = False
            return sub.public()

    def reauthorize(self, sub_id: str) -> None:
        """``POST /subscriptions/{id}/reauthorize``: clear a pending reauthorization, keep the expiry.

        :raises UnknownSubscription: :raises SubscriptionError: 403 while the permission is missing.
        """
        with self._cond:
            sub = self._find(sub_id)
        self._check_permission(sub.target, "Reauthorize")
        with self._cond:
            sub.reauthorization_required = sub.blocked = False

    def delete(self, sub_id: str) -> None:
        """:raises UnknownSubscription: :raises SubscriptionError: 403 without the resource's permission."""
        with self._cond:
            self._check_permission(self._find(sub_id).target, "Delete")
            del self._subs[sub_id]

    # ------------------------------------------------------------ change feed (called by the tenant)
    def user_changed(self, user_id: str, kind: str) -> None:
        """A directory change: ``created``/``updated``/``soft_deleted``/``restored`` -> ``updated``,
        ``hard_deleted`` -> ``deleted`` (creation and soft-deletion trigger ``updated``, per the docs)."""
        change = "deleted" if kind == "hard_deleted" else "updated"
        with self._cond:
            if not self._subs:
                return
            for sub in list(self._live()):
                if sub.target.kind == "users" and sub.target.user_id in (None, user_id) \
                        and change in sub.change_types:
                    self._queue(sub, change, f"Users/{user_id}", "#Microsoft.Graph.User", user_id)

    def item_changed(self, kind: str, user_id: str, change: str, rest_id: str, immutable_id: str | None = None) -> None:
        """An Outlook change: ``kind`` ``contacts``/``events``, ``change`` created/updated/deleted."""
        with self._cond:
            if not self._subs:
                return
            odata = {"contacts": ("Contacts", "#Microsoft.Graph.Contact"),
                     "events": ("Events", "#Microsoft.Graph.Event")}[kind]
            for sub in list(self._live()):
                if sub.target.kind == kind and sub.target.user_id == user_id and change in sub.change_types:
                    item_id = immutable_id if sub.immutable_ids and immutable_id else rest_id
                    self._queue(sub, change, f"Users/{user_id}/{odata[0]}/{item_id}", odata[1], item_id)

    def mailbox_gone(self, user_id: str) -> None:
        """The user's mailbox went away: its Outlook subscriptions are removed (``subscriptionRemoved``)."""
        with self._cond:
            for sub in [s for s in self._subs.values() if s.target.outlook and s.target.user_id == user_id]:
                self._remove_with_notice(sub)

    def _live(self) -> Iterable[Subscription]:
        now = _now()
        return (s for s in self._subs.values() if s.expires > now)

    def _queue(self, sub: Subscription, change: str, resource: str, odata_type: str, item_id: str) -> None:
        if sub.blocked:
            sub.stats.lost_while_blocked += 1
            return
        item = {"subscriptionId": sub.id, "subscriptionExpirationDateTime": graph_time(sub.expires),
                "changeType": change, "resource": resource,
                "resourceData": {"@odata.type": odata_type, "@odata.id": resource, "id": item_id},
                "clientState": sub.client_state, "tenantId": self.tenant_id}
        sub.stats.queued += 1
        self._pending.append((sub.notification_url, item))
        if self._pending_since is None:
            self._pending_since = time.monotonic()
        self._ensure_thread()
        self._cond.notify_all()

    # ------------------------------------------------------------ lifecycle
    def fire_lifecycle(self, sub_id: str, event: str, *, block: bool = False) -> dict[str, Any]:
        """Send a lifecycle notification now; ``subscriptionRemoved`` also deletes the subscription.

        ``block`` (``reauthorizationRequired`` only): delivery pauses until ``/reauthorize`` or a PATCH;
        changes meanwhile are lost ("eventually change notification delivery pauses").

        :raises UnknownSubscription: :raises ValueError: unknown event, no lifecycle URL, or an Outlook-only
            event for a directory subscription (Graph sends those for Outlook resources only).
        """
        if event not in LIFECYCLE_EVENTS:
            raise ValueError(f"event must be one of {', '.join(LIFECYCLE_EVENTS)}")
        with self._cond:
            sub = self._find(sub_id)
            if sub.lifecycle_url is None:
                raise ValueError("the subscription has no lifecycleNotificationUrl")
            if event in OUTLOOK_ONLY_EVENTS and not sub.target.outlook:
                raise ValueError(f"Graph sends {event} only for Outlook message/event/contact subscriptions")
            if event == "subscriptionRemoved":
                self._remove_with_notice(sub)
            else:
                if event == "reauthorizationRequired":
                    sub.reauthorization_required = True
                    sub.blocked = sub.blocked or block
                elif block:
                    raise ValueError("block applies to reauthorizationRequired only")
                self._lifecycle(sub, event)
            return {"ok": True, "id": sub_id, "event": event}

    def _lifecycle(self, sub: Subscription, event: str) -> None:
        assert sub.lifecycle_url is not None
        item = {"subscriptionId": sub.id, "subscriptionExpirationDateTime": graph_time(sub.expires),
                "tenantId": self.tenant_id, "clientState": sub.client_state, "lifecycleEvent": event}
        sub.stats.lifecycle_sent += 1
        now = time.monotonic()
        heapq.heappush(self._outbox, _Post(now + self.faults.delay, next(self._seq), sub.lifecycle_url,
                                           "lifecycle", [item], first_due=now))
        self._ensure_thread()
        self._cond.notify_all()

    def _remove_with_notice(self, sub: Subscription) -> None:
        self._subs.pop(sub.id, None)
        if sub.lifecycle_url is not None:
            self._lifecycle(sub, "subscriptionRemoved")

    def expire_now(self, sub_id: str) -> None:
        """Let a subscription expire now: it stops delivering and disappears (GET -> 404)."""
        with self._cond:
            self._find(sub_id).expires = _now() - dt.timedelta(seconds=1)
            self._sweep_expired()

    def _sweep_expired(self) -> None:
        now = _now()
        for sub_id in [s.id for s in self._subs.values() if s.expires <= now]:
            del self._subs[sub_id]

    # ------------------------------------------------------------ admin
    def set_faults(self, faults: DeliveryFaults) -> None:
        with self._cond:
            self.faults = faults

    def pause(self) -> None:
        """Hold every POST (nothing is attempted) until :meth:`resume`."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        """Flush what was held, in order."""
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    def drain(self, timeout: float = 10.0) -> bool:
        """Wait until nothing is pending, queued or in flight (held POSTs count as pending)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._pending or self._outbox or self._in_flight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    def set_defaults(self, changes: dict[str, Any]) -> None:
        """Change the start-up delivery settings (what a tenant reset returns to) and the current ones."""
        with self._cond:
            self.defaults.update(changes)
            self.config = copy.copy(self.defaults)

    def clear(self) -> None:
        """Tenant reset: forget subscriptions, queued notifications, the log and faults; default
        permissions and delivery settings. Trusted CAs stay."""
        with self._cond:
            self.config = copy.copy(self.defaults)
            self._subs.clear()
            self._pending.clear()
            self._pending_since = None
            self._outbox.clear()
            self._log.clear()
            self.faults = DeliveryFaults()
            self.granted = set(DEFAULT_GRANTED)
            self._paused = False
            self._cond.notify_all()

    def snapshot(self) -> dict[str, Any]:
        """Subscriptions with delivery stats, queue sizes, faults and settings (admin listing)."""
        with self._cond:
            self._sweep_expired()
            return {
                "subscriptions": [{**s.public(), "reauthorizationRequired": s.reauthorization_required,
                                   "deliveryBlocked": s.blocked, "stats": asdict(s.stats)}
                                  for s in self._subs.values()],
                "granted": sorted(self.granted),
                "paused": self._paused, "pending": len(self._pending), "queued_posts": len(self._outbox),
                "in_flight": self._in_flight, "faults": asdict(self.faults), "config": asdict(self.config),
            }

    def log(self, since: int = 0) -> list[dict[str, Any]]:
        """Every attempted outgoing POST after sequence number ``since``."""
        with self._cond:
            return [copy.deepcopy(e) for e in self._log if e["seq"] > since]

    def clear_log(self) -> None:
        with self._cond:
            self._log.clear()

    def _record(self, entry: dict[str, Any], status: int | str, started: float | None = None) -> None:
        """Append to the delivery log (the last 10,000 entries are kept); ``started`` of an attempted POST."""
        with self._cond:
            self._log_seq += 1
            ok = isinstance(status, int) and 200 <= status < 300
            duration = 0 if started is None else round((time.monotonic() - started) * 1000)
            self._log.append({**entry, "seq": self._log_seq, "status": status, "ok": ok,
                              "time": graph_time(_now()), "duration_ms": duration})
            del self._log[:-10_000]

    # ------------------------------------------------------------ delivery thread
    def _ensure_thread(self) -> None:
        """Start the delivery workers (once): POSTs to different URLs go out in parallel, one URL in order."""
        if self._threads:
            return
        self._closed = False
        for number in range(DELIVERY_WORKERS):
            thread = threading.Thread(target=self._run, name=f"graph-emulator-delivery-{number}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Stop the delivery workers (queued notifications are dropped)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(5)
        self._threads = []
        if self._bundle_dir is not None:
            self._bundle_dir.cleanup()
            self._bundle_dir = None
            self._bundle = True

    def _run(self) -> None:
        import requests

        session = requests.Session()
        while True:
            with self._cond:
                post = self._next_post()
                if post is None:
                    if self._closed:
                        return
                    continue
                self._in_flight += 1
                self._busy_urls.add(post.url)
            try:
                self._send(session, post)
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._busy_urls.discard(post.url)
                    self._cond.notify_all()

    def _next_post(self) -> _Post | None:
        """Under the lock: the next due POST, or ``None`` after waiting a little."""
        now = time.monotonic()
        if self._pending and self._pending_since is not None \
                and now - self._pending_since >= self.config.batch_window:
            self._flush_pending(now)
        if self._closed:
            return None
        ready = None if self._paused else next(
            (p for p in sorted(self._outbox) if p.url not in self._busy_urls), None)
        if ready is not None and ready.due <= now:
            self._outbox.remove(ready)
            heapq.heapify(self._outbox)
            return ready
        waits = [1.0]
        if self._pending_since is not None:
            waits.append(self._pending_since + self.config.batch_window - now)
        if ready is not None:
            waits.append(ready.due - now)
        self._cond.wait(max(0.005, min(waits)))
        return None

    def _flush_pending(self, now: float) -> None:
        by_url: dict[str, list[dict[str, Any]]] = {}
        for url, item in self._pending:
            if self._drop():
                sub = self._subs.get(item["subscriptionId"])
                if sub is not None:
                    sub.stats.dropped += 1
                self._record({"kind": "notification", "url": url, "attempt": 0,
                              "subscriptions": [item["subscriptionId"]], "count": 1}, "dropped")
                continue
            by_url.setdefault(url, []).append(item)
        self._pending.clear()
        self._pending_since = None
        posts: list[tuple[str, list[dict[str, Any]]]] = []
        for url, items in by_url.items():
            for start in range(0, len(items), self.config.max_batch):
                posts.append((url, items[start:start + self.config.max_batch]))
        if self.faults.reorder:
            posts = [(url, list(reversed(items))) for url, items in reversed(posts)]
        for url, items in posts:
            copies = 2 if self._duplicate() else 1
            for _ in range(copies):
                heapq.heappush(self._outbox, _Post(now + self.faults.delay, next(self._seq), url, "notification",
                                                   copy.deepcopy(items), first_due=now))

    def _drop(self) -> bool:
        if self.faults.drop > 0:
            self.faults.drop -= 1
            return True
        return self.faults.drop_fraction > 0 and self._rng.random() < self.faults.drop_fraction

    def _duplicate(self) -> bool:
        if self.faults.duplicate > 0:
            self.faults.duplicate -= 1
            return True
        return self.faults.duplicate_fraction > 0 and self._rng.random() < self.faults.duplicate_fraction

    def _send(self, session: Any, post: _Post) -> None:
        import requests

        with self._cond:
            if post.kind == "notification":  # expired or deleted subscriptions deliver nothing more
                live = {s.id for s in self._live()}
                post.items = [i for i in post.items if i["subscriptionId"] in live]
                if not post.items:
                    return
            bundle, timeout = self._bundle, self.config.delivery_timeout
        post.attempt += 1
        sub_ids = list(dict.fromkeys(i["subscriptionId"] for i in post.items))
        entry = {"kind": post.kind, "url": post.url, "attempt": post.attempt, "subscriptions": sub_ids,
                 "count": len(post.items)}
        started = time.monotonic()
        status: int | str
        try:
            response = session.post(post.url, json={"value": post.items}, timeout=timeout, verify=bundle,
                                    allow_redirects=False)
            status = response.status_code
        except requests.Timeout:
            status = "timeout"
        except requests.RequestException as exc:
            status = f"error: {type(exc).__name__}"
        if isinstance(status, int) and time.monotonic() - started > timeout:
            status = "timeout"
        self._record(entry, status, started)
        ok = isinstance(status, int) and 200 <= status < 300
        with self._cond:
            subs = [self._subs[s] for s in sub_ids if s in self._subs]
            if ok:
                for sub in subs:
                    if post.kind == "notification":
                        sub.stats.delivered += sum(1 for i in post.items if i["subscriptionId"] == sub.id)
                    sub.stats.last_delivered = graph_time(_now())
                return
            for sub in subs:
                sub.stats.failed_attempts += 1
            self._retry_or_discard(post, subs)

    def _retry_or_discard(self, post: _Post, subs: list[Subscription]) -> None:
        now = time.monotonic()
        cfg = self.config
        exhausted = (cfg.max_attempts and post.attempt >= cfg.max_attempts) or now - post.first_due >= cfg.retry_window
        if not exhausted:
            post.due = now + min(cfg.retry_base * 2 ** (post.attempt - 1), cfg.retry_max_backoff)
            post.seq = next(self._seq)
            heapq.heappush(self._outbox, post)
            self._cond.notify_all()
            return
        self._record({"kind": post.kind, "url": post.url, "attempt": post.attempt,
                      "subscriptions": [s.id for s in subs], "count": len(post.items)}, "discarded")
        for sub in subs:
            sub.stats.discarded += sum(1 for i in post.items if i["subscriptionId"] == sub.id)
            if post.kind == "notification" and sub.target.outlook and sub.lifecycle_url is not None:
                self._lifecycle(sub, "missed")  # Outlook subscriptions learn about lost notifications
