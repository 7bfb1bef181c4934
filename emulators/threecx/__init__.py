"""3CX V20 Configuration API (XAPI) emulator: OAuth client credentials, Users, Groups, SystemStatus.

Start it in a thread with :func:`start` (tests) or as ``python -m emulators.threecx`` (CLI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from emulators.common.handle import EmulatorHandle


def start(
    tls_dir: str | Path,
    *,
    seed: int = 7,
    unmanaged: bool = True,
    host: str = "127.0.0.1",
    port: int = 0,
    client_id: str = "m365sync",
    client_secret: str | None = None,
    token_lifetime: int = 3600,
    **opts: Any,
) -> EmulatorHandle:
    """Start the emulator over HTTPS in a daemon thread.

    :param tls_dir: folder for the throwaway CA and server certificate (created if missing).
    :param seed: seed of every generated value (client secret, passwords, PINs).
    :param unmanaged: seed the pre-existing extensions the sync must never touch.
    :param host: address to bind.
    :param port: port to bind; 0 picks a free one.
    :param client_id: the service principal's client id.
    :param client_secret: its API key; derived from ``seed`` when ``None``.
    :param token_lifetime: access token lifetime in seconds.
    :param opts: :class:`~emulators.threecx.state.PbxConfig` fields (``version``,
        ``first_extension``, ``max_top``, ``product_code``, ``fqdn``, ``max_sim_calls``).
    :return: the running emulator; ``info`` is the CLI start line, ``backend`` the PBX state.
    :raises RuntimeError: when the server does not start.
    """
    from emulators.common.server import serve_in_thread
    from emulators.common.tls import ensure_tls
    from emulators.threecx.app import build

    tls = ensure_tls(tls_dir)
    app, backend = build(seed=seed, unmanaged=unmanaged, client_id=client_id, client_secret=client_secret,
                         token_lifetime=token_lifetime, **opts)
    server = serve_in_thread(app, tls, host, port)
    info = backend.announce(server.base_url, tls.ca_cert)
    return EmulatorHandle(info=info, server=server, backend=backend)


__all__ = ["start"]
