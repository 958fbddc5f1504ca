"""Servers started as child processes on a local port: the demo's stand-in and daphne
(calls/simulation.py), the end-to-end tests' daphne (tests/servers.py) and the benchmark's
(bench/bridge_latency.py). Standard library only: the benchmark imports it without Django."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any


def stop_process(process: subprocess.Popen[Any]) -> None:
    """SIGTERM first, so a server ends its calls cleanly; SIGKILL if it takes over 10 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
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
