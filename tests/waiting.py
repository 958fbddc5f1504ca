"""Waiting on state the test cannot be told about: rows a server process writes, its log, a
port it opens. Such state can only be polled, so the wait has a deadline and, when it
passes, an error that says what never happened.

Where there is an event to wait on (a frame the fake caller heard, a message the fake OpenAI
sent), wait on the event instead: ``SimulatedCaller.wait_for``, ``wait_for_sent``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

POLL_SECONDS = 0.05


def wait_until(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """``predicate()``'s first truthy value, polled until ``timeout`` seconds have passed;
    then an AssertionError naming ``what`` (the condition awaited)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(POLL_SECONDS)


async def wait_until_async(predicate: Callable[[], T], timeout: float, what: str) -> T:
    """``wait_until`` for a coroutine on the event loop, which it never blocks."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(POLL_SECONDS)
