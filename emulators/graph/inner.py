"""The FastAPI app as ``$batch`` replays its inner requests: the same answers, less framework per item.

:class:`InnerApp` stands where the FastAPI app stands in the stack a ``$batch`` item runs through
(request ids, counters and the fault plan stay outside it, see :mod:`emulators.graph.app`) and
answers exactly as the app would:

* the route is the first one of the app's router that fully matches, as Starlette picks it, but
  found once per *path shape* (the method and the path's segments, each kept when it is a literal
  segment of some route template, else ``*``) instead of by matching every route's regex in turn.
  Every template segment is a literal, a ``{name}`` or a trailing ``{name:path}``, so whether a
  template matches depends on the shape alone. A shape that no route fully matches (405, 404, the
  slash redirect) is answered by the app itself;
* a *plain* route (an ``async`` endpoint taking only ``str`` path parameters and the ``Request``,
  returning a ``Response``, whose dependencies take only the ``Request``) runs its dependencies and
  endpoint directly instead of through FastAPI's dependency solving; other routes run their own
  FastAPI handler;
* exceptions go to the app's exception handlers through Starlette's ``ExceptionMiddleware``.

An app with dependency overrides, user middleware, a root path, a 500/``Exception`` handler or
routes of another kind is always called itself.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
MAX_SHAPES = 4096
"""Path shapes remembered; beyond that a shape is matched route by route (the answer is the same)."""


@dataclass(frozen=True)
class Plain:
    """How to call a plain route without FastAPI's dependency solving."""

    endpoint: Callable[..., Awaitable[Any]]
    request_name: str
    path_names: tuple[str, ...]
    dependencies: tuple[tuple[Callable[..., Awaitable[Any]], str], ...]


def template_literals(routes: list[Any]) -> frozenset[str] | None:
    """The literal segments of the route templates, or ``None`` when some route's match could not be
    told from the path shape (not an HTTP ``Route``, a converter other than ``str``, a parameter sharing
    a segment with text, or ``:path`` before the last segment)."""
    literals: set[str] = set()
    for route in routes:
        if not isinstance(route, Route):
            return None
        segments = route.path.split("/")
        for index, segment in enumerate(segments):
            if "{" not in segment and "}" not in segment:
                literals.add(segment)
                continue
            if not (segment.startswith("{") and segment.endswith("}")) or segment.count("{") != 1:
                return None
            _, _, convertor = segment[1:-1].partition(":")
            if convertor not in ("", "str") and not (convertor == "path" and index == len(segments) - 1):
                return None
    return frozenset(literals)


def plain(route: APIRoute) -> Plain | None:
    """The direct call of ``route``, or ``None`` when it must run through its FastAPI handler."""
    dependant = route.dependant
    if not _plain_dependant(dependant) or dependant.request_param_name is None:
        return None
    if not all(field.field_info.annotation is str for field in dependant.path_params):
        return None
    try:
        returns = typing.get_type_hints(route.endpoint).get("return")
    except Exception:  # an annotation that does not resolve: not plain
        return None
    if not (isinstance(returns, type) and issubclass(returns, Response)):
        return None
    dependencies: list[tuple[Callable[..., Awaitable[Any]], str]] = []
    for sub in dependant.dependencies:
        if (not _plain_dependant(sub) or sub.path_params or sub.dependencies or sub.request_param_name is None
                or sub.call is None):
            return None
        dependencies.append((sub.call, sub.request_param_name))
    assert dependant.call is not None
    return Plain(dependant.call, dependant.request_param_name, tuple(f.name for f in dependant.path_params),
                 tuple(dependencies))


def _plain_dependant(dependant: Any) -> bool:
    return bool(
        dependant.call is not None and inspect.iscoroutinefunction(dependant.call)
        and not (dependant.query_params or dependant.header_params or dependant.cookie_params
                 or dependant.body_params)
        and dependant.websocket_param_name is None and dependant.http_connection_param_name is None
        and dependant.response_param_name is None and dependant.background_tasks_param_name is None
        and dependant.security_scopes_param_name is None)


class InnerApp:
    """ASGI app answering like ``api``, with its route resolved per path shape (see the module doc)."""

    def __init__(self, api: FastAPI) -> None:
        self.api = api
        self._routes_seen = -1
        self._literals: frozenset[str] | None = None
        self._shapes: dict[tuple[str, tuple[str, ...]], Route | None] = {}
        self._plain: dict[int, Plain | None] = {}
        self._exceptions: ExceptionMiddleware | None = None

    def _refresh(self) -> None:
        """(Re)read the routes and exception handlers when the router's route list changed."""
        routes = self.api.router.routes
        self._routes_seen = len(routes)
        self._shapes.clear()
        self._plain = {id(r): plain(r) for r in routes if isinstance(r, APIRoute)}
        handlers = self.api.exception_handlers
        own_stack = not (self.api.user_middleware or self.api.root_path or 500 in handlers or Exception in handlers)
        self._literals = template_literals(routes) if own_stack else None
        self._exceptions = ExceptionMiddleware(self._run, handlers=dict(handlers), debug=self.api.debug)

    def route_for(self, scope: Scope) -> Route | None:
        """The route Starlette would fully match for ``scope``, or ``None`` (no full match, or shapes off)."""
        if len(self.api.router.routes) != self._routes_seen:
            self._refresh()
        literals = self._literals
        if literals is None:
            return None
        key = (scope["method"], tuple(s if s in literals else ("*" if s else "") for s in scope["path"].split("/")))
        try:
            return self._shapes[key]
        except KeyError:
            pass
        found = next((r for r in self.api.router.routes if r.matches(scope)[0] is Match.FULL), None)
        if len(self._shapes) < MAX_SHAPES:
            self._shapes[key] = found
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.route_for(scope) if scope["type"] == "http" and not self.api.dependency_overrides else None
        match, child = route.matches(scope) if route is not None else (Match.NONE, {})
        if route is None or match is not Match.FULL or scope.get("root_path"):
            await self.api(scope, receive, send)
            return
        assert self._exceptions is not None
        scope["app"] = self.api
        scope.setdefault("router", self.api.router)
        scope["route"] = route
        scope.update(child)
        await self._exceptions(scope, receive, send)

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        route: Route = scope["route"]
        call = self._plain.get(id(route))
        if call is None:
            async with AsyncExitStack() as stack:
                scope["fastapi_middleware_astack"] = stack
                await route.handle(scope, receive, send)
            return
        request = Request(scope, receive, send)
        for dependency, name in call.dependencies:
            await dependency(**{name: request})
        params = scope["path_params"]
        kwargs: dict[str, Any] = {name: params[name] for name in call.path_names}
        kwargs[call.request_name] = request
        response = await call.endpoint(**kwargs)
        if not isinstance(response, Response):
            raise TypeError(f"{route.path}: the endpoint returned {type(response).__name__}, not a Response")
        await response(scope, receive, send)
