"""Our test database going away as in a PostgreSQL restart or failover, for the tests of
what survives one.

The PostgreSQL server is shared with other test runs on this machine, so it is not restarted:
our test database alone goes away. A restart or a failover does two things to a client: its
connections are dropped without warning, and new ones are refused until the server is back.
``ALTER DATABASE ... ALLOW_CONNECTIONS false`` then ``pg_terminate_backend`` on every backend of
the database does exactly that (each client sees "terminating connection due to administrator
command", then "database ... is not currently accepting connections"), and
``ALLOW_CONNECTIONS true`` ends it. A lock (tests/test_e2e_crash.py) only delays writes:
connections survive it, so it cannot show what a restart breaks.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from django.db import connection
from psycopg import sql

OUTAGE_SECONDS = 3.0


class DatabaseRestart:
    """Our test database down as in a restart, driven from a connection to ``postgres``."""

    def __init__(self) -> None:
        self.settings = connection.settings_dict
        self.name = self.settings["NAME"]
        assert self.name.startswith("test_"), "only ever a test database goes down"
        self.started = self.ended = 0.0

    def _admin(self) -> psycopg.Connection:
        # Not skipped when unreachable: PostgreSQL is configured, so that is a failure.
        return psycopg.connect(
            host=self.settings.get("HOST") or "127.0.0.1",
            port=self.settings.get("PORT") or 5432,
            user=self.settings.get("USER") or "postgres",
            password=self.settings.get("PASSWORD") or None,
            dbname="postgres",
            autocommit=True,
        )

    def _allow_connections(self, admin: psycopg.Connection, allowed: bool) -> None:
        admin.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
                sql.Identifier(self.name), sql.Literal(allowed)
            )
        )

    def stop(self) -> None:
        with self._admin() as admin:
            self._allow_connections(admin, False)
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                [self.name],
            )
        self.started = time.monotonic()

    def ensure_up(self) -> None:
        with self._admin() as admin:
            self._allow_connections(admin, True)

    def start(self) -> None:
        self.ensure_up()
        self.ended = time.monotonic()
        connection.close()  # this test's own connection was terminated too

    def hold(self, seconds: float) -> None:
        """Stay down until ``seconds`` after the stop: the length of the outage is the fault
        itself, not a wait for something to happen."""
        remaining = self.started + seconds - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

    @property
    def seconds(self) -> float:
        return self.ended - self.started


@contextmanager
def outage(restart: DatabaseRestart, seconds: float = OUTAGE_SECONDS) -> Iterator[DatabaseRestart]:
    restart.stop()
    try:
        yield restart
        restart.hold(seconds)
    finally:
        restart.start()
