"""A fake of the ngrok agent's local API (``GET /api/tunnels``) on a loopback HTTP server.

The real agent serves it on ``http://127.0.0.1:4040``; its answer lists the open tunnels,
each with ``name``, ``public_url``, ``proto`` (``https``, ``http`` or ``tcp``) and
``config.addr`` (where it forwards). ``manage.py connect_number`` reads the public URL from
it when PUBLIC_BASE_URL is not set. Deliberately free of Django.
"""

from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = ["FakeNgrokApi"]


class FakeNgrokApi:
    """``add_tunnel`` opens a tunnel as ``ngrok http 8000`` would (https, or http only)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.tunnels: list[dict[str, Any]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def add_tunnel(self, public_url: str, *, addr: str = "http://localhost:8000") -> None:
        proto = public_url.split("://", 1)[0]
        self.tunnels.append(
            {
                "name": f"{proto}-{uuid.uuid4().hex[:8]}",
                "ID": uuid.uuid4().hex,
                "uri": f"/api/tunnels/{proto}",
                "public_url": public_url,
                "proto": proto,
                "config": {"addr": addr, "inspect": True},
                "metrics": {},
            }
        )

    def start(self) -> FakeNgrokApi:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.rstrip("/") != "/api/tunnels":
                    self.send_error(404)
                    return
                body = json.dumps({"tunnels": fake.tunnels, "uri": "/api/tunnels"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer((self.host, self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-ngrok", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    @property
    def url(self) -> str:
        """The value for NGROK_API_URL."""
        return f"http://{self.host}:{self.port}/api/tunnels"

    def __enter__(self) -> FakeNgrokApi:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
