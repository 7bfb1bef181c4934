"""JSON batching (``POST /v1.0/$batch``) across mailboxes, with per-item throttling retries.

Graph accepts at most 20 requests per batch and throttles each inner request on its
own: an item may answer 429 (or 503/504) while the others succeed, and Outlook
allows only 4 concurrent requests per mailbox, so a batch holding more than 4
items for one mailbox makes the extra ones fail (``reference/graph.md`` §6, §7).

:func:`execute_batch` therefore

* packs the requests into chunks of at most :data:`MAX_BATCH_SIZE`, with at most
  ``max_per_mailbox`` items for the same mailbox in one chunk (order kept otherwise);
* posts the chunks in *waves*: the chunks of one wave hold at most ``max_per_mailbox``
  items of any mailbox between them and are posted up to the client's
  ``batch_concurrency`` at a time; waves follow one another (so no mailbox ever sees
  more than ``max_per_mailbox`` of our requests at once, however many are in flight);
* re-sends only the items answered 429/503/504, after the longest ``Retry-After``
  among them (or the client's exponential backoff), for up to ``max_rounds`` rounds;
* returns the final :class:`BatchResponse` of every id, failures included.

Callers classify an item with :func:`raise_for_item`, which maps it to the same
:class:`~m365_3cx.errors.GraphError` classes as a plain request.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from m365_3cx.errors import (
    DeltaTokenExpiredError,
    GraphAuthError,
    GraphError,
    GraphFatalError,
    GraphRetriableError,
    MailboxUnavailableError,
)
from m365_3cx.http import RetryPolicy, parse_retry_after

__all__ = [
    "API_PREFIX",
    "MAX_BATCH_SIZE",
    "RETRY_STATUSES",
    "BatchClient",
    "BatchRequest",
    "BatchResponse",
    "chunk_requests",
    "classify_item",
    "concurrent_waves",
    "execute_batch",
    "raise_for_item",
    "relative_url",
]

log = logging.getLogger(__name__)

MAX_BATCH_SIZE = 20
"""Graph's limit of requests per ``$batch``."""

RETRY_STATUSES = frozenset({429, 503, 504})
"""Inner statuses re-sent in the next round."""

API_PREFIX = "/v1.0"

_DELTA_EXPIRED_CODES = frozenset({"syncstatenotfound", "resyncrequired"})


@dataclass(frozen=True)
class BatchRequest:
    """One inner request of a batch.

    :param id: unique within one :func:`execute_batch` call (Graph ignores case when comparing ids).
    :param url: path relative to ``/v1.0`` with its query, e.g.
        ``/users/{id}/contacts/delta?$select=id,displayName``.
    :param method: HTTP method.
    :param headers: inner request headers (e.g. ``Prefer``).
    :param mailbox: the mailbox the request touches (a user id), for the per-mailbox limit;
        ``None`` for directory requests.
    :param body: a JSON body (POST/PATCH); sent with ``Content-Type: application/json``.
    """

    id: str
    url: str
    method: str = "GET"
    headers: Mapping[str, str] = field(default_factory=dict)
    mailbox: str | None = None
    body: Any = None

    def as_json(self) -> dict[str, Any]:
        """The request as the ``$batch`` body lists it."""
        item: dict[str, Any] = {"id": self.id, "method": self.method.upper(), "url": self.url}
        headers = dict(self.headers)
        if self.body is not None:
            item["body"] = self.body
            headers.setdefault("Content-Type", "application/json")
        if headers:
            item["headers"] = headers
        return item


@dataclass(frozen=True)
class BatchResponse:
    """The (final) answer to one inner request.

    :param id: the request's id.
    :param status: inner HTTP status.
    :param headers: inner response headers (names as Graph sent them).
    :param body: the decoded inner body (usually a dict), or ``None``.
    """

    id: str
    status: int
    headers: dict[str, str]
    body: Any

    @property
    def ok(self) -> bool:
        """True for a 2xx status."""
        return 200 <= self.status < 300

    def header(self, name: str) -> str | None:
        """A header value, looked up case-insensitively."""
        wanted = name.lower()
        for key, value in self.headers.items():
            if key.lower() == wanted:
                return str(value)
        return None


class BatchClient(Protocol):
    """What :func:`execute_batch` needs from :class:`~m365_3cx.graph.client.GraphClient`."""

    policy: RetryPolicy

    def post_json(self, path: str, body: Any) -> dict[str, Any]:
        """POST a JSON body and return the decoded JSON object."""
        ...

    def wait(self, seconds: float) -> None:
        """Sleep (through the client's transport, so tests can record it)."""
        ...


def relative_url(absolute_link: str, graph_url: str) -> str:
    """Turn an ``@odata.nextLink``/``@odata.deltaLink`` into a batch-relative URL.

    ``https://graph.microsoft.com/v1.0/users/x/contacts/delta?$skiptoken=..`` with ``graph_url``
    ``https://graph.microsoft.com`` gives ``/users/x/contacts/delta?$skiptoken=..``. A URL that
    is already relative is returned with a leading ``/`` (and without a ``/v1.0`` prefix).

    :param absolute_link: the link as Graph sent it.
    :param graph_url: the configured Graph base URL (scheme and host, optionally a path).
    :return: the path (without ``/v1.0``) and query.
    :raises GraphFatalError: ``code="ForeignHost"`` for a link to another scheme or host, so the
        batch never carries a link Graph did not issue.
    """
    link = absolute_link.strip()
    base = urlsplit(graph_url)
    parts = urlsplit(link)
    if parts.scheme or parts.netloc:
        if (parts.scheme.lower(), parts.netloc.lower()) != (base.scheme.lower(), base.netloc.lower()):
            raise GraphFatalError(f"refusing to follow a link to another host ({parts.netloc})", code="ForeignHost")
        path = parts.path
        prefix = base.path.rstrip("/")
        if prefix and path.startswith(prefix + "/"):
            path = path[len(prefix):]
    else:
        path = parts.path
    if not path.startswith("/"):
        path = "/" + path
    if path == API_PREFIX or path.startswith(API_PREFIX + "/"):
        path = path[len(API_PREFIX):] or "/"
    return path + (f"?{parts.query}" if parts.query else "")


def chunk_requests(
    requests: Sequence[BatchRequest], *, max_size: int = MAX_BATCH_SIZE, max_per_mailbox: int = 4
) -> list[list[BatchRequest]]:
    """Pack requests into batches: at most ``max_size`` each, ``max_per_mailbox`` per mailbox.

    Greedy and order-preserving: each chunk takes, in input order, every request that still
    fits; the rest wait for the next chunk.

    :param requests: the requests (unique ids).
    :param max_size: requests per chunk (1..20).
    :param max_per_mailbox: requests per mailbox per chunk (>= 1).
    :return: the chunks, none empty.
    :raises ValueError: duplicate ids or limits out of range.
    """
    if not 1 <= max_size <= MAX_BATCH_SIZE:
        raise ValueError(f"max_size must be between 1 and {MAX_BATCH_SIZE}")
    if max_per_mailbox < 1:
        raise ValueError("max_per_mailbox must be at least 1")
    ids = [r.id.casefold() for r in requests]
    if len(set(ids)) != len(ids):  # Graph compares request ids case-insensitively
        raise ValueError("batch request ids must be unique (case-insensitively)")
    pending = list(requests)
    chunks: list[list[BatchRequest]] = []
    while pending:
        chunk: list[BatchRequest] = []
        per_mailbox: Counter[str] = Counter()
        rest: list[BatchRequest] = []
        for request in pending:
            fits = len(chunk) < max_size and (
                request.mailbox is None or per_mailbox[request.mailbox] < max_per_mailbox
            )
            if fits:
                chunk.append(request)
                if request.mailbox is not None:
                    per_mailbox[request.mailbox] += 1
            else:
                rest.append(request)
        chunks.append(chunk)
        pending = rest
    return chunks


def concurrent_waves(chunks: Sequence[Sequence[BatchRequest]], *, max_per_mailbox: int = 4,
                     ) -> list[list[Sequence[BatchRequest]]]:
    """Group consecutive chunks into waves that may be in flight together.

    A wave holds at most ``max_per_mailbox`` items of any one mailbox across all its chunks,
    so posting a wave's chunks at the same time never exceeds Outlook's per-mailbox limit.

    :param chunks: the output of :func:`chunk_requests`, in order.
    :param max_per_mailbox: items per mailbox in flight at once (>= 1).
    :return: the waves, in order, none empty; together they hold every chunk once.
    """
    waves: list[list[Sequence[BatchRequest]]] = []
    in_wave: Counter[str] = Counter()
    for chunk in chunks:
        counts = Counter(r.mailbox for r in chunk if r.mailbox is not None)
        if not waves or any(in_wave[m] + n > max_per_mailbox for m, n in counts.items()):
            waves.append([])
            in_wave = Counter()
        waves[-1].append(chunk)
        in_wave.update(counts)
    return waves


def _post_wave(client: BatchClient, wave: Sequence[Sequence[BatchRequest]]) -> list[dict[str, Any]]:
    """Post a wave's chunks: at once through ``post_json_many`` where the client has it."""
    bodies = [{"requests": [r.as_json() for r in chunk]} for chunk in wave]
    many = getattr(client, "post_json_many", None)
    if many is not None and len(bodies) > 1:
        return list(many("/$batch", bodies))
    return [client.post_json("/$batch", body) for body in bodies]


def _parse_responses(body: Mapping[str, Any], sent: Mapping[str, BatchRequest]) -> dict[str, BatchResponse]:
    items = body.get("responses")
    if not isinstance(items, list):
        raise GraphFatalError("batch response has no responses list", code="InvalidResponse")
    result: dict[str, BatchResponse] = {}
    for item in items:
        if not isinstance(item, Mapping):
            continue
        rid = str(item.get("id"))
        if rid not in sent:
            log.warning("batch answered an id it was not sent; ignored")
            continue
        try:
            status = int(item.get("status"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            status = 502
        headers = item.get("headers")
        result[rid] = BatchResponse(
            id=rid,
            status=status,
            headers={str(k): str(v) for k, v in headers.items()} if isinstance(headers, Mapping) else {},
            body=item.get("body"),
        )
    for rid in sent:
        if rid not in result:  # Graph must answer every id; treat a missing one as transient
            result[rid] = BatchResponse(rid, 503, {}, None)
    return result


def execute_batch(
    client: BatchClient,
    requests: Sequence[BatchRequest],
    *,
    max_per_mailbox: int = 4,
    max_rounds: int = 6,
) -> dict[str, BatchResponse]:
    """Send requests through ``$batch`` and return the final response of every id.

    Items answered 429/503/504 are re-sent (re-packed with the same limits) after the longest
    ``Retry-After`` among them, or the client's exponential backoff when none was given, until
    they succeed or ``max_rounds`` rounds were made; their last failure is returned then. The
    total wait stays under ``client.policy.max_total_wait``.

    :param client: the Graph client (see :class:`BatchClient`); one with ``post_json_many``
        (:class:`~m365_3cx.graph.client.GraphClient`) gets a wave's chunks at once.
    :param requests: inner requests with unique ids.
    :param max_per_mailbox: inner requests for one mailbox per batch (Outlook allows 4 concurrent).
    :param max_rounds: rounds in total, the first one included (>= 1).
    :return: ``{id: BatchResponse}`` for every request.
    :raises ValueError: duplicate ids or a limit out of range.
    :raises GraphError: the ``$batch`` request itself failed (after the transport's retries), or
        its body was not a batch response.
    """
    if max_rounds < 1:
        raise ValueError("max_rounds must be at least 1")
    final: dict[str, BatchResponse] = {}
    pending = list(requests)
    policy = client.policy
    waited = 0.0
    for round_no in range(1, max_rounds + 1):
        retry: list[BatchRequest] = []
        chunks = chunk_requests(pending, max_per_mailbox=max_per_mailbox)
        for wave in concurrent_waves(chunks, max_per_mailbox=max_per_mailbox):
            for chunk, body in zip(wave, _post_wave(client, wave), strict=True):
                sent = {r.id: r for r in chunk}
                for rid, response in _parse_responses(body, sent).items():
                    final[rid] = response
                    if response.status in RETRY_STATUSES:
                        retry.append(sent[rid])
        if not retry:
            break
        if round_no == max_rounds:
            log.warning("batch: %d item(s) still throttled after %d round(s)", len(retry), max_rounds)
            break
        hinted = [parse_retry_after(final[r.id].header("Retry-After")) for r in retry]
        given = [h for h in hinted if h is not None]
        wait = max(given) if given else policy.backoff(round_no, random.random())
        if waited + wait > policy.max_total_wait:
            log.warning("batch: %d item(s) throttled; waiting %.2fs more would exceed the budget", len(retry), wait)
            break
        log.warning("batch: %d item(s) throttled; retry round %d in %.2fs", len(retry), round_no + 1, wait)
        client.wait(wait)
        waited += wait
        pending = retry
    return final


def _item_error(response: BatchResponse) -> tuple[str | None, str, str | None]:
    """(code, message, request id) of an inner error body."""
    body = response.body if isinstance(response.body, Mapping) else {}
    error = body.get("error") if isinstance(body.get("error"), Mapping) else {}
    code = str(error.get("code") or "") or None
    message = " ".join(str(error.get("message") or "").split())[:300] or f"HTTP {response.status}"
    inner = error.get("innerError") or error.get("innererror") or {}
    request_id = None
    if isinstance(inner, Mapping):
        request_id = inner.get("request-id") or inner.get("requestId")
    return code, message, request_id or response.header("request-id")


def classify_item(response: BatchResponse) -> GraphError | None:
    """The error an inner response stands for, or ``None`` for a 2xx.

    :param response: one inner response.
    :return: :class:`DeltaTokenExpiredError` for 410 or ``syncStateNotFound``/``resyncRequired``;
        :class:`MailboxUnavailableError` for 404 ``MailboxNotEnabledForRESTAPI``;
        :class:`GraphAuthError` for 401; :class:`GraphRetriableError` for 429, 424 and 5xx;
        :class:`GraphFatalError` otherwise.
    """
    if response.ok:
        return None
    status = response.status
    code, message, request_id = _item_error(response)
    kwargs: dict[str, Any] = {
        "status": status, "code": code, "request_id": request_id,
        "retry_after": parse_retry_after(response.header("Retry-After")),
    }
    lowered = (code or "").lower()
    if status == 410 or (status in (400, 404) and lowered in _DELTA_EXPIRED_CODES):
        return DeltaTokenExpiredError(f"delta link expired: {message}", **kwargs)
    if status == 404 and lowered == "mailboxnotenabledforrestapi":
        return MailboxUnavailableError(f"mailbox unavailable: {message}", **kwargs)
    if status == 401:
        return GraphAuthError(f"access token rejected: {message}", **kwargs)
    if status in (424, 429) or status >= 500:
        return GraphRetriableError(message, **kwargs)
    return GraphFatalError(message, **kwargs)


def raise_for_item(response: BatchResponse) -> None:
    """Raise the error an inner response stands for; do nothing for a 2xx.

    :param response: one inner response.
    :raises DeltaTokenExpiredError: 410, or 400/404 with ``syncStateNotFound``/``resyncRequired``.
    :raises MailboxUnavailableError: 404 ``MailboxNotEnabledForRESTAPI``.
    :raises GraphAuthError: 401.
    :raises GraphRetriableError: 424, 429, 5xx (still failing after the batch's retry rounds).
    :raises GraphFatalError: any other error status.
    """
    error = classify_item(response)
    if error is not None:
        raise error
