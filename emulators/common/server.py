"""Run an ASGI app over HTTPS with uvicorn: in a thread (tests) or in the foreground (CLI)."""

from __future__ import annotations

import gc
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from emulators.common.tls import TlsFiles


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted sockets inherit this: without it every small response waits ~40 ms for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _config(app: Any, tls: TlsFiles, host: str, port: int) -> Any:
    import uvicorn

    return uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(tls.server_cert),
        ssl_keyfile=str(tls.server_key),
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_keep_alive=30,
        # An idle keep-alive TLS connection would otherwise hold shutdown (SIGTERM) open until the
        # peer goes away; cap the graceful shutdown.
        timeout_graceful_shutdown=2,
        # uvloop and httptools (uvicorn's C event loop and HTTP parser): the emulators spend their CPU
        # per request, and the bench's tens of thousands of requests per run must not queue on them.
        loop="uvloop",
        http="httptools",
    )


@dataclass
class ServerHandle:
    """A running emulator server: its base URL and a way to stop it."""

    base_url: str
    port: int
    _server: Any = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask uvicorn to shut down and wait for its thread.

        Idle keep-alive TLS connections (a client's pooled session) would hold a graceful
        shutdown for a long time, so after one second the shutdown is forced.
        """
        self._server.should_exit = True
        self._thread.join(min(timeout, 1.0))
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)


def serve_in_thread(app: Any, tls: TlsFiles, host: str = "127.0.0.1", port: int = 0) -> ServerHandle:
    """Start ``app`` on a free port in a daemon thread and wait until it accepts connections.

    :raises RuntimeError: when the server does not start within 15 seconds.
    """
    import uvicorn

    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(_config(app, tls, host, bound_port))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                              name=f"emulator-{bound_port}")
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError(f"emulator on port {bound_port} did not start")
        time.sleep(0.02)
    return ServerHandle(f"https://{host}:{bound_port}", bound_port, server, thread)


def serve_forever(
    app: Any,
    tls: TlsFiles,
    host: str,
    port: int,
    announce: Callable[[str, int], dict[str, Any]],
) -> None:
    """Serve ``app`` in the foreground; once listening, print ``announce(url, port)`` as one JSON line.

    The state seeded so far (a large tenant or phonebook: millions of objects) lives as long as the
    process, so it is moved out of the garbage collector's reach (``gc.freeze``): otherwise every full
    collection walks all of it, a cost per request that grows with the tenant.
    """
    import uvicorn

    gc.collect()
    gc.freeze()

    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(_config(app, tls, host, bound_port))
    base_url = f"https://{host}:{bound_port}"

    def _announce_when_started() -> None:
        while not server.started and not server.should_exit:
            time.sleep(0.02)
        if server.started:
            sys.stdout.write(json.dumps(announce(base_url, bound_port)) + "\n")
            sys.stdout.flush()

    threading.Thread(target=_announce_when_started, daemon=True).start()
    server.run(sockets=[sock])
