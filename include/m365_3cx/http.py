"""Shared HTTP layer for the Graph and 3CX clients.

One :class:`HttpTransport` per client holds pooled ``requests`` sessions (one per
thread), passes ``verify`` and timeouts on every request (``REQUESTS_CA_BUNDLE``
would otherwise override a session-level ``verify``), resolves the environment's
proxies once per host instead of on every call, and retries throttling,
transient statuses and dropped connections with Retry-After or capped
exponential backoff. Turning a failed response into an error is left to a
``classify`` callable supplied by each client, so both services back off alike
but keep their own error types.
"""

from __future__ import annotations

import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote_plus, urlsplit, urlunsplit

import requests

from m365_3cx.errors import RetriableServiceError, ServiceError

log = logging.getLogger(__name__)

Classifier = Callable[[requests.Response], ServiceError]
"""Turns an error response into the client's :class:`ServiceError` subclass."""

TransportErrorFactory = Callable[[str], ServiceError]
"""Builds the error raised when the connection itself failed (message -> error)."""

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE"})
"""Methods retried after any transient failure (PATCH bodies here are partial sets, so repeatable)."""

SAFE_RETRY_STATUSES = frozenset({429, 503})
"""Statuses meaning the server did not act on the request: retried even for non-idempotent calls."""

_SENSITIVE_KEYS = frozenset({
    "$skiptoken", "$deltatoken", "skiptoken", "deltatoken", "client_secret", "access_token",
    "refresh_token", "id_token", "code", "client_assertion", "password", "sig", "signature",
    "api_key", "apikey", "key",
})
_MASK = "***"


@dataclass(frozen=True)
class RetryPolicy:
    """How a transport retries and times out.

    :param max_attempts: attempts in total, the first one included.
    :param backoff_base: first exponential wait in seconds (doubles per retry).
    :param backoff_cap: longest exponential wait in seconds (Retry-After is honoured beyond it).
    :param max_total_wait: the sum of all waits of one call never exceeds this (seconds); keep it
        under the task's ``execution_timeout``.
    :param connect_timeout: seconds to establish a connection.
    :param read_timeout: seconds to wait for response data.
    :param retry_statuses: HTTP statuses worth retrying.
    """

    max_attempts: int = 6
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    max_total_wait: float = 300.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retry_statuses: tuple[int, ...] = (429, 500, 502, 503, 504)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.backoff_base < 0 or self.backoff_cap < 0 or self.max_total_wait < 0:
            raise ValueError("backoff_base, backoff_cap and max_total_wait must not be negative")

    @property
    def timeout(self) -> tuple[float, float]:
        """``(connect, read)`` timeout tuple for ``requests``."""
        return (self.connect_timeout, self.read_timeout)

    def backoff(self, retry: int, rand: float) -> float:
        """Exponential wait before retry number ``retry`` (1-based), with equal jitter.

        :param retry: 1 for the first retry.
        :param rand: a number in ``[0, 1)``; the wait lies in ``[ceiling / 2, ceiling]`` where
            ``ceiling = min(backoff_cap, backoff_base * 2 ** (retry - 1))``.
        """
        exponent = min(retry - 1, 62)
        ceiling = min(self.backoff_cap, self.backoff_base * (2.0**exponent))
        return ceiling / 2.0 + (ceiling / 2.0) * rand


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Parse a ``Retry-After`` header into seconds.

    Accepts float seconds (Graph sends fractional values such as ``2.128``) or an HTTP-date.
    Negative values and dates in the past become ``0.0``.

    :param value: the header value, or ``None``.
    :param now: the current time for HTTP-dates (defaults to the clock; for tests).
    :return: seconds to wait, or ``None`` when the header is absent or unreadable.
    """
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        if math.isnan(seconds) or math.isinf(seconds):
            return None
        return max(0.0, seconds)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now or datetime.now(UTC)
    return max(0.0, (when - current).total_seconds())


def _is_sensitive(key: str, value: str) -> bool:
    name = unquote_plus(key).strip().lower()
    if name in _SENSITIVE_KEYS or "token" in name or "secret" in name or "password" in name:
        return True
    # Opaque token-like values (long runs without spaces, e.g. JWTs or base64 blobs).
    raw = unquote_plus(value)
    return len(raw) >= 32 and " " not in raw and not raw.isdigit() and raw.count(",") == 0


def mask_url(url: str) -> str:
    """Return ``url`` with secret-bearing parts replaced by ``***``, for logs and messages.

    Masks the values of ``$skiptoken``, ``$deltatoken``, ``client_secret``, ``access_token``,
    ``code`` and any parameter whose name mentions a token, secret or password, long opaque
    token-like values, and user info in the authority. The fragment is dropped.

    :param url: an absolute or relative URL.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return _MASK
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{_MASK}@{netloc.rsplit('@', 1)[1]}"
    masked: list[str] = []
    if parts.query:
        for pair in parts.query.split("&"):
            key, sep, value = pair.partition("=")
            if sep and value and _is_sensitive(key, value):
                masked.append(f"{key}={_MASK}")
            else:
                masked.append(pair)
    return urlunsplit((parts.scheme, netloc, parts.path, "&".join(masked), ""))


def _default_transport_error(message: str) -> ServiceError:
    return RetriableServiceError(message)


def _default_classify(response: requests.Response) -> ServiceError:
    return ServiceError(
        f"HTTP {response.status_code}",
        status=response.status_code,
        retry_after=parse_retry_after(response.headers.get("Retry-After")),
    )


class CallPool:
    """Up to ``size`` calls at once on threads that live as long as the pool, so each thread
    keeps its HTTPS session (:class:`HttpTransport` holds one per thread).

    :param size: threads (>= 1); with 1 the calls run one after the other in the caller's thread.
    :param name: what the size is called (errors) and the thread name prefix.
    """

    def __init__(self, size: int, name: str) -> None:
        if size < 1:
            raise ValueError(f"{name} must be at least 1")
        self.size = size
        self._name = name
        self._executor: ThreadPoolExecutor | None = None

    def map(self, call: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        """The results of ``call`` over ``items``, in order; a failure is raised when its turn comes,
        and the calls not started yet are cancelled when the caller stops early."""
        work = list(items)
        if self.size == 1 or len(work) < 2:
            yield from map(call, work)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.size, thread_name_prefix=self._name)
        futures = [self._executor.submit(call, item) for item in work]
        try:
            for future in futures:
                yield future.result()
        finally:
            for future in futures:
                future.cancel()

    def close(self) -> None:
        """Wait for running calls and stop the threads."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


class HttpTransport:
    """Pooled HTTPS sessions with retry, backoff, timeouts and URL masking.

    Thread safe: each thread gets its own ``requests.Session`` (sessions are not
    guaranteed thread safe); :meth:`close` closes them all.

    :param policy: retry and timeout settings.
    :param ca_bundle: CA file or directory to verify servers with; ``None`` uses the default store.
        Passed as ``verify=`` on every request.
    :param classify: default error classifier (clients usually pass their own per call).
    :param transport_error: default factory for connection/timeout errors.
    :param sleep: called with each backoff in seconds (tests pass a recorder).
    :param rand: source of jitter in ``[0, 1)``.
    :param user_agent: ``User-Agent`` header value.
    """

    def __init__(
        self,
        policy: RetryPolicy | None = None,
        *,
        ca_bundle: str | None = None,
        classify: Classifier | None = None,
        transport_error: TransportErrorFactory | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        user_agent: str = "m365-3cx-sync",
    ) -> None:
        self.policy = policy or RetryPolicy()
        self.ca_bundle = ca_bundle
        self._classify = classify or _default_classify
        self._transport_error = transport_error or _default_transport_error
        self._sleep = sleep
        self._rand = rand
        self._user_agent = user_agent
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        self._proxies: dict[tuple[str, str], dict[str, str]] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"HttpTransport(policy={self.policy!r}, ca_bundle={self.ca_bundle!r})"

    @property
    def verify(self) -> str | bool:
        """The ``verify=`` value passed on every request: the configured CA bundle, else the one
        ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` names (as ``requests`` would pick), else the default store."""
        return (self.ca_bundle or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
                or True)

    def proxies(self, url: str) -> dict[str, str]:
        """The proxies the environment names for ``url``'s scheme and host (``HTTPS_PROXY``,
        ``NO_PROXY``...), looked up once per host: the sessions do not consult the environment on
        every request (``trust_env`` off), which costs a scan of ``os.environ`` and ``.netrc`` probes
        per call; the bearer token is the only credential sent."""
        parts = urlsplit(url)
        key = (parts.scheme.lower(), parts.netloc.lower())
        found = self._proxies.get(key)
        if found is None:
            found = self._proxies[key] = dict(requests.utils.get_environ_proxies(url))
        return found

    def session(self) -> requests.Session:
        """This thread's session (created on first use)."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.trust_env = False  # proxies and CA bundle are resolved by the transport (see proxies())
            session.headers["User-Agent"] = self._user_agent
            with self._sessions_lock:
                self._sessions.append(session)
            self._local.session = session
        return session

    def send(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        auth: Callable[[], str] | None = None,
        classify: Classifier | None = None,
        transport_error: TransportErrorFactory | None = None,
        idempotent: bool | None = None,
        raise_for_status: bool = True,
    ) -> requests.Response:
        """Send a request, retrying transient failures.

        :param method: HTTP method.
        :param url: absolute URL (already holding any query it came with).
        :param headers: extra request headers.
        :param params: query parameters to add.
        :param json: JSON body.
        :param data: form body.
        :param auth: returns a bearer token; called before every attempt so a refreshed token is used.
        :param classify: turns an error response into an error (defaults to the transport's).
        :param transport_error: builds the error for connection failures (defaults to the transport's).
        :param idempotent: whether any transient failure may be retried; defaults by method. Non
            idempotent calls are retried only on 429/503 and connect timeouts.
        :param raise_for_status: when false, an error response (after retries) is returned, not raised.
        :return: the response (2xx/3xx, or any status when ``raise_for_status`` is false).
        :raises ServiceError: the classified error for a non-success response; the transport error
            (usually a :class:`~m365_3cx.errors.RetriableServiceError`) when connecting kept failing.
        """
        method = method.upper()
        classify = classify or self._classify
        transport_error = transport_error or self._transport_error
        repeatable = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        policy = self.policy
        proxies = self.proxies(url)
        verify = self.verify
        waited = 0.0
        attempt = 0
        while True:
            attempt += 1
            request_headers = dict(headers or {})
            if auth is not None:
                request_headers["Authorization"] = f"Bearer {auth()}"
            response: requests.Response | None = None
            failure: requests.RequestException | None = None
            try:
                response = self.session().request(
                    method, url, headers=request_headers, params=params, json=json, data=data,
                    verify=verify, proxies=proxies, timeout=policy.timeout,
                )
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                    requests.exceptions.ContentDecodingError) as exc:
                failure = exc

            if response is not None:
                status = response.status_code
                if status < 400:
                    return response
                retriable = status in policy.retry_statuses and (repeatable or status in SAFE_RETRY_STATUSES)
                if not retriable:
                    if raise_for_status:
                        raise classify(response)
                    return response
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                outcome = str(status)
            else:
                assert failure is not None
                retriable = repeatable or isinstance(failure, requests.ConnectTimeout)
                retry_after = None
                outcome = type(failure).__name__
                if not retriable:
                    raise transport_error(f"{method} {mask_url(url)} failed: {outcome}") from None

            wait = retry_after if retry_after is not None else policy.backoff(attempt, self._rand())
            masked = mask_url(url)
            if attempt >= policy.max_attempts or waited + wait > policy.max_total_wait:
                log.warning(
                    "HTTP %s %s: %s; giving up after %d attempt(s) and %.2fs of backoff",
                    method, masked, outcome, attempt, waited,
                )
                if response is not None:
                    if raise_for_status:
                        raise classify(response)
                    return response
                raise transport_error(f"{method} {masked} failed after {attempt} attempt(s): {outcome}") from None
            log.warning(
                "HTTP %s %s: %s; retry %d/%d in %.2fs%s",
                method, masked, outcome, attempt, policy.max_attempts - 1, wait,
                " (Retry-After)" if retry_after is not None else "",
            )
            if response is not None:
                response.close()
            self._sleep(wait)
            waited += wait

    def close(self) -> None:
        """Close every session this transport opened."""
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
        self._local = threading.local()

    def __enter__(self) -> HttpTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
