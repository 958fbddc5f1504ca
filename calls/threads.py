"""Blocking work (database services, files, tools) in the event loop's worker threads, with a
database connection that survives a database restart.

Django checks a connection only when a request starts or ends (``close_old_connections``).
These threads serve no request and live as long as the process, each keeping the connection
it opened: after PostgreSQL restarted (a maintenance window, a failover), every one of them
failed with "the connection is closed" until the server itself was restarted (issue 12,
defect 4). Here a connection is checked before each use, and dropped when it fails, so the
next call on that thread, a retry, reconnects.

They keep their connection between calls, whatever ``CONN_MAX_AGE`` says for requests: a
new PostgreSQL connection costs about 7 ms here against 0.15 ms for a query on an open one,
for every turn written. The threads are a fixed pool (the loop's default executor), so the
connections are too.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import DatabaseError, DataError, IntegrityError, connection

P = ParamSpec("P")
R = TypeVar("R")


def in_thread(function: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """``function`` run in a worker thread, never on the event loop (file work)."""
    return sync_to_async(function, thread_sensitive=False)


def in_db_thread(function: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """``function``, which uses the database, run in a worker thread on a sound connection."""
    return sync_to_async(_on_sound_connection(function), thread_sensitive=False)


def _on_sound_connection(function: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(function)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        discard_broken_connection()
        try:
            return function(*args, **kwargs)
        except (IntegrityError, DataError):
            raise  # the data was refused, the connection is fine
        except DatabaseError:
            # Whatever failed (a dropped connection, a server gone read-only in a failover),
            # the retry gets a new connection, to wherever the database now is.
            connection.close()
            raise

    return run


def discard_broken_connection() -> None:
    """Close this thread's connection if it no longer answers; the next query opens a new one.

    A ping (``SELECT 1``, 0.15 ms here) before each use, as Django's ``CONN_HEALTH_CHECKS``
    does for a request: a connection that sat idle through a restart is broken without
    anyone knowing, and without the ping the first call on each thread after it (a stream's
    authentication, a turn) failed once and had to be retried.
    """
    if connection.connection is None:
        return
    if connection.is_usable():
        connection.errors_occurred = False
    else:
        connection.close()
