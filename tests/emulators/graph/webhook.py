"""A small real HTTPS webhook receiver for the subscription tests (http.server + ssl, own CA)."""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from emulators.common.tls import ensure_tls


@dataclass
class Behaviour:
    """How the receiver answers.

    :param validation: ``echo`` (correct), ``status`` (answer ``validation_status``), ``wrong`` (other
        body), ``html`` (right body, ``text/html``), ``slow`` (echo after ``validation_delay`` s).
    :param statuses: statuses for the next notification POSTs (then 202).
    :param delays: seconds to wait before answering the next notification POSTs (then none).
    """

    validation: str = "echo"
    validation_status: int = 500
    validation_delay: float = 0.0
    statuses: list[int] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)


class WebhookReceiver:
    """``https://127.0.0.1:{port}/{path}``; records handshakes and notification bodies per path."""

    def __init__(self, tls_dir: Path) -> None:
        self.tls = ensure_tls(tls_dir)
        self.behaviour = Behaviour()
        self.lock = threading.Lock()
        self.validations: list[dict[str, Any]] = []
        self.posts: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                return

            def do_POST(self) -> None:
                receiver.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.tls.server_cert), str(self.tls.server_key))
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def ca_pem(self) -> str:
        return self.tls.ca_cert.read_text()

    def url(self, path: str = "notify") -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}/{path}"

    def reset(self) -> None:
        with self.lock:
            self.behaviour = Behaviour()
            self.validations.clear()
            self.posts.clear()

    def handle(self, request: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(request.path)
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        query = parse_qs(parts.query)
        with self.lock:
            behaviour = self.behaviour
        if "validationToken" in query:
            token = query["validationToken"][0]
            with self.lock:
                self.validations.append({"path": parts.path, "token": token,
                                         "content_type": request.headers.get("Content-Type")})
            if behaviour.validation == "status":
                return self._answer(request, behaviour.validation_status, b"", "text/plain")
            if behaviour.validation == "slow":
                time.sleep(behaviour.validation_delay)
            body = b"not the token" if behaviour.validation == "wrong" else token.encode()
            media = "text/html" if behaviour.validation == "html" else "text/plain"
            return self._answer(request, 200, body, media)
        with self.lock:
            status = behaviour.statuses.pop(0) if behaviour.statuses else 202
            delay = behaviour.delays.pop(0) if behaviour.delays else 0.0
            self.posts.append({"path": parts.path, "query": parts.query, "status": status,
                               "body": json.loads(raw or b"{}"), "time": time.monotonic()})
        if delay:
            time.sleep(delay)
        with contextlib.suppress(OSError):  # the emulator gave up waiting (timeout) and hung up
            self._answer(request, status, b"", "text/plain")

    @staticmethod
    def _answer(request: BaseHTTPRequestHandler, status: int, body: bytes, media: str) -> None:
        request.send_response(status)
        request.send_header("Content-Type", f"{media}; charset=utf-8")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    def notifications(self, path: str = "/notify", *, accepted_only: bool = True) -> list[dict[str, Any]]:
        """Every notification item posted to ``path`` (answered 2xx unless ``accepted_only=False``)."""
        with self.lock:
            return [item for post in self.posts if post["path"] == path
                    and (not accepted_only or 200 <= post["status"] < 300) for item in post["body"]["value"]]

    def wait_for(self, count: int, path: str = "/notify", timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            items = self.notifications(path)
            if len(items) >= count:
                return items
            time.sleep(0.02)
        return self.notifications(path)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
