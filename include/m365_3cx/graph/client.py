"""Microsoft Graph v1.0 client for the app-only sync: users, group members, users delta.

Pages are streamed one at a time; next links are followed as-is and must stay on
the configured Graph host, so the bearer token is never sent anywhere else.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import requests

from m365_3cx.errors import (
    DeltaTokenExpiredError,
    GraphAuthError,
    GraphError,
    GraphFatalError,
    GraphRetriableError,
    MailboxUnavailableError,
    ServiceError,
    SyncError,
)
from m365_3cx.graph.auth import GraphCredentials, GraphTokenProvider
from m365_3cx.graph.paging import NextLinkPaginator
from m365_3cx.http import CallPool, HttpTransport, RetryPolicy, mask_url, parse_retry_after

log = logging.getLogger(__name__)

API_VERSION = "v1.0"
DELTA_EXPIRED_CODES = frozenset({"syncstatenotfound", "resyncrequired"})
PERMISSION_HINT = (
    "the app registration probably lacks an application permission (e.g. User.Read.All or "
    "GroupMember.Read.All) or admin consent"
)


@dataclass(frozen=True)
class GraphPage:
    """One page of a Graph collection.

    :param items: the page's ``value`` entries.
    :param delta_link: the ``@odata.deltaLink`` (only on the last page of a delta round).
    :param page_number: 1-based position of the page in its round.
    """

    items: list[dict[str, Any]]
    delta_link: str | None
    page_number: int


def _error_envelope(response: requests.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def classify_graph_response(response: requests.Response) -> GraphError:
    """Turn a Graph error response into the matching :class:`~m365_3cx.errors.GraphError`.

    :param response: a response with status >= 400.
    :return: :class:`DeltaTokenExpiredError` for 410 or ``syncStateNotFound``/``resyncRequired``;
        :class:`GraphAuthError` for 401; :class:`MailboxUnavailableError` for 404
        ``MailboxNotEnabledForRESTAPI``; :class:`GraphRetriableError` for 429 and 5xx;
        :class:`GraphFatalError` otherwise (403 with a permission hint).
    """
    status = response.status_code
    error = _error_envelope(response)
    code = str(error.get("code") or "") or None
    message = _first_line(str(error.get("message") or "")) or (response.reason or f"HTTP {status}")
    inner = error.get("innerError") or error.get("innererror") or {}
    request_id = None
    if isinstance(inner, dict):
        request_id = inner.get("request-id") or inner.get("requestId")
    request_id = request_id or response.headers.get("request-id") or response.headers.get("client-request-id")
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    kwargs: dict[str, Any] = {
        "status": status, "code": code, "request_id": request_id, "retry_after": retry_after,
    }
    lowered = (code or "").lower()
    if status == 410 or (status == 400 and lowered in DELTA_EXPIRED_CODES):
        return DeltaTokenExpiredError(f"delta link expired: {message}", **kwargs)
    if status == 401:
        return GraphAuthError(f"access token rejected: {message}", **kwargs)
    if status == 403:
        return GraphFatalError(f"forbidden: {message} ({PERMISSION_HINT})", **kwargs)
    if status == 404 and lowered == "mailboxnotenabledforrestapi":
        return MailboxUnavailableError(f"mailbox unavailable: {message}", **kwargs)
    if status == 429 or status >= 500:
        return GraphRetriableError(message, **kwargs)
    return GraphFatalError(message, **kwargs)


def _transport_error(message: str) -> ServiceError:
    return GraphRetriableError(message)


def _first_line(text: str) -> str:
    stripped = text.strip()
    return stripped.splitlines()[0][:300] if stripped else ""


class GraphClient:
    """Synchronous Graph client streaming pages.

    :param credentials: app credentials and endpoints.
    :param policy: retry/timeout policy (also used for token requests).
    :param transport: transport to use instead of a new one (tests).
    :param token_provider: token provider to use instead of an MSAL one (tests).
    :param batch_concurrency: ``$batch`` requests in flight at once in :meth:`post_json_many`
        (``graph.batch_concurrency``; 1 = one after the other).
    """

    def __init__(
        self,
        credentials: GraphCredentials,
        policy: RetryPolicy | None = None,
        transport: HttpTransport | None = None,
        *,
        token_provider: GraphTokenProvider | None = None,
        batch_concurrency: int = 1,
    ) -> None:
        self.credentials = credentials
        self._batches = CallPool(batch_concurrency, "batch_concurrency")
        self.policy = policy or RetryPolicy()
        self._transport = transport or HttpTransport(self.policy, ca_bundle=credentials.ca_bundle)
        self._tokens = token_provider or GraphTokenProvider(credentials, self.policy)
        self.base_url = f"{credentials.graph_url}/{API_VERSION}"
        parts = urlsplit(credentials.graph_url)
        self._origin = (parts.scheme.lower(), parts.netloc.lower())

    def __repr__(self) -> str:
        return f"GraphClient(graph_url={self.credentials.graph_url!r}, client_id={self.credentials.client_id!r})"

    # -- plumbing -----------------------------------------------------------------------------

    def _url(self, path_or_url: str) -> str:
        if "://" in path_or_url:
            parts = urlsplit(path_or_url)
            if (parts.scheme.lower(), parts.netloc.lower()) != self._origin:
                raise GraphFatalError(
                    f"refusing to follow a link to another host ({parts.netloc})", code="ForeignHost"
                )
            return path_or_url
        return f"{self.base_url}/{path_or_url.lstrip('/')}"

    def _request(self, method: str, path_or_url: str, *, params: Mapping[str, Any] | None = None,
                 headers: Mapping[str, str] | None = None, json: Any = None) -> requests.Response:
        """Send one request with a bearer token; on 401 renew the token and try once more.

        :raises GraphError: the classified error.
        """
        url = self._url(path_or_url)
        used: list[str] = []

        def auth() -> str:
            token = self._tokens.token()
            used.append(token)
            return token

        request_headers = {"Accept": "application/json", "client-request-id": str(uuid.uuid4())}
        request_headers.update(headers or {})
        for attempt in (1, 2):
            try:
                return self._transport.send(
                    method, url, headers=request_headers, params=params, json=json, auth=auth,
                    classify=classify_graph_response, transport_error=_transport_error,
                )
            except GraphAuthError as err:
                if err.status != 401 or attempt == 2 or not used:
                    raise
                log.warning("Graph rejected the access token (request_id=%s); renewing it once",
                            err.request_id)
                self._tokens.invalidate(used[-1])
        raise AssertionError("unreachable")  # pragma: no cover

    def _json(self, response: requests.Response) -> dict[str, Any]:
        try:
            body = response.json()
        except ValueError:
            raise GraphFatalError(
                f"response from {mask_url(response.url or '')} is not JSON", status=response.status_code,
                code="InvalidResponse",
            ) from None
        if not isinstance(body, dict):
            raise GraphFatalError("response body is not a JSON object", status=response.status_code,
                                  code="InvalidResponse")
        return body

    # -- public API -----------------------------------------------------------------------------

    def iter_pages(self, path_or_url: str, params: Mapping[str, Any] | None = None,
                   headers: Mapping[str, str] | None = None) -> Iterator[GraphPage]:
        """Yield every page of a collection, following ``@odata.nextLink`` as-is.

        :param path_or_url: a path under ``/v1.0`` (e.g. ``/users``) or an absolute URL on the Graph host.
        :param params: query options for the first request only (next links carry them).
        :param headers: extra headers sent with every page request (e.g. ``ConsistencyLevel``).
        :raises GraphFatalError: for a link to another host or a repeated next link.
        :raises GraphError: any classified error (see :func:`classify_graph_response`).
        """
        paginator = NextLinkPaginator()
        url: str = path_or_url
        page_params: Mapping[str, Any] | None = params
        while True:
            body = self._json(self._request("GET", url, params=page_params, headers=headers))
            paginator.advance(body)
            items = body.get("value")
            if not isinstance(items, list):
                raise GraphFatalError("collection response has no value list", code="InvalidResponse")
            yield GraphPage(items=items, delta_link=paginator.delta_link, page_number=paginator.page_count)
            if paginator.finished:
                log.debug("Graph collection finished after %d page(s)", paginator.page_count)
                return
            assert paginator.next_link is not None
            url, page_params = paginator.next_link, None

    def list_users(self, select: Sequence[str], filter: str | None = None,
                   page_size: int = 999) -> Iterator[list[dict[str, Any]]]:
        """Yield users page by page.

        :param select: properties to return.
        :param filter: an OData ``$filter`` (simple queries only).
        :param page_size: ``$top``, at most 999.
        :raises GraphError: any classified error.
        """
        params: dict[str, Any] = {"$select": ",".join(select), "$top": min(max(page_size, 1), 999)}
        if filter:
            params["$filter"] = filter
        for page in self.iter_pages("/users", params=params):
            yield page.items

    def group_member_ids(self, group_id: str) -> set[str]:
        """Ids of every user in a group, nested groups included.

        :param group_id: the group's object id.
        :raises GraphError: any classified error (404 for an unknown group is a GraphFatalError).
        """
        path = f"/groups/{quote(group_id, safe='')}/transitiveMembers/microsoft.graph.user"
        ids: set[str] = set()
        for page in self.iter_pages(path, params={"$select": "id", "$top": 999}):
            ids.update(str(item["id"]) for item in page.items if item.get("id"))
        return ids

    def users_delta(self, delta_link: str | None, select: Sequence[str]) -> Iterator[GraphPage]:
        """One round of ``/users/delta``; the last page carries the new delta link.

        :param delta_link: the stored link, or ``None`` for an initial round.
        :param select: properties to track (initial round only: the link remembers them).
        :raises DeltaTokenExpiredError: when the stored link is no longer valid (run a full round).
        :raises GraphError: any other classified error.
        """
        if delta_link is None:
            yield from self.iter_pages("/users/delta", params={"$select": ",".join(select)})
        else:
            yield from self.iter_pages(delta_link)

    def latest_users_delta_link(self, select: Sequence[str]) -> str | None:
        """A users delta link for "now" (``$deltatoken=latest``): later rounds return only changes after it.

        A full extract takes this link *before* listing, so nothing changed during the listing is missed.

        :param select: properties to track.
        :raises GraphError: any classified error.
        """
        link = None
        params = {"$select": ",".join(select), "$deltatoken": "latest"}
        for page in self.iter_pages("/users/delta", params=params):
            link = page.delta_link or link
        return link

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """GET a single object.

        :param path: a path under ``/v1.0``.
        :param params: query options.
        :raises GraphError: any classified error.
        """
        return self._json(self._request("GET", path, params=params))

    def post_json(self, path: str, body: Any) -> dict[str, Any]:
        """POST a JSON body (e.g. ``/$batch``) and return the decoded JSON object.

        POST is not idempotent for the transport: it is retried only on 429/503 (the server did
        not act on it); other transient failures surface to the caller (the task retries).

        :param path: a path under ``/v1.0``.
        :param body: the JSON body.
        :raises GraphError: any classified error, or a body that is not a JSON object.
        """
        return self._json(self._request("POST", path, json=body, headers={"Content-Type": "application/json"}))

    @property
    def batch_concurrency(self) -> int:
        """``$batch`` requests :meth:`post_json_many` keeps in flight."""
        return self._batches.size

    def post_json_many(self, path: str, bodies: Sequence[Any]) -> list[dict[str, Any]]:
        """POST several JSON bodies, up to ``batch_concurrency`` at a time; the objects in order.

        :raises GraphError: the first failure in order (bodies not sent yet are not sent).
        """
        return list(self._batches.map(lambda body: self.post_json(path, body), bodies))

    def wait(self, seconds: float) -> None:
        """Sleep for a backoff outside the transport (e.g. between ``$batch`` retry rounds).

        Uses the transport's sleep function, so tests that record the transport's waits see it.

        :param seconds: how long; negative values count as zero.
        """
        sleep = getattr(self._transport, "_sleep", None) or time.sleep
        sleep(max(0.0, float(seconds)))

    def test_connection(self) -> tuple[bool, str]:
        """Get a token and read one user id.

        :return: ``(True, message)`` when Graph answered, else ``(False, reason)``.
        """
        try:
            self._tokens.token()
            self.get("/users", params={"$top": 1, "$select": "id"})
        except SyncError as err:
            return False, str(err)
        return True, "Connected to Microsoft Graph"

    def close(self) -> None:
        """Close the HTTP sessions (and the ``$batch`` threads)."""
        self._batches.close()
        self._transport.close()
        self._tokens.close()

    def __enter__(self) -> GraphClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

