"""The HTTP server under the fakes of REST APIs (Twilio's, OpenAI's Responses): threaded, on
a port of this machine, in a daemon thread; stopping it also ends the keep-alive connections
that the clients' pools hold, which would otherwise go on being served."""

from __future__ import annotations

import contextlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar


class LocalHttpServer:
    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{self.name} is not running: call start() first")
        return int(self._server.server_address[1])

    def start(self, host: str, port: int, handler: type[BaseHTTPRequestHandler]) -> int:
        """Serve ``handler`` on ``host:port`` (0: a free port); returns the port."""
        if self._server is not None:
            raise RuntimeError(f"{self.name} is already running")
        server = ThreadingHTTPServer((host, port), handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=self.name, daemon=True
        )
        self._thread.start()
        return self.port

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        if thread is not None:
            thread.join(timeout=5)

    def opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)


class KeepAliveHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 with keep-alive, as the clients' connection pools expect; its connections
    known to ``http``, so that stopping the server ends them."""

    http: ClassVar[LocalHttpServer]
    protocol_version = "HTTP/1.1"
    sys_version = ""
    timeout = 60  # drop idle keep-alive connections eventually

    def setup(self) -> None:
        super().setup()
        self.http.opened(self.connection)

    def finish(self) -> None:
        self.http.closed(self.connection)
        super().finish()
