#!/usr/bin/env python3
"""Run one emulator for the compose ``emulators`` profile and publish its start line.

The emulators print one JSON line with their credentials once they listen. This wrapper
(used as the emulator services' command in docker-compose.yaml):

1. makes sure the emulator's throwaway TLS files exist in ``--tls-dir`` with the compose
   service name in the server certificate (``emulators.common.tls.ensure_tls`` reuses existing
   files, so the emulator then serves this certificate);
2. starts the emulator command given after ``--``;
3. writes its JSON start line, plus the URL other containers reach it at, atomically to
   ``<state-dir>/<name>.json`` (the shared ``emulator-state`` volume), relays its output and
   forwards SIGTERM/SIGINT;
4. removes the state file when the emulator stops, so the file exists only while it runs.

``docker/emulator_connections.py`` turns the state files into ``AIRFLOW_CONN_*`` values.

Usage::

    run_emulator.py --name graph --public-url https://graph-emulator:8443 \
        --hostname graph-emulator --tls-dir DIR --state-dir DIR -- python -m emulators.graph ...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _san_names(cert_path: Path) -> set[str]:
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(san.get_values_for_type(x509.DNSName))


def prepare_tls(tls_dir: Path, hostname: str) -> Path:
    """Create (or keep) the CA and a server certificate valid for ``hostname``; return the CA path."""
    from emulators.common.tls import ensure_tls

    server_cert = tls_dir / "server.pem"
    if server_cert.exists() and hostname not in _san_names(server_cert):
        for name in ("ca.pem", "server.pem", "server-key.pem"):
            (tls_dir / name).unlink(missing_ok=True)
    files = ensure_tls(tls_dir, (hostname, "localhost"))
    return files.ca_cert


def write_state(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle)
    os.chmod(tmp, 0o640)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="state file name, e.g. graph or threecx")
    parser.add_argument(
        "--public-url", required=True, help="URL other containers use, e.g. https://graph-emulator:8443"
    )
    parser.add_argument("--hostname", help="DNS name to put in the server certificate")
    parser.add_argument("--tls-dir", type=Path, help="the emulator's --tls-dir")
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- emulator command")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the emulator command after --")

    state_file = args.state_dir / f"{args.name}.json"
    state_file.unlink(missing_ok=True)
    ca_bundle = None
    if args.tls_dir is not None and args.hostname:
        ca_bundle = str(prepare_tls(args.tls_dir, args.hostname))

    child = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, bufsize=1)

    def _forward(signum: int, _frame: Any) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, _forward)
    signal.signal(signal.SIGINT, _forward)

    published = False
    try:
        assert child.stdout is not None
        for line in child.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if published:
                continue
            try:
                info = json.loads(line)
            except ValueError:
                continue
            if not isinstance(info, dict):
                continue
            write_state(
                state_file,
                {
                    "name": args.name,
                    "public_url": args.public_url.rstrip("/"),
                    "ca_bundle": info.get("ca_bundle") or ca_bundle,
                    "info": info,
                    "published_at": time.time(),
                },
            )
            published = True
            print(
                f"run_emulator: {args.name} is up at {args.public_url}; wrote {state_file}", file=sys.stderr, flush=True
            )
        return child.wait()
    finally:
        state_file.unlink(missing_ok=True)
        if child.poll() is None:
            child.terminate()
            child.wait(10)


if __name__ == "__main__":
    sys.exit(main())
