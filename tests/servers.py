"""Real servers for end-to-end tests: our ASGI app in a subprocess under production's server
(``calls.processes.PRODUCTION_SERVER``) or another (daphne, what ``runserver`` serves),
sharing the test database, plus the fakes at the network edge on a background event loop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from calls.processes import PRODUCTION_SERVER, asgi_server_command, stop_process, wait_for_port
from calls.simulation import database_url, free_port

__all__ = [
    "BackgroundLoop",
    "LiveServer",
    "application_error_in",
    "database_url",
    "free_port",
    "start_asgi_server",
]

# How each server logs an exception that escaped our application: daphne, uvicorn.
APPLICATION_ERRORS = ("Exception inside application", "Exception in ASGI application")


def application_error_in(log: str) -> bool:
    return any(error in log for error in APPLICATION_ERRORS)


ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


class BackgroundLoop:
    """An asyncio loop in a thread: fakes and simulated callers live there, tests submit work."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="e2e-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@dataclass
class LiveServer:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    server: str = PRODUCTION_SERVER

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)

    @property
    def stopped_cleanly(self) -> bool:
        """Exited after SIGTERM as this server does when all went well: daphne with status 0,
        uvicorn by re-raising the SIGTERM it caught once it had shut down."""
        return self.process.returncode in (0, -signal.SIGTERM)


def start_asgi_server(
    env_overrides: dict[str, str],
    log_path: Path,
    *,
    server: str = PRODUCTION_SERVER,
    port: int | None = None,
    args: Sequence[str] = (),
) -> LiveServer:
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(env_overrides)
    env.setdefault("PUBLIC_BASE_URL", f"http://127.0.0.1:{port}")
    log = log_path.open("wb")
    command = asgi_server_command(server, port=port, verbose=True, extra=args)
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    live = LiveServer(url=url, port=port, process=process, log_path=log_path, server=server)
    wait_for_port(process, port, timeout=30, name=server, log=live.log)
    return live
