"""The console's pages as data: query parameters in, the dict a page (or its JSON twin) shows out.

Shared by the Airflow plugin (``plugins/m365_3cx_console.py``) and ``bench/bench_console.py``;
pure (staging connection in, dicts out; no Airflow import). Each builder takes the request's
query parameters as plain strings and ignores what it does not know.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy.engine import Connection

from m365_3cx.console import queries as q

__all__ = ["PAGES", "Context", "NotFound", "build"]


class NotFound(LookupError):
    """The page names something staging does not hold (e.g. an unknown run key)."""


@dataclass(frozen=True)
class Context:
    """What a page needs besides its parameters.

    :param now: aware UTC "now".
    :param stale_minutes: staleness threshold per feature (``users``, ``phonebook``, ``statuses``).
    :param disabled: features switched off in the settings (never stale).
    :param chart_cache: write counts of complete days, kept between requests (see
        :func:`~m365_3cx.console.queries.changes_per_day`).
    :param scope: the scope settings a scope explanation quotes
        (:class:`~m365_3cx.transform.scope.ScopeParams`; ``None`` = the defaults).
    """

    now: dt.datetime
    stale_minutes: Mapping[str, int] = field(default_factory=dict)
    disabled: frozenset[str] = frozenset()
    chart_cache: dict[str, dict[str, int]] | None = None
    scope: Any = None


Params = Mapping[str, str]


def _page(p: Params) -> q.Page:
    return q.Page.of(p.get("page", 1), p.get("size", 50))


def _change_filters(p: Params) -> dict[str, Any]:
    return {"object_type": p.get("type") or None, "action": p.get("action") or None,
            "status": p.get("status") or None, "q": p.get("q") or None}


def _flag(value: str | None) -> bool | None:
    return {"yes": True, "no": False}.get((value or "").lower())


def health(conn: Connection, p: Params, ctx: Context) -> dict[str, Any]:
    result = q.health(conn, ctx.now, ctx.stale_minutes)
    for feature in result["features"]:
        if feature["name"] in ctx.disabled:
            feature.update(disabled=True, stale=False)
    return result


def overview(conn: Connection, p: Params, ctx: Context) -> dict[str, Any]:
    return {"health": health(conn, p, ctx), "runs": q.runs(conn, q.Page(1, 10)),
            "days": q.changes_per_day(conn, ctx.now, days=30, cache=ctx.chart_cache),
            "pending": q.pending_plan(conn, q.Page(1, 1)), "approvals": q.approvals(conn, q.Page(1, 1)),
            "push": q.push_status(conn, ctx.now)}


def runs(conn: Connection, p: Params, ctx: Context) -> dict[str, Any]:
    return {"runs": q.runs(conn, _page(p), dag_id=p.get("dag_id") or None, status=p.get("status") or None,
                           dry=_flag(p.get("dry")))}


def run(conn: Connection, p: Params, ctx: Context) -> dict[str, Any]:
    key = p.get("key") or ""
    detail = q.run_detail(conn, key)
    if detail is None:
        raise NotFound(f"no sync run {key!r}")
    if p.get("tab") == "writes":
        result = q.writes(conn, key, _page(p), object_type=p.get("type") or None, action=p.get("action") or None,
                          result=p.get("result") or None, q=p.get("q") or None)
    else:
        result = q.change_set(conn, key, _page(p), **_change_filters(p))
    trace = q.trace(conn, q.Page(1, 200), run_key=key)
    return {"run": detail, "result": result, "tab": p.get("tab"), "trace": trace}


def plan(conn: Connection, p: Params, ctx: Context) -> dict[str, Any]:
    return {"pending": q.pending_plan(conn, _page(p), **_change_filters(p))}


def users(conn: Connection, p: Params, ctx: Context) -> dict[str, Any]:
    from m365_3cx.transform.scope import ScopeParams

    text = (p.get("q") or "").strip()
    matches = q.find_users(conn, text) if text else None
    user_id = p.get("id") or (matches[0]["user_id"] if matches and len(matches) == 1 else None)
    unknown = q.trace(conn, q.Page(1, 50), upn=text) if text and not matches else None
    history = q.user_history(conn, user_id, _page(p)) if user_id else None
    if history is not None:
        history["scope"] = q.user_scope(conn, user_id, ctx.scope or ScopeParams())
    protected = q.protected_users(conn, _page(p)) if not text and not user_id else None
    return {"matches": matches, "history": history, "unknown_trace": unknown, "protected": protected}


def notes(conn: Connection, p: Params, ctx: Context) -> dict[str, Any]:
    return {"result": q.notes(conn, _page(p), run_key=p.get("run") or None, severity=p.get("severity") or None,
                              kind=p.get("kind") or None, q=p.get("q") or None),
            "kinds": ["user", "contact", "presence"]}


def approvals(conn: Connection, p: Params, ctx: Context) -> dict[str, Any]:
    return {"result": q.approvals(conn, _page(p), status=p.get("status") or None)}


def chart(conn: Connection, p: Params, ctx: Context) -> dict[str, Any]:
    days = q.Page.of(p.get("days", 30), 30).size
    return {"days": q.changes_per_day(conn, ctx.now, days=min(days, 366), cache=ctx.chart_cache)}


#: path -> (template, title, builder); the JSON API serves each under ``/api/<path or overview>``.
PAGES: Final[dict[str, tuple[str, str, Callable[[Connection, Params, Context], dict[str, Any]]]]] = {
    "": ("overview", "Overview", overview),
    "runs": ("runs", "Runs", runs),
    "run": ("run", "Run", run),
    "plan": ("plan", "Pending plan", plan),
    "users": ("users", "Users", users),
    "notes": ("notes", "Notes", notes),
    "approvals": ("approvals", "Approvals", approvals),
}

#: JSON-only endpoints: ``/api/<name>``.
API_ONLY: Final[dict[str, Callable[[Connection, Params, Context], dict[str, Any]]]] = {
    "health": health,
    "chart": chart,
    "push": lambda conn, p, ctx: q.push_status(conn, ctx.now),
    "writes": lambda conn, p, ctx: q.writes(conn, p.get("key") or "", _page(p), object_type=p.get("type") or None,
                                            action=p.get("action") or None, result=p.get("result") or None,
                                            q=p.get("q") or None),
}


def build(path: str, conn: Connection, params: Params, ctx: Context, *, html: bool = False) -> dict[str, Any]:
    """The data of page ``path``; with ``html`` also the health header every page shows.

    :raises KeyError: no such page. :raises NotFound: the page names something unknown.
    """
    _, _, builder = PAGES[path]
    data = builder(conn, params, ctx)
    if html and "health" not in data:
        data["health"] = health(conn, params, ctx)
    return data
