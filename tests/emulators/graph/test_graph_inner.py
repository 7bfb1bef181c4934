"""InnerApp, the app ``$batch`` items run over: the same route and the same answer as the FastAPI app."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import httpx
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.routing import Match

from emulators.graph.app import create_app
from emulators.graph.inner import InnerApp, plain, template_literals
from emulators.graph.state import TenantBackend


def _scope(method: str, path: str) -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}


def _starlette_pick(routes: list[Any], scope: dict[str, Any]) -> Any:
    return next((r for r in routes if r.matches(scope)[0] is Match.FULL), None)


def test_the_route_per_shape_is_the_route_starlette_picks_for_every_graph_path() -> None:
    """Paths built from every template, with ids that spell literals (``delta``, ``contacts``, ``$batch``),
    empty segments and tails; each asked twice so the second answer comes from the shape cache."""
    api = create_app(TenantBackend(users=2)).fastapi
    inner = InnerApp(api)
    fillers = ["abc", "delta", "contacts", "$batch", "v1.0", "users", "a.b", "x y"]
    paths: set[str] = set()
    for route in api.router.routes:
        for filler, tail in itertools.product(fillers, ["", "/", "/more", "//"]):
            concrete = "/".join(filler if s.startswith("{") else s for s in route.path.split("/"))
            paths.add(concrete + tail)
    paths |= {"/", "", "/v1.0", "/v1.0/", "/v1.0//users", "/nothing/here", "/v1.0/users/u/contacts/delta/x"}
    checked = 0
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        for path in sorted(paths):
            expected = _starlette_pick(api.router.routes, _scope(method, path))
            assert inner.route_for(_scope(method, path)) is expected, (method, path)
            assert inner.route_for(_scope(method, path)) is expected, (method, path)
            checked += 1
    assert checked > 1000 and len(inner._shapes) < checked


def test_the_hot_mailbox_routes_are_plain_and_the_others_are_not() -> None:
    api = create_app(TenantBackend(users=2)).fastapi
    by_path = {(r.path, tuple(sorted(r.methods))): r for r in api.router.routes}
    for path in ("/v1.0/users/{key}/contactFolders/{folder_id}/contacts/delta", "/v1.0/users/{key}/calendarView/delta",
                 "/v1.0/users/{key}/mailboxSettings/automaticRepliesSetting", "/v1.0/users/{key}/contactFolders"):
        assert plain(by_path[(path, ("GET",))]) is not None, path
    # a sync endpoint, and one whose folder_id is a query parameter on this template
    assert plain(by_path[("/v1.0/users/{key}", ("GET",))]) is None
    assert plain(by_path[("/v1.0/users/{key}/contacts/{contact_id}", ("GET",))]) is None


# ------------------------------------------------------------------ a small app, every kind of answer

async def _token(request: Request) -> None:
    if request.headers.get("authorization") != "Bearer ok":
        raise HTTPException(401, "no token")


class Boom(Exception):
    pass


def _toy() -> FastAPI:
    api = FastAPI()
    router = APIRouter(dependencies=[Depends(_token)])

    @router.get("/items/{item_id}")
    async def item(item_id: str, request: Request) -> JSONResponse:
        return JSONResponse({"id": item_id, "q": request.query_params.get("q")})

    @router.get("/items/{item_id}/tagged")
    async def tagged(item_id: str, tag: str = "none") -> JSONResponse:  # tag is a query parameter
        return JSONResponse({"id": item_id, "tag": tag})

    @router.get("/count/{n}")
    def count(n: int) -> dict[str, int]:  # sync, validated, not a Response
        return {"n": n + 1}

    @router.get("/fail/{kind}")
    async def fail(kind: str, request: Request) -> PlainTextResponse:
        if kind == "http":
            raise HTTPException(409, "conflict", headers={"X-Why": "test"})
        raise Boom(kind)

    @router.post("/echo/{key}")
    async def echo(key: str, request: Request) -> JSONResponse:
        return JSONResponse({"key": key, "body": (await request.body()).decode()}, status_code=201)

    @router.get("/slash/")
    async def slash(request: Request) -> PlainTextResponse:
        return PlainTextResponse("slash")

    api.include_router(router)

    @api.exception_handler(Boom)
    async def boom(_: Request, exc: Boom) -> JSONResponse:
        return JSONResponse({"boom": str(exc)}, status_code=418)

    return api


async def _call(app: Any, method: str, url: str, **kwargs: Any) -> tuple[int, dict[str, str], bytes]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://toy") as client:
        response = await client.request(method, url, **kwargs)
        return response.status_code, dict(response.headers), response.content


def test_inner_app_answers_every_request_exactly_as_the_app() -> None:
    api = _toy()
    inner = InnerApp(api)
    ok = {"Authorization": "Bearer ok"}
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/items/a1?q=x", {"headers": ok}),             # plain route
        ("GET", "/items/a%2Fb", {"headers": ok}),              # %2F: two segments, no route -> 404
        ("GET", "/items/a1", {}),                              # dependency refuses: 401
        ("GET", "/items/a1/tagged?tag=red", {"headers": ok}),  # query parameter: FastAPI's handler
        ("GET", "/count/41", {"headers": ok}),                 # sync endpoint returning a dict
        ("GET", "/count/x", {"headers": ok}),                  # validation error: 422
        ("GET", "/fail/http", {"headers": ok}),                # HTTPException with headers
        ("GET", "/fail/boom", {"headers": ok}),                # app exception handler
        ("POST", "/echo/k", {"headers": ok, "content": b"payload"}),
        ("POST", "/items/a1", {"headers": ok}),                # partial match: 405
        ("GET", "/nowhere", {"headers": ok}),                  # 404
        ("GET", "/slash", {"headers": ok}),                    # slash redirect
    ]
    for method, url, kwargs in cases:
        assert asyncio.run(_call(inner, method, url, **kwargs)) == asyncio.run(_call(api, method, url, **kwargs)), url
    assert template_literals(api.router.routes) is not None and inner._shapes


def test_routes_whose_match_the_shape_cannot_tell_leave_it_to_the_app() -> None:
    api = FastAPI()

    @api.get("/n/{n:int}")
    async def number(n: int) -> PlainTextResponse:
        return PlainTextResponse(str(n))

    @api.get("/file/{name}.txt")
    async def text(name: str) -> PlainTextResponse:
        return PlainTextResponse(name)

    assert template_literals(api.router.routes) is None
    inner = InnerApp(api)
    for url in ("/n/5", "/n/x", "/file/a.txt", "/file/a"):
        assert asyncio.run(_call(inner, "GET", url)) == asyncio.run(_call(api, "GET", url)), url
    assert inner.route_for(_scope("GET", "/n/5")) is None
