"""Faults the emulators can inject, as small configurable behaviours, and request counters.

A :class:`FaultPlan` holds rules set through each emulator's admin API. Every
non-admin request is counted, then offered to the rules in order; the first rule
that matches (method, path prefix, remaining count, seeded rate, time window)
decides the fault. Randomness is seeded so a test run is repeatable.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

FAULT_KINDS = ("latency", "status", "drop", "outage", "revoke_token")

_WAKE_GROUPS: dict[tuple[int, int], list[asyncio.Future[None]]] = {}


async def latency_sleep(seconds: float) -> None:
    """``asyncio.sleep(seconds)``, rounded up to the next millisecond, with one loop timer per
    millisecond for all requests waking then: the items of one ``$batch`` (and the batches sent
    together) share a timer instead of each scheduling its own, a cost that showed at tens of
    thousands of requests per run."""
    loop = asyncio.get_running_loop()
    tick = math.ceil((loop.time() + seconds) * 1000)
    key = (id(loop), tick)
    waiter: asyncio.Future[None] = loop.create_future()
    group = _WAKE_GROUPS.get(key)
    if group is None:
        group = _WAKE_GROUPS[key] = []
        loop.call_at(tick / 1000, _wake, key)
    group.append(waiter)
    await waiter  # a cancelled request cancels only its own waiter


def _wake(key: tuple[int, int]) -> None:
    for waiter in _WAKE_GROUPS.pop(key, ()):
        if not waiter.done():
            waiter.set_result(None)


@dataclass
class FaultRule:
    """One fault behaviour.

    :param kind: ``latency`` (sleep, then answer normally), ``status`` (answer with ``status``
        and optional ``Retry-After``), ``drop`` (start a response and cut the connection),
        ``outage`` (``status`` 503 for every matching request until ``until``), or
        ``revoke_token`` (the emulator treats the bearer token as revoked: 401).
    :param path: regular expression searched in the request path; empty matches all.
    :param method: HTTP method to match, or ``None`` for any.
    :param count: how many matching requests to fault; ``None`` for unlimited.
    :param rate: probability (0..1) that a matching request is faulted (seeded).
    :param status: HTTP status for ``status``/``outage`` faults.
    :param retry_after: value of the ``Retry-After`` header (seconds), if any.
    :param latency: seconds to sleep for ``latency`` faults.
    :param duration: seconds an ``outage`` lasts from when the rule is added.
    """

    kind: str
    path: str = ""
    method: str | None = None
    count: int | None = None
    rate: float = 1.0
    status: int = 503
    retry_after: float | None = None
    latency: float = 0.0
    duration: float | None = None
    id: int = 0
    hits: int = 0
    until: float | None = None
    _pattern: re.Pattern[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {', '.join(FAULT_KINDS)}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        self._pattern = re.compile(self.path) if self.path else None
        if self.kind == "outage" and self.duration is not None:
            self.until = time.monotonic() + self.duration

    def public(self) -> dict[str, Any]:
        """The rule as JSON for the admin API."""
        return {
            "id": self.id, "kind": self.kind, "path": self.path, "method": self.method,
            "count": self.count, "rate": self.rate, "status": self.status,
            "retry_after": self.retry_after, "latency": self.latency, "duration": self.duration,
            "hits": self.hits,
        }


class FaultPlan:
    """Ordered fault rules with a seeded random source; thread safe."""

    def __init__(self, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._random = random.Random(seed)
        self._next_id = 1

    def add(self, **spec: Any) -> FaultRule:
        """Add a rule built from admin-API JSON; return it."""
        spec.pop("id", None)
        spec.pop("hits", None)
        rule = FaultRule(**spec)
        with self._lock:
            rule.id = self._next_id
            self._next_id += 1
            self._rules.append(rule)
        return rule

    def clear(self, seed: int | None = None) -> None:
        """Remove every rule (and reseed when ``seed`` is given)."""
        with self._lock:
            self._rules.clear()
            if seed is not None:
                self._random.seed(seed)

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.public() for r in self._rules]

    def pick(self, method: str, path: str) -> FaultRule | None:
        """The fault for this request, if any; consumes one unit of the rule's count."""
        now = time.monotonic()
        with self._lock:
            for rule in list(self._rules):
                if rule.until is not None and now > rule.until:
                    self._rules.remove(rule)
                    continue
                if rule.method and rule.method.upper() != method.upper():
                    continue
                if rule._pattern and not rule._pattern.search(path):
                    continue
                if rule.count is not None and rule.count <= 0:
                    continue
                if rule.rate < 1.0 and self._random.random() >= rule.rate:
                    continue
                if rule.count is not None:
                    rule.count -= 1
                rule.hits += 1
                return rule
        return None


class RequestCounters:
    """Counts requests per ``METHOD route`` key and in total; thread safe.

    Besides the counters (cleared by :meth:`reset`), a *route log* keeps every route key seen
    until :meth:`reset_routes`, so a test can check every route a whole scenario used (for
    example against an allow-list of documented routes) although it resets the counters between
    steps.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._routes: Counter[str] = Counter()

    def hit(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1
            self._routes[key] += 1

    def routes(self) -> dict[str, int]:
        """Every route key seen since the last :meth:`reset_routes`, with its count."""
        with self._lock:
            return dict(sorted(self._routes.items()))

    def reset_routes(self) -> None:
        with self._lock:
            self._routes.clear()

    def faulted(self, key: str) -> None:
        with self._lock:
            self._faults[key] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "total": sum(self._counts.values()),
                "requests": dict(sorted(self._counts.items())),
                "faults": dict(sorted(self._faults.items())),
            }

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._faults.clear()


ErrorRenderer = Callable[[int, str], tuple[dict[str, Any], dict[str, str]]]
"""(status, reason) -> (JSON body, extra headers) in the emulated service's error envelope."""


class FaultMiddleware:
    """ASGI middleware: counts requests and applies the fault plan to non-admin paths.

    :param app: the wrapped ASGI app.
    :param plan: the fault rules.
    :param counters: request counters.
    :param route_key: maps (method, path) to a counter key such as ``GET /v1.0/users``.
    :param render_error: renders an error body in the service's envelope.
    :param admin_prefix: paths under it are neither counted nor faulted.
    """

    def __init__(
        self,
        app: Any,
        *,
        plan: FaultPlan,
        counters: RequestCounters,
        route_key: Callable[[str, str], str],
        render_error: ErrorRenderer,
        admin_prefix: str = "/_emulator",
    ) -> None:
        self.app = app
        self.plan = plan
        self.counters = counters
        self.route_key = route_key
        self.render_error = render_error
        self.admin_prefix = admin_prefix

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[Any]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.admin_prefix):
            await self.app(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        key = self.route_key(method, path)
        self.counters.hit(key)
        rule = self.plan.pick(method, path)
        if rule is None or rule.kind == "revoke_token":
            if rule is not None:
                scope.setdefault("state", {})["revoke_token"] = True
                self.counters.faulted(key)
            await self.app(scope, receive, send)
            return
        self.counters.faulted(key)
        if rule.kind == "latency":
            await latency_sleep(rule.latency)
            await self.app(scope, receive, send)
            return
        if rule.kind == "drop":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")]})
            await send({"type": "http.response.body", "body": b'{"value": [', "more_body": True})
            raise ConnectionAbortedError("emulator fault: connection dropped")
        status = 503 if rule.kind == "outage" else rule.status
        body, headers = self.render_error(status, rule.kind)
        await _send_json(send, status, body, headers, rule.retry_after)


async def _send_json(send: Callable[[dict[str, Any]], Awaitable[None]], status: int, body: dict[str, Any],
                     headers: dict[str, str], retry_after: float | None) -> None:
    import json

    payload = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if retry_after is not None:
        value = str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
        raw_headers.append((b"retry-after", value.encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})
