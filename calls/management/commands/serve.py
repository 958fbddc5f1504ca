"""Production's one command: one ASGI server process per core, each with its own port and
``WORKER_ROUTE``, kept running until SIGTERM.

Why not the server's own ``--workers``: uvicorn's workers share one port, so a proxy cannot
send a call's media socket back to the worker that pre-connected its OpenAI session
(``WORKER_ROUTE``, deploy/nginx/voiceagent.conf). Here worker N listens on ``--port`` + N - 1
with ``WORKER_ROUTE=wN``: the same layout as the systemd instances ``voiceagent@N``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from calls.processes import ASGI_SERVERS, GRACEFUL_SHUTDOWN_SECONDS, PRODUCTION_SERVER, asgi_server_command

# A worker that dies is started again after this long, doubling up to the maximum while it
# keeps dying within STABLE_SECONDS of its start (a broken release must not spin a core).
RESTART_DELAY_SECONDS = 1.0
MAX_RESTART_DELAY_SECONDS = 30.0
STABLE_SECONDS = 30.0
POLL_SECONDS = 0.2
# After SIGTERM: the server's own graceful shutdown, then this margin, then SIGKILL.
STOP_MARGIN_SECONDS = 5.0


@dataclass
class Worker:
    number: int
    port: int
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_delay: float = RESTART_DELAY_SECONDS
    restart_at: float = 0.0

    @property
    def route(self) -> str:
        return f"w{self.number}"


class Command(BaseCommand):
    help = (
        "Serve the application with production's ASGI server: one process per core (--workers), "
        "worker N on --port + N - 1 with WORKER_ROUTE=wN, restarted if it dies; SIGTERM stops "
        "them all, each ending its calls cleanly. Run migrate and close_stale_calls --all before."
    )
    # The workers check the project when they start; this process only supervises them.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--workers",
            type=int,
            default=os.cpu_count() or 1,
            help="server processes (default: one per core)",
        )
        parser.add_argument(
            "--host", default="127.0.0.1", help="address every worker binds (default 127.0.0.1)"
        )
        parser.add_argument(
            "--port", type=int, default=8001, help="worker 1's port; worker N's is PORT + N - 1"
        )
        parser.add_argument(
            "--server",
            choices=ASGI_SERVERS,
            default=PRODUCTION_SERVER,
            help=f"the ASGI server (default {PRODUCTION_SERVER}; the others were its competitors in bench/)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        count: int = options["workers"]
        if count < 1:
            raise CommandError("--workers must be at least 1")
        if count > 1 and "sqlite" in settings.DATABASES["default"]["ENGINE"]:
            raise CommandError("several workers need PostgreSQL (DATABASE_URL): SQLite is for one process")
        if count > 1 and not os.environ.get("REDIS_URL"):
            self.stderr.write("Warning: no REDIS_URL: each worker sees only its own calls on the live page.")
        ports = [options["port"] + n for n in range(count)]
        workers = [
            Worker(n, port, asgi_server_command(options["server"], port=port, host=options["host"]))
            for n, port in enumerate(ports, start=1)
        ]
        stopping: list[int] = []

        def stop(signum: int, frame: FrameType | None) -> None:
            stopping.append(signum)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        for worker in workers:
            self._start(worker)
        while not stopping:
            time.sleep(POLL_SECONDS)  # a supervisor's wait: nothing here is on a call's path
            now = time.monotonic()
            for worker in workers:
                self._watch(worker, now)
        self._stop_all(workers)

    def _start(self, worker: Worker) -> None:
        environment = os.environ | {"WORKER_ROUTE": worker.route}
        worker.process = subprocess.Popen(worker.command, env=environment)
        worker.started_at = time.monotonic()
        self.stdout.write(
            f"Worker {worker.number} (pid {worker.process.pid}) on port {worker.port}, route {worker.route}"
        )

    def _watch(self, worker: Worker, now: float) -> None:
        process = worker.process
        if process is not None:
            code = process.poll()
            if code is None:
                return
            lived = now - worker.started_at
            worker.restart_delay = (
                RESTART_DELAY_SECONDS if lived >= STABLE_SECONDS
                else min(worker.restart_delay * 2, MAX_RESTART_DELAY_SECONDS)
            )  # fmt: skip
            worker.restart_at = now + worker.restart_delay
            worker.process = None
            self.stderr.write(
                f"Worker {worker.number} exited with status {code} after {lived:.0f} s;"
                f" starting it again in {worker.restart_delay:.0f} s"
            )
            return
        if now >= worker.restart_at:
            self._start(worker)

    def _stop_all(self, workers: list[Worker]) -> None:
        running = [w.process for w in workers if w.process is not None and w.process.poll() is None]
        self.stdout.write(f"Stopping {len(running)} worker(s); each ends its calls cleanly")
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACEFUL_SHUTDOWN_SECONDS + STOP_MARGIN_SECONDS
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"Worker pid {process.pid} still running; killing it")
                process.kill()
                process.wait()
        sys.stdout.flush()
