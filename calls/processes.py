"""Servers started as child processes on a local port: the demo's stand-in and ASGI server
(calls/simulation.py), the end-to-end tests' (tests/servers.py) and the benchmark's
(bench/bridge_latency.py). Standard library only: the benchmark imports it without Django."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

APPLICATION = "voiceagent.asgi:application"

# The ASGI servers our application runs under, by the name the benchmark and the tests use.
# PRODUCTION_SERVER is deploy/'s (chosen by bench/README.md's comparison); "daphne" is what
# `manage.py runserver` serves. The uvicorn variants differ only in their WebSocket protocol.
ASGI_SERVERS = ("daphne", "uvicorn-sansio", "uvicorn-wsproto", "uvicorn-websockets", "granian")
PRODUCTION_SERVER = "uvicorn-sansio"

WS_MAX_MESSAGE_BYTES = 1024 * 1024
GRACEFUL_SHUTDOWN_SECONDS = 20

_UVICORN_WS = {
    "uvicorn-sansio": "websockets-sansio",
    "uvicorn-wsproto": "wsproto",
    "uvicorn-websockets": "websockets",
}


def asgi_server_command(
    server: str, *, port: int, host: str = "127.0.0.1", verbose: bool = False, extra: Sequence[str] = ()
) -> list[str]:
    """The command that serves our application with ``server`` on host:port, with the options
    production uses (deploy/systemd/voiceagent@.service spells out the same for uvicorn)."""
    python = [sys.executable, "-m"]
    if server in _UVICORN_WS:
        return [
            *python, "uvicorn", APPLICATION, "--host", host, "--port", str(port),
            "--ws", _UVICORN_WS[server], "--loop", "uvloop", "--http", "httptools",
            # Channels' router has no lifespan protocol; without "off" uvicorn logs that at start.
            "--lifespan", "off",
            # Daphne's limit (uvicorn's is 16 MiB): Twilio's messages are under 1 KiB.
            "--ws-max-size", str(WS_MAX_MESSAGE_BYTES),
            # Each call bounds its own end to SHUTDOWN_GRACE_SECONDS; this is the backstop.
            "--timeout-graceful-shutdown", str(GRACEFUL_SHUTDOWN_SECONDS),
            *([] if verbose else ["--no-access-log"]),
            *extra,
        ]  # fmt: skip
    if server == "daphne":
        # -v 2 lets Twisted's log through: autobahn says there why it dropped a connection.
        verbosity = ["-v", "2"] if verbose else []
        return [*python, "daphne", *verbosity, "-b", host, "-p", str(port), *extra, APPLICATION]
    if server == "granian":
        # Tuned for a small machine: one worker, one runtime thread, uvloop, no access log.
        return [
            *python, "granian", "--interface", "asgi", "--host", host, "--port", str(port),
            "--workers", "1", "--runtime-mode", "st", "--runtime-threads", "1", "--loop", "uvloop",
            "--log-level", "info" if verbose else "warning", "--no-access-log",
            *extra, APPLICATION,
        ]  # fmt: skip
    raise ValueError(f"unknown ASGI server {server!r}: one of {', '.join(ASGI_SERVERS)}")


def stop_process(process: subprocess.Popen[Any], timeout: float = 10) -> None:
    """SIGTERM first, so a server ends its calls cleanly; SIGKILL if it takes over ``timeout``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for_port(
    process: subprocess.Popen[Any],
    port: int,
    *,
    timeout: float,
    name: str,
    log: Callable[[], str],
    error: Callable[[str], Exception] = RuntimeError,
) -> None:
    """Return once 127.0.0.1:port accepts a connection. If the process exits first, or the
    time runs out (the process is then stopped, so it cannot outlive its caller), raise
    ``error`` with what ``log()`` returns: why a server did not start is in its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:  # start-up only: nothing else polls
        if process.poll() is not None:
            raise error(f"{name} exited at start-up:\n{log()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    stop_process(process)
    raise error(f"{name} did not listen on port {port} within {timeout:g} s:\n{log()}")
