"""The database writer of a call, without sockets: what it logs while the database is away,
and (PostgreSQL only) that it keeps every turn, in order, through a real restart."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import pytest
from django.db import OperationalError, connection

from calls.bridge_actions import SaveTurn, TurnRecord
from calls.call_store import CallStore, StoreOutage, retry_delays
from calls.models import Call, Role
from tests.database_restart import DatabaseRestart, outage
from tests.servers import BackgroundLoop
from tests.waiting import wait_until

SID = "CA" + "5" * 32


def test_retries_back_off_to_every_two_seconds_and_never_stop():
    assert list(islice(retry_delays(), 8)) == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0, 2.0]


def messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "calls.call_store"]


def test_an_outage_is_one_warning_and_one_line_when_storing_has_caught_up(caplog):
    caplog.set_level(logging.INFO, logger="calls.call_store")
    outage = StoreOutage(SID)
    outage.stored(0.0)
    outage.caught_up()
    assert messages(caplog) == []  # no outage, nothing to say

    for second in range(10):  # a retry every second, failing
        outage.failed(OperationalError("the connection is closed"), 100.0 + second)
    assert outage.paused
    outage.stored(112.5)
    outage.failed(OperationalError("server closed the connection unexpectedly"), 112.6)  # flapping
    outage.stored(113.0)
    outage.stored(113.1)
    assert not outage.paused
    outage.caught_up()
    outage.caught_up()

    assert messages(caplog) == [
        f"call {SID}: database unavailable (the connection is closed); storing paused, kept in order"
        " until it answers",
        f"call {SID}: storing resumed after 13.0 s, 3 items written",
    ]


class Store(CallStore):
    """The writer's part of the consumer, with the state the consumer gives it."""

    def __init__(self, call_sid: str) -> None:
        self.call_sid = call_sid
        self.bridge = None
        self.to_database = asyncio.Queue()
        self.writer = None
        self.outage = StoreOutage(call_sid)
        self.unstored = Counter()
        self.recorder = self.wav = self.recording_flush = None


def turn(position: int) -> SaveTurn:
    return SaveTurn(
        TurnRecord(
            position=position,
            role=Role.CALLER if position % 2 else Role.AGENT,
            text=f"turn {position}",
            item_id=f"item_{position}",
            started_ms=position * 1000,
            ended_ms=position * 1000 + 500,
            interrupted=False,
        )
    )


@pytest.mark.skipif(connection.vendor != "postgresql", reason="a PostgreSQL restart: needs PostgreSQL")
def test_the_writer_keeps_every_turn_in_order_through_a_restart(transactional_db, caplog):
    caplog.set_level(logging.INFO, logger="calls.call_store")
    Call.objects.create(call_sid=SID)
    background = BackgroundLoop()
    # One worker thread: the connection the restart breaks is the one the next write uses.
    executor = ThreadPoolExecutor(1)
    background.loop.set_default_executor(executor)
    store = Store(SID)
    restart = DatabaseRestart()

    async def start() -> None:
        store.writer = asyncio.create_task(store._write_database())

    async def put(*actions: SaveTurn) -> None:
        for action in actions:
            store._store_later(action)

    async def end() -> None:
        store.to_database.put_nowait(None)
        await asyncio.wait_for(asyncio.shield(store.writer), 10)

    try:
        background.run(start())
        background.run(put(turn(0)))
        wait_until(lambda: Call.objects.get().turns.count() == 1, 10, "the first turn stored")
        with outage(restart):
            background.run(put(turn(1), turn(2), turn(3), turn(4)))
            wait_until(lambda: "storing paused" in " ".join(messages(caplog)), 10, "storing paused, logged")
            assert store.unstored["turn"] == 4
        resumed = wait_until(
            lambda: [m for m in messages(caplog) if "storing resumed" in m], 10, "storing resumed, logged"
        )
        since_back = time.monotonic() - restart.ended
        background.run(put(turn(5)))
        background.run(end())
    finally:
        executor.submit(lambda: connection.close()).result(5)  # the worker thread's connection
        background.close()
        executor.shutdown()

    texts = list(Call.objects.get().turns.order_by("position").values_list("text", flat=True))
    assert texts == [f"turn {i}" for i in range(6)]
    assert store.unstored["turn"] == 0
    assert len([m for m in messages(caplog) if "database unavailable" in m]) == 1
    assert resumed == [resumed[0]] and resumed[0].endswith("4 items written")
    assert since_back < 3  # retries every 2 s at most
