"""Airflow UI plugin: the m365-3cx-sync ops console (Browse -> "M365 -> 3CX console").

A FastAPI app mounted in the API server at ``/m365-3cx``: HTML pages (``/``, ``/runs``,
``/run``, ``/plan``, ``/users``, ``/notes``, ``/approvals``, ``/settings``) and the same data
as JSON under ``/api/...``. Every route needs an authenticated Airflow user allowed to see
plugins (plugin apps do not inherit Airflow's auth, so it is added here). The data comes from
the staging database (``m365_3cx_staging`` connection), never from 3CX or Graph; queries live
in :mod:`m365_3cx.console.queries`, the HTML in :mod:`m365_3cx.console.render`.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse

SETTINGS_VARIABLE = "m365_3cx_settings"
REFRESH_SECONDS = 60
_ENGINE_TTL = 300.0  # re-read the staging connection every five minutes
_engine_lock = threading.Lock()
_engine_state: dict[str, Any] = {"engine": None, "at": 0.0}
_chart_cache: dict[str, dict[str, int]] = {}  # write counts of complete days (they do not change)


@contextmanager
def _connection() -> Iterator[Any]:
    """A connection to staging from one engine per process (schema ensured when it is created)."""
    with _engine_lock:
        engine = _engine_state["engine"]
        if engine is None or time.monotonic() - _engine_state["at"] > _ENGINE_TTL:
            from m365_3cx.airflow.hooks import StagingHook

            if engine is not None:
                engine.dispose()
            engine = StagingHook().get_engine()
            _engine_state.update(engine=engine, at=time.monotonic())
    with engine.connect() as conn:
        yield conn


def _settings_sources() -> list[Any]:
    """Every secrets backend's answer for the settings Variable, in Airflow's lookup order."""
    from airflow.configuration import ensure_secrets_loaded

    from m365_3cx.console.settings_view import Source

    sources = []
    for backend in ensure_secrets_loaded():
        try:
            value = backend.get_variable(key=SETTINGS_VARIABLE)
        except Exception:  # a backend that cannot answer is shown as holding nothing
            value = None
        sources.append(Source(type(backend).__name__, value))
    return sources


def _context() -> Any:
    """Now, the staleness thresholds (``alerts.stale_*_minutes``) and the features switched off."""
    from m365_3cx.console.pages import Context
    from m365_3cx.console.queries import FEATURES
    from m365_3cx.settings import Settings

    chosen = next((s.value for s in _settings_sources() if s.value is not None), None)
    try:
        settings = Settings.from_json(chosen)
    except Exception:  # invalid settings: the settings page says why; the header uses the defaults
        settings = Settings()
    disabled = set()
    if settings.contacts.personal_contacts == "off" and not settings.contacts.org_contacts:
        disabled.add("phonebook")
    if not settings.presence.enabled:
        disabled.add("statuses")
    stale = {f.name: int(getattr(settings.alerts, f.stale_setting, f.default_stale_minutes)) for f in FEATURES}
    from m365_3cx.transform.scope import ScopeParams

    return Context(now=dt.datetime.now(dt.UTC), stale_minutes=stale, disabled=frozenset(disabled),
                   chart_cache=_chart_cache, scope=ScopeParams.from_settings(settings))


def _ui_base(request: Request) -> str:
    """The Airflow UI root (the plugin is mounted one level below it)."""
    root = request.scope.get("root_path", "") or ""
    return root.rsplit("/m365-3cx", 1)[0]


def _params(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.query_params.items() if v}


def _create_app() -> FastAPI:
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import requires_access_view

    from m365_3cx.console import pages
    from m365_3cx.console.render import chart, render
    from m365_3cx.console.settings_view import describe_settings

    app = FastAPI(title="m365-3cx-sync ops console",
                  dependencies=[Depends(requires_access_view(AccessView.PLUGINS))])

    def data_of(path: str, request: Request, *, html: bool) -> dict[str, Any]:
        ctx = _context()
        try:
            with _connection() as conn:
                return pages.build(path, conn, _params(request), ctx, html=html)
        except pages.NotFound as exc:
            raise HTTPException(404, str(exc)) from None

    def page(template: str, title: str, request: Request, data: dict[str, Any]) -> str:
        if "days" in data:
            data["chart_data"] = chart(data["days"])
        return render(f"{template}.html", title=title, nav=template, base=str(request.scope.get("root_path", "")),
                      ui=_ui_base(request), params=_params(request), refresh_seconds=REFRESH_SECONDS, **data)

    def register(path: str, template: str, title: str) -> None:
        def api(request: Request) -> dict[str, Any]:
            return data_of(path, request, html=False)

        def html(request: Request) -> str:
            return page(template, title, request, data_of(path, request, html=True))

        app.add_api_route(f"/api/{path or 'overview'}", api, methods=["GET"], name=f"api_{template}")
        app.add_api_route(f"/{path}", html, methods=["GET"], response_class=HTMLResponse, name=template)

    for path, (template, title, _) in pages.PAGES.items():
        register(path, template, title)

    def register_api(name: str, builder: Any) -> None:
        def api(request: Request) -> dict[str, Any]:
            ctx = _context()
            with _connection() as conn:
                return builder(conn, _params(request), ctx)

        app.add_api_route(f"/api/{name}", api, methods=["GET"], name=f"api_{name}")

    for name, builder in pages.API_ONLY.items():
        register_api(name, builder)

    @app.get("/api/settings")
    def api_settings() -> dict[str, Any]:
        return describe_settings(_settings_sources())

    @app.get("/settings", response_class=HTMLResponse)
    def settings_page(request: Request) -> str:
        ctx = _context()
        with _connection() as conn:
            header = pages.health(conn, {}, ctx)
        return page("settings", "Settings", request, {"settings": describe_settings(_settings_sources()),
                                                      "health": header})

    return app


class M365ThreeCXConsolePlugin(AirflowPlugin):
    """Registers the ops console and its navigation link."""

    name = "m365_3cx_console"
    fastapi_apps = [{"app": _create_app(), "url_prefix": "/m365-3cx", "name": "M365 -> 3CX ops console"}]
    external_views = [{"name": "M365 -> 3CX console", "href": "/m365-3cx/", "url_route": "m365-3cx-console",
                       "destination": "nav", "category": "browse"}]
