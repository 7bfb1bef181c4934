#!/usr/bin/env python3
"""Point the ``m365_graph`` and ``threecx_xapi`` connections at the emulators, when they run.

Called by ``docker/entrypoint.sh`` before every Airflow component starts. It reads the state
files ``docker/run_emulator.py`` publishes (``graph.json`` and ``threecx.json`` in the shared
``emulator-state`` volume) and prints ``export AIRFLOW_CONN_...=...`` lines for the shell to
``eval``. Environment-variable connections set this way replace the ones built from ``.env``.

``--mode``:

* ``auto`` (default): use the emulators when both state files exist *and* both emulator hosts
  resolve, i.e. the ``emulators`` profile is running now. A state file left in the volume by an
  earlier demo does not count when the emulator containers are gone. Otherwise print nothing.
* ``on``: the emulators are required; exit 1 with a message when they are missing.
* ``off``: print nothing (production: set ``M365_3CX_EMULATORS=off``).
"""

from __future__ import annotations

import argparse
import json
import shlex
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

GRAPH_CONN_ID = "m365_graph"
THREECX_CONN_ID = "threecx_xapi"


class EmulatorStateError(Exception):
    """A state file is missing or lacks a field."""


def _field(info: dict[str, Any], key: str, source: str) -> str:
    creds = info.get("credentials") if isinstance(info.get("credentials"), dict) else {}
    value = info.get(key, creds.get(key))
    if value in (None, ""):
        raise EmulatorStateError(f"{source}: the emulator's start line has no {key!r}")
    return str(value)


def _rehost(url: str | None, public_url: str) -> str:
    """``url`` with scheme and host:port of ``public_url`` (the emulator announces 0.0.0.0)."""
    if not url:
        return public_url
    public = urlsplit(public_url)
    parts = urlsplit(url)
    return urlunsplit((public.scheme, public.netloc, parts.path.rstrip("/"), parts.query, "")).rstrip("/")


def load_state(state_dir: Path, name: str) -> dict[str, Any]:
    path = state_dir / f"{name}.json"
    if not path.is_file():
        raise EmulatorStateError(f"{path} does not exist (is the {name} emulator running?)")
    state = json.loads(path.read_text())
    if not isinstance(state.get("info"), dict) or not state.get("public_url"):
        raise EmulatorStateError(f"{path}: not written by docker/run_emulator.py")
    return state


def graph_connection(state: dict[str, Any]) -> dict[str, Any]:
    """The ``m365_graph`` connection for the Graph emulator's start line.

    The emulator serves the identity platform and Graph on one origin: the authority host is
    that origin (the product appends ``/{tenant_id}``), Graph's base URL is its ``graph_url``.
    """
    info, public_url, src = state["info"], state["public_url"], "graph.json"
    extra: dict[str, Any] = {
        "tenant_id": _field(info, "tenant_id", src),
        "authority": public_url,
        "base_url": _rehost(info.get("graph_url") or info.get("base_url"), public_url),
        "disable_instance_discovery": True,
    }
    if state.get("ca_bundle"):
        extra["ca_bundle"] = state["ca_bundle"]
    return {
        "conn_type": "m365_graph",
        "login": _field(info, "client_id", src),
        "password": _field(info, "client_secret", src),
        "extra": extra,
    }


def threecx_connection(state: dict[str, Any]) -> dict[str, Any]:
    info, public_url, src = state["info"], state["public_url"], "threecx.json"
    extra: dict[str, Any] = {}
    if state.get("ca_bundle"):
        extra["ca_bundle"] = state["ca_bundle"]
    return {
        "conn_type": "threecx_xapi",
        "host": _rehost(info.get("base_url"), public_url),
        "login": _field(info, "client_id", src),
        "password": _field(info, "client_secret", src),
        "extra": extra,
    }


def _resolves(url: str) -> bool:
    host = urlsplit(url).hostname
    try:
        return bool(host) and bool(socket.getaddrinfo(host, None))
    except OSError:
        return False


def emulator_connections(state_dir: Path, *, check_dns: bool = True) -> dict[str, str]:
    """``{env var name: connection JSON}`` for both emulators.

    :raises EmulatorStateError: when a state file is missing or incomplete, or an emulator host
        does not resolve (``check_dns``).
    """
    graph = load_state(state_dir, "graph")
    threecx = load_state(state_dir, "threecx")
    if check_dns:
        for state in (graph, threecx):
            if not _resolves(state["public_url"]):
                raise EmulatorStateError(f"{state['public_url']} does not resolve (emulator container not running)")
    return {
        f"AIRFLOW_CONN_{GRAPH_CONN_ID.upper()}": json.dumps(graph_connection(graph)),
        f"AIRFLOW_CONN_{THREECX_CONN_ID.upper()}": json.dumps(threecx_connection(threecx)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--mode", choices=("auto", "on", "off"), default="auto")
    args = parser.parse_args(argv)
    if args.mode == "off":
        return 0
    try:
        env = emulator_connections(args.state_dir)
    except (EmulatorStateError, ValueError) as exc:
        if args.mode == "on":
            print(f"m365-3cx: M365_3CX_EMULATORS=on but {exc}", file=sys.stderr)
            return 1
        return 0
    for name, value in env.items():
        print(f"export {name}={shlex.quote(value)}")
    print(
        "m365-3cx: emulators profile detected; connections m365_graph and threecx_xapi point at "
        "graph-emulator and threecx-emulator",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
