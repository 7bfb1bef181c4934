"""Teams presence of the emulated users, and the rate limit of ``getPresencesByUserId`` (no HTTP).

Documented (learn.microsoft.com/graph/api/cloudcommunications-getpresencesbyuserid and
learn.microsoft.com/graph/api/resources/presence): at most 650 ids per request; at most 1,500
requests per 30 seconds per application per tenant; values below. Every user starts
``Offline``/``Offline`` (signed out of Teams) until a test sets something else.
"""

from __future__ import annotations

import collections
import math
import threading
import time
from collections.abc import Callable
from typing import Final

AVAILABILITY: Final = ("Available", "AvailableIdle", "Away", "BeRightBack", "Busy", "BusyIdle", "DoNotDisturb",
                       "Offline", "PresenceUnknown")
ACTIVITY: Final = ("Available", "Away", "BeRightBack", "Busy", "DoNotDisturb", "InACall", "InAConferenceCall",
                   "Inactive", "InAMeeting", "Offline", "OffWork", "OutOfOffice", "PresenceUnknown", "Presenting",
                   "UrgentInterruptionsOnly")
MAX_IDS: Final = 650
RATE_LIMIT: Final = 1500
RATE_WINDOW: Final = 30.0
DEFAULT: Final = ("Offline", "Offline")


class Throttled(Exception):
    """Over the rate limit; ``args[0]`` is the Retry-After in whole seconds."""


class PresenceStore:
    """Presence per user id and a sliding-window request counter; thread safe.

    :param clock: seconds (tests may pass their own).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._presence: dict[str, tuple[str, str]] = {}
        self._sent: collections.deque[float] = collections.deque()
        self.limit = RATE_LIMIT
        self.window = RATE_WINDOW
        self.peak = 0

    def clear(self) -> None:
        """Everyone back to the default presence; limits and counters back to the documented ones."""
        with self._lock:
            self._presence.clear()
            self._sent.clear()
            self.limit, self.window, self.peak = RATE_LIMIT, RATE_WINDOW, 0

    def set(self, user_id: str, availability: str, activity: str) -> dict[str, str]:
        """Set a user's presence.

        :raises ValueError: a value Graph does not document.
        """
        if availability not in AVAILABILITY:
            raise ValueError(f"availability must be one of {', '.join(AVAILABILITY)}; got {availability!r}")
        if activity not in ACTIVITY:
            raise ValueError(f"activity must be one of {', '.join(ACTIVITY)}; got {activity!r}")
        with self._lock:
            self._presence[user_id] = (availability, activity)
        return self.render(user_id)

    def render(self, user_id: str) -> dict[str, str]:
        """The ``microsoft.graph.presence`` JSON of a user."""
        with self._lock:
            availability, activity = self._presence.get(user_id, DEFAULT)
        return {"id": user_id, "availability": availability, "activity": activity}

    def set_limits(self, requests: int, window: float) -> None:
        """Change the rate limit (tests lower it to see 429s). :raises ValueError:"""
        if requests < 1 or window <= 0:
            raise ValueError("requests must be >= 1 and window_seconds > 0")
        with self._lock:
            self.limit, self.window = requests, float(window)
            self._sent.clear()

    def count_request(self) -> None:
        """Count one request against the limit.

        :raises Throttled: the window is full (nothing counted).
        """
        with self._lock:
            now = self._clock()
            while self._sent and self._sent[0] <= now - self.window:
                self._sent.popleft()
            if len(self._sent) >= self.limit:
                raise Throttled(max(1, math.ceil(self._sent[0] + self.window - now)))
            self._sent.append(now)
            self.peak = max(self.peak, len(self._sent))

    def stats(self) -> dict[str, float | int]:
        with self._lock:
            return {"limit": self.limit, "window_seconds": self.window, "peak_in_window": self.peak}
