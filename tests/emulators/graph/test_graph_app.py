"""Route order of the Graph emulator app: Graph routes first, and the admin API still reachable."""

from __future__ import annotations

import re

from starlette.routing import Match

from emulators.graph.app import create_app
from emulators.graph.state import TenantBackend


def _concrete(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "x", path)


def test_graph_routes_come_before_the_admin_api_and_never_shadow_it() -> None:
    """Routes are matched in order; the mailbox routes sit ahead of the ``/_emulator`` admin API for speed,
    which is only safe while no Graph or identity route matches an admin path."""
    routes = create_app(TenantBackend(users=2)).fastapi.router.routes
    paths = [r.path for r in routes]
    first_admin = next(i for i, p in enumerate(paths) if p.startswith("/_emulator"))
    assert paths.index("/v1.0/$batch") < first_admin
    assert paths.index("/v1.0/users/{key}/calendarView/delta") < first_admin
    admin = [r for r in routes if r.path.startswith("/_emulator")]
    others = [r for r in routes if not r.path.startswith("/_emulator")]
    clashes = [(method, a.path, o.path) for a in admin for method in sorted(a.methods or ())
               for o in others
               if o.matches({"type": "http", "path": _concrete(a.path), "method": method, "root_path": ""})[0]
               != Match.NONE]
    assert admin and clashes == []
