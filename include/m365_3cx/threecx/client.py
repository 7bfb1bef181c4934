"""3CX V20 XAPI client (OData v4 under ``/xapi/v1``) for user/extension sync.

The PBX keeps one live access token per client id: asking for a new one revokes
the old. Tokens are therefore shared per process and per ``(base_url, client_id)``
in a module-level cache guarded by a lock, and a 401 triggers one re-authentication
only if the failed token is still the cached one (another thread may already have
renewed it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests

from m365_3cx.errors import (
    ConfigError,
    ServiceError,
    SyncError,
    ThreeCXAuthError,
    ThreeCXError,
    ThreeCXFatalError,
    ThreeCXRetriableError,
)
from m365_3cx.http import CallPool, HttpTransport, RetryPolicy, mask_url, parse_retry_after
from m365_3cx.threecx.paging import MAX_PAGE_SIZE, SkipTopPaginator

log = logging.getLogger(__name__)

USER_SELECT: tuple[str, ...] = (
    "Id", "Number", "FirstName", "LastName", "DisplayName", "EmailAddress", "Mobile",
    "OutboundCallerID", "Enabled", "CurrentProfileName", "Tags", "PrimaryGroupId",
)
CONTACT_SELECT: tuple[str, ...] = (
    "Id", "FirstName", "LastName", "CompanyName", "Title", "Department", "Email", "PhoneNumber", "Mobile2",
    "Business", "Business2", "Home", "BusinessFax", "Other", "Tag", "ContactType",
)
"""``Pbx.Contact`` properties the phonebook sync reads."""
TOKEN_REFRESH_MARGIN = 60.0
"""Seconds before expiry at which a cached token is renewed."""

MINUTES_THRESHOLD = 120
"""``expires_in`` values up to this are minutes (PBX before 20.0.9), larger ones seconds."""

FORBIDDEN_HINT = "the service principal's role may lack the permission (System Owner is safest)"


def odata_quote(value: str) -> str:
    """Quote a string literal for an OData ``$filter``: ``O'Brien`` -> ``'O''Brien'``."""
    return "'" + str(value).replace("'", "''") + "'"


def token_lifetime(expires_in: float | int | str | None) -> float:
    """Seconds a 3CX token lives, from its ``expires_in``.

    Before 20.0.9 the PBX sent minutes (``60``), since then seconds (``3600``); values up to
    :data:`MINUTES_THRESHOLD` are read as minutes. A missing or invalid value means 60 minutes.
    """
    try:
        value = float(expires_in)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 3600.0
    if value <= 0:
        return 3600.0
    return value * 60.0 if value <= MINUTES_THRESHOLD else value


@dataclass(frozen=True)
class ThreeCXCredentials:
    """A 3CX service principal (Admin Console -> Integrations -> API).

    :param base_url: PBX URL, e.g. ``https://pbx.example.com:5001`` (https).
    :param client_id: the principal's client id.
    :param client_secret: its API key (never shown in ``repr``).
    :param ca_bundle: CA file to verify the PBX with.
    :raises ConfigError: when a field is missing or the URL is not https.
    """

    base_url: str
    client_id: str
    client_secret: str = field(repr=False)
    ca_bundle: str | None = None

    def __post_init__(self) -> None:
        problems: list[str] = []
        parts = urlsplit(self.base_url or "")
        if parts.scheme != "https" or not parts.netloc:
            problems.append("base_url must be an https URL")
        if not self.client_id:
            problems.append("client_id is required")
        if not self.client_secret:
            problems.append("client_secret is required")
        if problems:
            raise ConfigError("invalid 3CX credentials: " + "; ".join(problems))
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))


@dataclass(frozen=True)
class _Token:
    value: str = field(repr=False)
    expires_at: float


_TOKEN_LOCK = threading.Lock()
_TOKENS: dict[tuple[str, str], _Token] = {}


def clear_token_cache() -> None:
    """Forget every cached 3CX token (tests; credential rotation)."""
    with _TOKEN_LOCK:
        _TOKENS.clear()


def _odata_error(response: requests.Response) -> tuple[str | None, str | None, str | None]:
    """(message, detail code, detail target) from an OData error body."""
    try:
        body = response.json()
    except ValueError:
        return None, None, None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, str):  # token endpoint: {"error": "...", "error_description": "..."}
        return str(body.get("error_description") or error), error, None
    if not isinstance(error, dict):
        return None, None, None
    message = str(error.get("message") or "") or None
    code = str(error.get("code") or "") or None
    target = str(error.get("target") or "") or None
    details = error.get("details")
    if isinstance(details, list) and details and isinstance(details[0], dict):
        first = details[0]
        code = str(first.get("message") or first.get("code") or "") or code
        target = str(first.get("target") or "") or target
    return message, code, target


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())[:300]


def classify_xapi_response(response: requests.Response) -> ThreeCXError:
    """Turn an XAPI error response into the matching :class:`~m365_3cx.errors.ThreeCXError`.

    :param response: a response with status >= 400.
    :return: :class:`ThreeCXAuthError` for 401; :class:`ThreeCXRetriableError` for 429 and 5xx;
        :class:`ThreeCXFatalError` for other 4xx with ``code`` = ``details[0].message`` (e.g.
        ``WARNINGS.XAPI.ALREADY_IN_USE``) and ``target`` = ``details[0].target``.
    """
    status = response.status_code
    message, code, target = _odata_error(response)
    text = _one_line(message) or response.reason or f"HTTP {status}"
    kwargs: dict[str, Any] = {
        "status": status, "code": code, "target": target,
        "retry_after": parse_retry_after(response.headers.get("Retry-After")),
    }
    if status == 401:
        return ThreeCXAuthError(f"access token rejected: {text}", **kwargs)
    if status == 429 or status >= 500:
        return ThreeCXRetriableError(text, **kwargs)
    if status == 403:
        return ThreeCXFatalError(f"forbidden: {text} ({FORBIDDEN_HINT})", **kwargs)
    if status == 404 and not code:
        kwargs["code"] = "NOT_FOUND"
    return ThreeCXFatalError(text, **kwargs)


def classify_token_response(response: requests.Response) -> ThreeCXError:
    """Classify an error from ``/connect/token``.

    :return: :class:`ThreeCXRetriableError` for 429/5xx, else :class:`ThreeCXAuthError` (a 404 hints at
        the principal's "Configuration API access" option).
    """
    status = response.status_code
    message, code, _ = _odata_error(response)
    if status == 429 or status >= 500:
        return ThreeCXRetriableError(f"token endpoint failed: {_one_line(message) or status}",
                                     status=status, code=code)
    text = _one_line(message) or response.reason or f"HTTP {status}"
    if status == 404:
        text += " (is 'Configuration API access' enabled for the service principal?)"
    return ThreeCXAuthError(f"token request rejected: {text}", status=status, code=code)


def _transport_error(message: str) -> ServiceError:
    return ThreeCXRetriableError(message)


class ThreeCXClient:
    """Client for the 3CX XAPI.

    :param credentials: service principal and PBX URL.
    :param policy: retry/timeout policy.
    :param transport: transport to use instead of a new one (tests).
    :param clock: monotonic clock for token expiry (tests).
    :param read_concurrency: pages of a collection read at once (``threecx.read_concurrency``):
        after the first page the client reads 2, then up to this many offsets ahead, and drops
        the pages beyond the first short one (1 = one page after the other).
    """

    def __init__(
        self,
        credentials: ThreeCXCredentials,
        policy: RetryPolicy | None = None,
        transport: HttpTransport | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        read_concurrency: int = 1,
    ) -> None:
        self.credentials = credentials
        self._reads = CallPool(read_concurrency, "read_concurrency")
        self.policy = policy or RetryPolicy()
        self._transport = transport or HttpTransport(self.policy, ca_bundle=credentials.ca_bundle)
        self._clock = clock
        self._key = (credentials.base_url, credentials.client_id)
        self.api_url = f"{credentials.base_url}/xapi/v1"

    def __repr__(self) -> str:
        return f"ThreeCXClient(base_url={self.credentials.base_url!r}, client_id={self.credentials.client_id!r})"

    # -- tokens ----------------------------------------------------------------------------------

    def _fetch_token(self) -> _Token:
        """POST /connect/token (caller holds the lock).

        :raises ThreeCXAuthError: when the PBX rejects the credentials.
        :raises ThreeCXRetriableError: when it failed transiently.
        """
        creds = self.credentials
        response = self._transport.send(
            "POST", f"{creds.base_url}/connect/token",
            data={"client_id": creds.client_id, "client_secret": creds.client_secret,
                  "grant_type": "client_credentials"},
            headers={"Accept": "application/json"},
            classify=classify_token_response, transport_error=_transport_error, idempotent=True,
        )
        try:
            body = response.json()
            value = str(body["access_token"])
        except (ValueError, KeyError, TypeError):
            raise ThreeCXAuthError("token response has no access_token", status=response.status_code) from None
        lifetime = token_lifetime(body.get("expires_in"))
        log.info("obtained a 3CX access token for client %s (lifetime %.0fs)", creds.client_id, lifetime)
        return _Token(value=value, expires_at=self._clock() + lifetime)

    def token(self) -> str:
        """The process-wide access token for this PBX and client id, renewed 60 s before expiry.

        :raises ThreeCXAuthError: when the PBX rejects the credentials.
        :raises ThreeCXRetriableError: when the token endpoint failed transiently.
        """
        with _TOKEN_LOCK:
            cached = _TOKENS.get(self._key)
            if cached is not None and self._clock() < cached.expires_at - TOKEN_REFRESH_MARGIN:
                return cached.value
            fresh = self._fetch_token()
            _TOKENS[self._key] = fresh
            return fresh.value

    def _renew_after_401(self, failed: str) -> None:
        """Renew the token unless another thread already replaced the one that failed."""
        with _TOKEN_LOCK:
            cached = _TOKENS.get(self._key)
            if cached is not None and cached.value != failed:
                log.info("3CX token was already renewed by another caller")
                return
            _TOKENS[self._key] = self._fetch_token()

    # -- plumbing --------------------------------------------------------------------------------

    def _request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                 json: Any = None, idempotent: bool | None = None) -> requests.Response:
        """Send an XAPI request; on 401 re-authenticate once and retry.

        :raises ThreeCXError: the classified error.
        """
        url = f"{self.api_url}/{path.lstrip('/')}"
        used: list[str] = []

        def auth() -> str:
            value = self.token()
            used.append(value)
            return value

        for attempt in (1, 2):
            try:
                return self._transport.send(
                    method, url, params=params, json=json, auth=auth,
                    headers={"Accept": "application/json"}, classify=classify_xapi_response,
                    transport_error=_transport_error, idempotent=idempotent,
                )
            except ThreeCXAuthError as err:
                if err.status != 401 or attempt == 2 or not used:
                    raise
                log.warning("3CX rejected the access token for %s %s; re-authenticating once",
                            method, mask_url(url))
                self._renew_after_401(used[-1])
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _json(response: requests.Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise ThreeCXFatalError("response is not JSON", status=response.status_code,
                                    code="INVALID_RESPONSE") from None

    # -- public API ------------------------------------------------------------------------------

    def _create(self, entity: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST a new entity; expects 201 with the created entity."""
        response = self._request("POST", entity, json=dict(body))
        if response.status_code != 201:
            raise ThreeCXFatalError(f"create in {entity} did not answer 201", status=response.status_code,
                                    code="UNEXPECTED_STATUS")
        return dict(self._json(response))

    def _delete(self, entity: str, entity_id: int, noun: str) -> None:
        """DELETE one entity; a 404 becomes ``code="NOT_FOUND"``."""
        try:
            self._request("DELETE", f"{entity}({int(entity_id)})")
        except ThreeCXFatalError as err:
            if err.status == 404:
                raise ThreeCXFatalError(f"{noun} {int(entity_id)} not found", status=404, code="NOT_FOUND",
                                        request_id=err.request_id) from None
            raise

    def iter_collection(
        self,
        entity: str,
        *,
        select: Sequence[str] | None = None,
        expand: str | None = None,
        filter: str | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[list[dict[str, Any]]]:
        """Yield non-empty pages of an entity set, ordered by ``Id``.

        :param entity: entity set, e.g. ``Users``.
        :param select: properties to return.
        :param expand: an ``$expand`` expression.
        :param filter: a ``$filter`` expression (quote literals with :func:`odata_quote`).
        :param page_size: ``$top`` (1..100).
        :raises ThreeCXFatalError: when the server repeats a page.
        :raises ThreeCXError: any classified error.
        """
        base = self._collection_params(select, expand, filter)
        return self._pages(entity, base, page_size, self.read_concurrency)

    @staticmethod
    def _collection_params(select: Sequence[str] | None, expand: str | None, filter: str | None) -> dict[str, Any]:
        base: dict[str, Any] = {}
        if select:
            base["$select"] = ",".join(select)
        if expand:
            base["$expand"] = expand
        if filter:
            base["$filter"] = filter
        return base

    def _pages(self, entity: str, base: Mapping[str, Any], page_size: int,
               window: int) -> Iterator[list[dict[str, Any]]]:
        """Non-empty pages of one read, up to ``window`` offsets at once (1: in the caller's thread only)."""
        paginator = SkipTopPaginator(page_size)
        params = {**base, **paginator.params()}  # $orderby and $top; each read sets its own $skip

        def read(skip: int) -> Any:
            return self._json(self._request("GET", entity, params={**params, "$skip": skip}))

        ahead = 1  # a small collection costs one read; the window widens to read_concurrency pages
        while not paginator.finished:
            skips = [paginator.skip + i * paginator.page_size for i in range(ahead)]
            for body in (self._reads.map(read, skips) if ahead > 1 else map(read, skips)):
                if not isinstance(body, dict):
                    raise ThreeCXFatalError("collection response is not an object", code="INVALID_RESPONSE")
                paginator.advance(body)
                items = body["value"]
                if items:
                    yield items
                if paginator.finished:
                    break  # pages read ahead beyond a short page are dropped
            ahead = min(window, ahead * 2)
        log.debug("3CX %s: %d page(s), %d item(s)", entity, paginator.page_count, paginator.skip)

    def read_filtered(self, entity: str, filters: Iterable[str], *,
                      select: Sequence[str] | None = None) -> Iterator[list[dict[str, Any]]]:
        """For each ``$filter`` expression in turn, every entity matching it (all its pages, by ``Id``),
        up to :attr:`read_concurrency` expressions read at once on the client's read threads.

        An expression matching more than a page reads its further pages one after the other on the
        same thread (the read threads never wait on each other).

        :param entity: entity set, e.g. ``Contacts``.
        :param filters: ``$filter`` expressions (quote literals with :func:`odata_quote`).
        :param select: properties to return.
        :return: one list per expression, in the order given (empty when nothing matches).
        :raises ThreeCXError: any classified error (the reads not started yet are dropped).
        """
        def read_all(expression: str) -> list[dict[str, Any]]:
            base = self._collection_params(select, None, expression)
            return [item for page in self._pages(entity, base, MAX_PAGE_SIZE, 1) for item in page]

        return self._reads.map(read_all, filters)

    @property
    def read_concurrency(self) -> int:
        """Pages of a collection :meth:`iter_collection` reads at once."""
        return self._reads.size

    def list_users(self, select: Sequence[str] = USER_SELECT, expand: str | None = None,
                   filter: str | None = None) -> Iterator[list[dict[str, Any]]]:
        """Yield pages of users (extensions).

        :raises ThreeCXError: any classified error.
        """
        return self.iter_collection("Users", select=select, expand=expand, filter=filter)

    def get_user(self, user_id: int, select: Sequence[str] | None = None) -> dict[str, Any]:
        """One user by id.

        :raises ThreeCXFatalError: ``code="NOT_FOUND"`` (or the PBX's code) for an unknown id.
        :raises ThreeCXError: any other classified error.
        """
        params = {"$select": ",".join(select)} if select else None
        return dict(self._json(self._request("GET", f"Users({int(user_id)})", params=params)))

    def create_user(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a user; returns the created user.

        Not retried after an ambiguous failure (only 429/503/connect timeouts), to avoid duplicates.

        :raises ThreeCXFatalError: validation errors, e.g. ``code="WARNINGS.XAPI.ALREADY_IN_USE"``,
            ``target="Number"``.
        :raises ThreeCXError: any other classified error.
        """
        return self._create("Users", body)

    def update_user(self, user_id: int, patch: Mapping[str, Any]) -> None:
        """PATCH the given properties of a user.

        :raises ThreeCXFatalError: validation errors or an unknown id.
        :raises ThreeCXError: any other classified error.
        """
        self._request("PATCH", f"Users({int(user_id)})", json=dict(patch))

    def delete_user(self, user_id: int) -> None:
        """Delete a user.

        :raises ThreeCXFatalError: ``code="NOT_FOUND"`` when the user does not exist.
        :raises ThreeCXError: any other classified error.
        """
        self._delete("Users", user_id, "user")

    def batch_delete_users(self, ids: Iterable[int]) -> list[dict[str, Any]]:
        """Delete several users at once (``Pbx.BatchDelete``).

        :return: per-item errors (``ExtensionNumber``, ``Error``); empty when all were deleted.
        :raises ThreeCXError: any classified error.
        """
        body = self._json(self._request("POST", "Users/Pbx.BatchDelete",
                                        json={"ids": [int(i) for i in ids]}))
        value = body.get("value") if isinstance(body, dict) else None
        return list(value or [])

    def first_available_number(self) -> str:
        """The next free extension number.

        :raises ThreeCXError: any classified error.
        """
        body = self._json(self._request("GET", "Users/Pbx.GetFirstAvailableExtensionNumber()"))
        if not isinstance(body, dict) or not body.get("Number"):
            raise ThreeCXFatalError("no Number in GetFirstAvailableExtensionNumber response",
                                    code="INVALID_RESPONSE")
        return str(body["Number"])

    def default_group(self) -> dict[str, Any] | None:
        """The default department (``IsDefault eq true``), or ``None``.

        :raises ThreeCXError: any classified error.
        """
        body = self._json(self._request("GET", "Groups", params={"$filter": "IsDefault eq true"}))
        value = body.get("value") if isinstance(body, dict) else None
        return dict(value[0]) if value else None

    # -- company phonebook (contacts feature) ----------------------------------------------------

    def list_contacts(self, select: Sequence[str] | None = CONTACT_SELECT) -> Iterator[list[dict[str, Any]]]:
        """Yield pages of the company phonebook (``/Contacts``, ``$orderby=Id&$top=100&$skip``).

        :param select: properties to return (``None``: all).
        :raises ThreeCXError: any classified error.
        """
        return self.iter_collection("Contacts", select=select)

    def contacts_by_ids(self, ids: Iterable[int], select: Sequence[str] | None = CONTACT_SELECT,
                        chunk: int = 40) -> Iterator[list[dict[str, Any]]]:
        """Yield the phonebook contacts with the given ids, ``chunk`` ids per filtered read
        (``$filter=Id eq 1 or Id eq 2 ...``); ids that do not exist are simply not returned.

        :raises ThreeCXError: any classified error.
        """
        return self.iter_by_ids("Contacts", ids, select=select, chunk=chunk)

    def iter_by_ids(self, entity: str, ids: Iterable[int], *, select: Sequence[str] | None,
                    chunk: int = 40) -> Iterator[list[dict[str, Any]]]:
        """Yield the entities with the given ids, ``chunk`` ids per filtered read
        (``$filter=Id eq 1 or Id eq 2 ...``, :meth:`read_filtered`: up to :attr:`read_concurrency` at
        once); ids that do not exist are simply not returned.

        :raises ThreeCXError: any classified error.
        """
        wanted = sorted({int(i) for i in ids})
        filters = [" or ".join(f"Id eq {i}" for i in wanted[start:start + chunk])
                   for start in range(0, len(wanted), chunk)]
        for found in self.read_filtered(entity, filters, select=select):
            if found:
                yield found

    def create_contact(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Create a company-phonebook contact; returns it (with its ``Id``).

        Not retried after an ambiguous failure (only 429/503/connect timeouts), to avoid duplicates.

        :raises ThreeCXFatalError: validation errors (``target`` names the field).
        :raises ThreeCXError: any other classified error.
        """
        return self._create("Contacts", body)

    def update_contact(self, contact_id: int, patch: Mapping[str, Any]) -> None:
        """PATCH the given properties of a contact.

        :raises ThreeCXFatalError: validation errors or an unknown id (``status=404``).
        :raises ThreeCXError: any other classified error.
        """
        self._request("PATCH", f"Contacts({int(contact_id)})", json=dict(patch))

    def delete_contact(self, contact_id: int) -> None:
        """Delete one contact.

        :raises ThreeCXFatalError: ``code="NOT_FOUND"``, ``status=404`` when it does not exist.
        :raises ThreeCXError: any other classified error.
        """
        self._delete("Contacts", contact_id, "contact")

    def delete_contacts(self, ids: Iterable[int]) -> None:
        """Delete several contacts at once (``Pbx.DeleteContactsById``, 20.0.9+); unknown ids are ignored.

        :raises ThreeCXFatalError: when the PBX refuses the action (e.g. before 20.0.9: fall back to
            :meth:`delete_contact`).
        :raises ThreeCXError: any other classified error.
        """
        self._request("POST", "Contacts/Pbx.DeleteContactsById", json={"ids": [int(i) for i in ids]},
                      idempotent=True)

    def list_user_profiles(self) -> Iterator[list[dict[str, Any]]]:
        """Yield pages of every user's ``Id``, ``Number`` and ``CurrentProfileName`` (one paged read).

        :raises ThreeCXError: any classified error.
        """
        return self.iter_collection("Users", select=("Id", "Number", "CurrentProfileName"))

    def user_profiles_by_ids(self, ids: Iterable[int], chunk: int = 40) -> Iterator[list[dict[str, Any]]]:
        """Yield the ``Id``, ``Number`` and ``CurrentProfileName`` of the users with the given ids,
        ``chunk`` ids per filtered read (``$filter=Id eq 1 or Id eq 2 ...``); unknown ids are not returned.

        :raises ThreeCXError: any classified error.
        """
        return self.iter_by_ids("Users", ids, select=("Id", "Number", "CurrentProfileName"), chunk=chunk)

    def profile_names(self) -> set[str]:
        """The forwarding-profile ``Name`` values the PBX reports (read from one user, expanded).

        :return: the names; empty when the PBX has no users.
        :raises ThreeCXError: any classified error.
        """
        body = self._json(self._request("GET", "Users", params={
            "$top": 1, "$select": "Id", "$expand": "ForwardingProfiles($select=Name)",
        }))
        users = body.get("value") if isinstance(body, dict) else None
        names: set[str] = set()
        for user in users or []:
            for profile in user.get("ForwardingProfiles") or []:
                if isinstance(profile, dict) and profile.get("Name"):
                    names.add(str(profile["Name"]))
        return names

    def set_profile(self, user_id: int, profile_name: str) -> None:
        """Switch a user's status: ``PATCH /Users({Id})`` ``{"CurrentProfileName": name}``.

        :raises ThreeCXFatalError: an unknown profile name or user id (the PBX's 400/404).
        :raises ThreeCXError: any other classified error.
        """
        self._request("PATCH", f"Users({int(user_id)})", json={"CurrentProfileName": str(profile_name)})

    def system_status(self) -> dict[str, Any]:
        """``/SystemStatus`` (version, licence).

        :raises ThreeCXError: any classified error.
        """
        return dict(self._json(self._request("GET", "SystemStatus")))

    def test_connection(self) -> tuple[bool, str]:
        """Authenticate and read the system status.

        :return: ``(True, message with the version)`` or ``(False, reason)``.
        """
        try:
            status = self.system_status()
        except SyncError as err:
            return False, str(err)
        version = status.get("Version")
        return True, f"Connected to 3CX{f' {version}' if version else ''}"

    def close(self) -> None:
        """Close the HTTP sessions and read threads (the shared token stays cached for other clients)."""
        self._reads.close()
        self._transport.close()

    def __enter__(self) -> ThreeCXClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
