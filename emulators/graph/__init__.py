"""Microsoft Graph v1.0 + identity platform emulator (users, groups, delta, client credentials).

``start(tls_dir)`` runs it over HTTPS in a thread for tests; ``python -m emulators.graph`` runs
it in the foreground and prints one JSON line describing how to reach it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from emulators.common.handle import EmulatorHandle

__all__ = ["build", "describe", "start"]


def build(tls_dir: str | Path, *, seed: int = 42, users: int = 40, delta_token_max_age: float = 7 * 24 * 3600,
          token_lifetime: int = 3599, domain: str | None = None, fault_seed: int | None = None,
          contacts_per_user: int = 5, events_per_user: int = 8, now: str | dt.datetime | None = None,
          outlook_token_max_age: float = 7 * 24 * 3600,
          outgoing_ca_bundle: str | Path | Sequence[str | Path] | None = None,
          delivery: dict[str, Any] | None = None) -> tuple[Any, Any, Any]:
    """Create TLS files, the app certificate, the backend and the ASGI app.

    ``now`` (ISO 8601 string or datetime; naive = UTC) anchors the seeded calendars; default is the
    current time rounded down to the hour. Outgoing HTTPS (subscription handshakes and change
    notifications) trusts the emulator's own CA plus ``outgoing_ca_bundle`` (one PEM path or several)
    plus the files named in ``GRAPH_EMULATOR_OUTGOING_CA_BUNDLE`` (``os.pathsep``-separated).
    ``delivery`` overrides :class:`~emulators.graph.subscriptions.DeliveryConfig` fields (e.g.
    ``{"retry_base": 0.1}``).

    :return: ``(asgi_app, backend, tls_files)``.
    """
    from emulators.common.faults import FaultPlan
    from emulators.common.tls import ensure_tls
    from emulators.graph import identity
    from emulators.graph.app import create_app
    from emulators.graph.mailbox import MailboxOptions
    from emulators.graph.seed import DEFAULT_DOMAIN
    from emulators.graph.state import TenantBackend

    anchor = dt.datetime.fromisoformat(now.replace("Z", "+00:00")) if isinstance(now, str) else now
    options = MailboxOptions(contacts_per_user=contacts_per_user, events_per_user=events_per_user, now=anchor,
                             token_max_age=outlook_token_max_age)

    tls = ensure_tls(tls_dir)
    cert_path, _ = identity.ensure_app_certificate(tls_dir)
    backend = TenantBackend(seed, users, domain=domain or DEFAULT_DOMAIN,
                            delta_token_max_age=delta_token_max_age, token_lifetime=token_lifetime,
                            mailbox_options=options)
    backend.register_certificate(identity.certificate_der(cert_path))
    for bundle in outgoing_trust(tls.ca_cert, outgoing_ca_bundle):
        backend.subscriptions.trust(path=bundle)
    if delivery:
        backend.subscriptions.set_defaults(delivery)
    app = create_app(backend, faults=FaultPlan(seed if fault_seed is None else fault_seed))
    return app, backend, tls


def outgoing_trust(own_ca: str | Path, extra: str | Path | Sequence[str | Path] | None) -> list[Path]:
    """CA files outgoing HTTPS trusts: the emulator's CA, ``extra`` and ``GRAPH_EMULATOR_OUTGOING_CA_BUNDLE``."""
    import os

    paths = [Path(own_ca)]
    if isinstance(extra, (str, Path)):
        paths.append(Path(extra))
    elif extra:
        paths += [Path(p) for p in extra]
    env = os.environ.get("GRAPH_EMULATOR_OUTGOING_CA_BUNDLE", "")
    paths += [Path(p) for p in env.split(os.pathsep) if p]
    return paths


def describe(base_url: str, backend: Any, tls_dir: str | Path, tls: Any) -> dict[str, Any]:
    """The start-line dict: authority, graph_url, app credentials and PEM paths."""
    from emulators.graph import identity

    folder = Path(tls_dir).resolve()
    return {
        "authority": f"{base_url}/{backend.app.tenant_id}",
        "graph_url": base_url,
        "tenant_id": backend.app.tenant_id,
        "client_id": backend.app.client_id,
        "client_secret": backend.app.client_secret,
        "certificate_pem": str(folder / identity.APP_CERT_FILE),
        "private_key_pem": str(folder / identity.APP_KEY_FILE),
        "ca_bundle": str(Path(tls.ca_cert).resolve()),
    }


def start(tls_dir: str | Path, *, seed: int = 42, users: int = 40, host: str = "127.0.0.1", port: int = 0,
          delta_token_max_age: float = 7 * 24 * 3600, **opts: Any) -> EmulatorHandle:
    """Start the emulator over HTTPS in a daemon thread.

    :param tls_dir: folder for the CA, server certificate and the app certificate (created once).
    :param seed: tenant seed; the same seed gives the same tenant and credentials.
    :param users: number of seeded users.
    :param host: interface to bind; :param port: 0 picks a free port.
    :param delta_token_max_age: seconds a delta token stays valid (Graph: 7 days).
    :param opts: ``token_lifetime`` (access token seconds, default 3599), ``domain``, ``fault_seed``,
        ``contacts_per_user`` (5), ``events_per_user`` (8), ``now`` (ISO string; seeded calendars are
        relative to it), ``outlook_token_max_age`` (seconds an Outlook delta token lives, 7 days),
        ``outgoing_ca_bundle`` (CA PEM path(s) trusted for webhook calls, besides the emulator's own CA),
        ``delivery`` (DeliveryConfig overrides, e.g. ``{"retry_base": 0.1, "batch_window": 0.1}``).
    :return: handle with ``info`` (the CLI start line), ``backend`` and ``admin()``.
    :raises RuntimeError: when the server does not start.
    """
    from emulators.common.server import serve_in_thread

    app, backend, tls = build(tls_dir, seed=seed, users=users, delta_token_max_age=delta_token_max_age, **opts)
    server = serve_in_thread(app, tls, host, port)
    return EmulatorHandle(info=describe(server.base_url, backend, tls_dir, tls), server=server, backend=backend)
