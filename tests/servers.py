"""Real servers for end-to-end tests: our ASGI app under daphne in a subprocess, sharing the
test database, plus the fakes at the network edge on a background event loop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from calls.processes import stop_process, wait_for_port
from calls.simulation import database_url, free_port

__all__ = ["BackgroundLoop", "LiveServer", "database_url", "free_port", "start_daphne"]

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

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)


def start_daphne(
    env_overrides: dict[str, str], log_path: Path, *, port: int | None = None, daphne_args: Sequence[str] = ()
) -> LiveServer:
    port = port or free_port()
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(env_overrides)
    env.setdefault("PUBLIC_BASE_URL", f"http://127.0.0.1:{port}")
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            *daphne_args,
            "voiceagent.asgi:application",
        ],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = LiveServer(url=f"http://127.0.0.1:{port}", port=port, process=process, log_path=log_path)
    wait_for_port(process, port, timeout=30, name="daphne", log=server.log)
    return server
