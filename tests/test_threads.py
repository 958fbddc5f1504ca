"""Worker threads keep their database connection between calls; one broken by a database
restart is replaced before it is used (PostgreSQL only: the restart is PostgreSQL's)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, connection

from calls.models import Call
from calls.threads import in_db_thread
from tests.database_restart import DatabaseRestart, outage
from tests.servers import BackgroundLoop

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="a PostgreSQL restart: needs PostgreSQL"
)


def backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def count_calls() -> int:
    return Call.objects.count()


@pytest.fixture
def one_worker_thread():
    """A loop whose executor has a single thread: every call lands on the same connection."""
    background = BackgroundLoop()
    executor = ThreadPoolExecutor(1)
    background.loop.set_default_executor(executor)
    yield background
    executor.submit(lambda: connection.close()).result(5)
    background.close()
    executor.shutdown()


def test_the_connection_is_kept_between_calls(transactional_db, one_worker_thread):
    first = one_worker_thread.run(in_db_thread(backend_pid)())
    assert one_worker_thread.run(in_db_thread(backend_pid)()) == first


def test_a_connection_broken_by_a_restart_is_replaced_before_use(transactional_db, one_worker_thread):
    before = one_worker_thread.run(in_db_thread(backend_pid)())
    with outage(DatabaseRestart(), seconds=1.0):
        pass
    Call.objects.create(call_sid="CA" + "7" * 32)

    assert one_worker_thread.run(in_db_thread(count_calls)()) == 1  # first try, no retry
    assert one_worker_thread.run(in_db_thread(backend_pid)()) != before


def test_without_the_check_the_thread_keeps_its_dead_connection(transactional_db, one_worker_thread):
    """What the server did before (issue 12, defect 4): plain ``sync_to_async``."""
    one_worker_thread.run(sync_to_async(backend_pid, thread_sensitive=False)())
    with outage(DatabaseRestart(), seconds=1.0):
        pass
    for _ in range(3):
        with pytest.raises((OperationalError, InterfaceError), match="connection"):
            one_worker_thread.run(sync_to_async(count_calls, thread_sensitive=False)())
