"""wait_for_port, which every start-up of a server in a child process relies on: it must tell
a server that listens from one that died or hangs, and not leave the hanging one running."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from calls.processes import stop_process, wait_for_port
from calls.simulation import free_port


def child(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)])


def test_returns_once_the_port_accepts_connections() -> None:
    port = free_port()
    process = child(
        f"""
        import socket, time
        time.sleep(0.3)
        server = socket.create_server(("127.0.0.1", {port}))
        time.sleep(30)
        """
    )
    try:
        wait_for_port(process, port, timeout=20, name="listener", log=lambda: "")
        assert process.poll() is None
    finally:
        stop_process(process)


def test_a_process_that_exits_is_reported_with_its_log() -> None:
    process = child("raise SystemExit(3)")
    with pytest.raises(RuntimeError) as raised:
        wait_for_port(process, free_port(), timeout=20, name="crasher", log=lambda: "Traceback: boom")
    assert str(raised.value) == "crasher exited at start-up:\nTraceback: boom"


def test_a_process_that_never_listens_is_stopped_and_reported_in_the_callers_error() -> None:
    class StartError(Exception):
        pass

    port = free_port()
    process = child("import time; time.sleep(60)")
    try:
        with pytest.raises(StartError) as raised:
            wait_for_port(process, port, timeout=0.5, name="sleeper", log=lambda: "quiet", error=StartError)
        assert str(raised.value) == f"sleeper did not listen on port {port} within 0.5 s:\nquiet"
        assert process.poll() is not None  # stopped, not left behind
    finally:
        stop_process(process)
