"""Airflow UI plugin: the m365-3cx-sync status page (Browse -> "M365 -> 3CX sync").

A FastAPI app mounted in the API server at ``/m365-3cx``: ``/`` renders a page,
``/api/status`` returns JSON. Both require an authenticated Airflow user allowed to see
plugins (plugin apps do not inherit Airflow's auth, so it is added here). The data comes
from the staging database (``m365_3cx_staging`` connection), never from 3CX or Graph.
"""

from __future__ import annotations

import html
import json
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse


def _status() -> dict[str, Any]:
    from m365_3cx.airflow.hooks import StagingHook
    from m365_3cx.status import sync_status

    engine = StagingHook().get_engine()
    try:
        return sync_status(engine)
    finally:
        engine.dispose()


def _render(status: dict[str, Any]) -> str:
    esc = html.escape
    managed = status["managed"]
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>M365 -> 3CX sync</title>",
        "<style>body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;margin-bottom:1.5em}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
        ".failed{color:#b00}.success{color:#070}</style></head><body>",
        "<h1>Microsoft 365 &rarr; 3CX sync</h1>",
        f"<p>Managed extensions: <b>{managed['extensions']}</b> &middot; numbers in quarantine: "
        f"{managed['released_numbers']} &middot; synced phonebook entries: <b>{managed['phonebook_entries']}</b>"
        f" &middot; users with a calendar status: {managed['presence_users']}</p>",
        f"<p>Notes of the latest runs: {esc(json.dumps(status['latest_run_notes']))} "
        "(see <code>sync_notes</code>)</p>",
    ]
    for dag_id, runs in status["dags"].items():
        parts.append(f"<h2>{esc(dag_id)}</h2><table><tr><th>run</th><th>status</th><th>started</th>"
                     "<th>finished</th><th>counts</th><th>last error</th></tr>")
        for run in runs:
            label = run["status"] + (" (dry run)" if run["dry_run"] else "")
            parts.append(
                f"<tr><td>{esc(run['run_id'])}</td><td class='{esc(run['status'])}'>{esc(label)}</td>"
                f"<td>{esc(run['started_at'] or '')}</td><td>{esc(run['finished_at'] or '')}</td>"
                f"<td><code>{esc(json.dumps(run['counts']))}</code></td><td>{esc(run['last_error'] or '')}</td></tr>"
            )
        parts.append("</table>")
    if not status["dags"]:
        parts.append("<p>No sync run recorded yet.</p>")
    parts.append("</body></html>")
    return "".join(parts)


def _create_app() -> FastAPI:
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView
    from airflow.api_fastapi.core_api.security import requires_access_view

    app = FastAPI(title="m365-3cx-sync status", dependencies=[Depends(requires_access_view(AccessView.PLUGINS))])

    @app.get("/api/status")
    def status() -> dict[str, Any]:
        return _status()

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return _render(_status())

    return app


class M365ThreeCXStatusPlugin(AirflowPlugin):
    """Registers the status page and its navigation link."""

    name = "m365_3cx_status"
    fastapi_apps = [{"app": _create_app(), "url_prefix": "/m365-3cx", "name": "M365 -> 3CX sync status"}]
    external_views = [{"name": "M365 -> 3CX sync", "href": "/m365-3cx/", "url_route": "m365-3cx-status",
                       "destination": "nav", "category": "browse"}]
