"""The part the test servers share: a threaded HTTP server on 127.0.0.1 that a test starts and stops (`with`).

Subclasses (the fake Hub in hf_server.py, the GitHub/Drive look-alikes in web_server.py) set `handler`; their
handler reaches the owning object as `self.server.owner`.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, TypeVar

_S = TypeVar("_S", bound="LocalServer")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def send_cut(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes, cut: int) -> None:
    """Announce the whole body, send its first `cut` bytes, then drop the connection (an interrupted transfer)."""
    handler.send_response(status)
    for k, v in headers.items():
        handler.send_header(k, v)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body[:cut])
    handler.wfile.flush()
    handler.close_connection = True
    with contextlib.suppress(OSError):  # the client may have gone already
        handler.connection.shutdown(socket.SHUT_RDWR)


def closed_port() -> int:
    """A local port with nothing listening (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalServer:
    handler: ClassVar[type[BaseHTTPRequestHandler]]

    def __init__(self) -> None:
        self.requests: list[Any] = []
        self.cut_plan: list[int] = []  # body bytes sent before dropping the connection, one entry per response
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "start the server first (with ...)"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def _next_cut(self) -> int | None:
        with self._lock:
            return self.cut_plan.pop(0) if self.cut_plan else None

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    def __enter__(self: _S) -> _S:
        server = ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        server.daemon_threads = True
        server.owner = self  # type: ignore[attr-defined]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
