"""Teams presence of many users: ``POST /v1.0/communications/getPresencesByUserId``.

Documented (learn.microsoft.com/graph/api/cloudcommunications-getpresencesbyuserid): application
permission ``Presence.Read.All``; body ``{"ids": [user object ids]}``, at most 650 ids per request;
at most 1,500 requests per 30 seconds per application per tenant (also listed on
learn.microsoft.com/graph/throttling-limits). The answer is ``{"value": [presence, ...]}``, each
``{"id", "availability", "activity"}`` (learn.microsoft.com/graph/api/resources/presence).

:class:`RequestBudget` keeps the sync well inside the rate limit on its own side; a 429 the
service still answers is retried by the transport after its ``Retry-After``
(:mod:`m365_3cx.http`: POST is retried on 429/503, where the server did not act).
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from m365_3cx.errors import GraphFatalError

if TYPE_CHECKING:
    from m365_3cx.graph.client import GraphClient

log = logging.getLogger(__name__)

__all__ = ["MAX_IDS_PER_REQUEST", "PRESENCE_PATH", "RATE_WINDOW_SECONDS", "RequestBudget", "UserPresence",
           "read_presences"]

PRESENCE_PATH: Final = "/communications/getPresencesByUserId"
#: Documented maximum of user ids per request.
MAX_IDS_PER_REQUEST: Final = 650
#: The documented rate limit counts requests in windows of this many seconds.
RATE_WINDOW_SECONDS: Final = 30.0
PERMISSION: Final = "Presence.Read.All"


@dataclass(frozen=True)
class UserPresence:
    """One user's presence as Graph returned it."""

    user_id: str
    availability: str | None
    activity: str | None


class RequestBudget:
    """At most ``limit`` requests in any ``window`` seconds (a sliding window), waiting when spent.

    :param limit: requests allowed per window.
    :param window: the window in seconds.
    :param clock: monotonic seconds (tests pass their own).
    :param sleep: how to wait (the Graph client's :meth:`~m365_3cx.graph.client.GraphClient.wait`).
    """

    def __init__(self, limit: int, window: float = RATE_WINDOW_SECONDS, *,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
        if limit < 1:
            raise ValueError("limit must be >= 1")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._sleep = sleep
        self._sent: collections.deque[float] = collections.deque()
        self.waited = 0.0

    def acquire(self) -> None:
        """Take one request from the budget, first waiting until the window has room."""
        now = self._clock()
        while self._sent and self._sent[0] <= now - self.window:
            self._sent.popleft()
        if len(self._sent) >= self.limit:
            pause = self._sent[0] + self.window - now
            if pause > 0:
                log.info("presence: client-side budget of %d requests per %.0f s spent; waiting %.1f s",
                         self.limit, self.window, pause)
                self._sleep(pause)
                self.waited += pause
            self._sent.popleft()
            now = max(now, self._clock())
        self._sent.append(now)


def _parse(item: Any) -> UserPresence | None:
    if not isinstance(item, dict) or not isinstance(item.get("id"), str) or not item["id"]:
        return None
    availability, activity = item.get("availability"), item.get("activity")
    return UserPresence(item["id"], availability if isinstance(availability, str) else None,
                        activity if isinstance(activity, str) else None)


def read_presences(graph: GraphClient, user_ids: Sequence[str], budget: RequestBudget,
                   *, batch_size: int = MAX_IDS_PER_REQUEST) -> Iterator[tuple[list[str], list[UserPresence]]]:
    """Yield ``(ids asked, presences returned)`` per request of up to ``batch_size`` ids.

    Ids Graph returns no presence for are simply absent from the presences; presences of ids
    not asked for are left out.

    :param budget: the client-side request budget (shared by every request of the poll).
    :param batch_size: ids per request, at most :data:`MAX_IDS_PER_REQUEST`.
    :raises GraphFatalError: 403 (the app lacks ``Presence.Read.All``: the message says so) or
        another non-retriable answer.
    :raises GraphRetriableError: Graph kept throttling or failing after the transport's retries.
    """
    size = max(1, min(batch_size, MAX_IDS_PER_REQUEST))
    ids = list(dict.fromkeys(user_ids))
    for start in range(0, len(ids), size):
        asked = ids[start:start + size]
        budget.acquire()
        try:
            body = graph.post_json(PRESENCE_PATH, {"ids": asked})
        except GraphFatalError as err:
            if err.status == 403:
                raise GraphFatalError(
                    f"reading Teams presence was refused: grant the application permission {PERMISSION} "
                    f"(with admin consent) or turn presence.teams.enabled off ({err})",
                    status=err.status, code=err.code, request_id=err.request_id) from None
            raise
        items = body.get("value")
        if not isinstance(items, list):
            raise GraphFatalError("presence response has no value list", code="InvalidResponse")
        wanted = set(asked)
        yield asked, [p for p in (_parse(item) for item in items) if p is not None and p.user_id in wanted]
