"""The database writer and the recording of a call, without sockets: what the writer stores
and in what order, what it logs while the database is away, and (PostgreSQL only) that it
keeps every turn, in order, through a real restart; the recording's file from start to storing."""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from itertools import islice
from pathlib import Path

import pytest
from django.db import OperationalError, connection

from calls.bridge.actions import CallSummary, RecordError, SaveTurn, TurnRecord
from calls.call_store import CallRecording, StoreOutage, TurnWriter, retry_delays
from calls.models import Call, CallStatus, EndedReason, Role
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


def turn(position: int, text: str = "") -> SaveTurn:
    return SaveTurn(
        TurnRecord(
            position=position,
            role=Role.CALLER if position % 2 else Role.AGENT,
            text=text or f"turn {position}",
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
    store = TurnWriter(SID)
    restart = DatabaseRestart()

    async def start() -> None:
        store.start()

    async def put(*actions: SaveTurn) -> None:
        for action in actions:
            store.store_later(action)

    async def end() -> None:
        await asyncio.wait_for(store.drain(), 10)

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


def test_what_is_not_stored_yet_is_described_by_kind():
    writer = TurnWriter(SID)
    assert writer.unstored_description() == "nothing"
    for position in range(3):
        writer.store_later(turn(position))
    writer.store_later(RecordError("OpenAI session lost"))
    assert writer.unstored_description() == "3 turns, 1 call error"


def test_the_writer_stores_in_the_order_given_then_the_end(transactional_db):
    Call.objects.create(call_sid=SID, status=CallStatus.IN_PROGRESS)
    writer = TurnWriter(SID)

    async def call() -> None:
        writer.start()
        writer.store_later(turn(0))
        writer.store_later(turn(1, "I'd like a table for"))
        writer.store_later(RecordError("OpenAI session lost (1011); reconnecting"))
        writer.store_later(turn(1, "I'd like a table for two"))  # the same turn, stored again when complete
        writer.store_later(turn(2))
        await writer.store_the_end(CallSummary(EndedReason.CALLER_HUNG_UP, interruptions=1))

    asyncio.run(call())

    stored = Call.objects.get()
    texts = list(stored.turns.order_by("position").values_list("text", flat=True))
    assert texts == ["turn 0", "I'd like a table for two", "turn 2"]
    assert stored.error == "OpenAI session lost (1011); reconnecting"
    assert stored.ended_reason == EndedReason.CALLER_HUNG_UP
    assert stored.status == CallStatus.COMPLETED
    assert writer.unstored_description() == "nothing"


FRAME = base64.b64encode(b"\x10" * 160).decode()  # 20 ms of mu-law, not silence


def wav_frames(path: Path) -> int:
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getframerate()) == (2, 8000)
        return wav.getnframes()


def test_a_recording_is_written_as_the_call_goes_and_handed_over_closed(settings, tmp_path):
    settings.RECORDING_WORK_DIR = tmp_path / "in-progress"
    recording = CallRecording(SID)
    handed: list[int] = []

    async def save(path: Path) -> bool:
        handed.append(wav_frames(path))  # closed: its header holds the real size
        return True

    async def call() -> int:
        assert await recording.start(now=100.0)
        assert recording.recorder is not None
        for frame in range(100):  # two seconds of the caller
            recording.recorder.caller(FRAME, frame * 20)
        await recording.record(now=101.5)  # final up to 1.0 s (half a second looked behind)
        assert recording.wav is not None
        written = recording.wav.data_bytes
        await recording.finish(save)
        return written

    written = asyncio.run(call())
    assert written == 8000 * 4  # one second, stereo 16-bit
    assert handed == [16000]  # both seconds
    assert not (tmp_path / "in-progress" / f"{SID}.wav").exists()  # stored, so deleted
    assert recording.recorder is None and recording.wav is None


def test_a_recording_storage_refused_is_kept_on_disk(settings, tmp_path):
    settings.RECORDING_WORK_DIR = tmp_path / "in-progress"
    recording = CallRecording(SID)

    async def refused(path: Path) -> bool:
        return False

    async def call() -> None:
        assert await recording.start(now=0.0)
        assert recording.recorder is not None
        recording.recorder.caller(FRAME, 0)
        await recording.finish(refused)

    asyncio.run(call())
    assert wav_frames(tmp_path / "in-progress" / f"{SID}.wav") == 160


def test_a_recording_that_cannot_start_costs_only_the_recording(settings, tmp_path):
    (tmp_path / "a-file").write_text("")
    settings.RECORDING_WORK_DIR = tmp_path / "a-file" / "in-progress"  # cannot be a directory
    recording = CallRecording(SID)

    async def never(path: Path) -> bool:
        raise AssertionError("nothing to store")

    async def call() -> bool:
        started = await recording.start(now=0.0)
        await recording.record(now=5.0)
        await recording.finish(never)
        return started

    assert asyncio.run(call()) is False
    assert recording.recorder is None and recording.wav is None


def test_the_end_stores_the_recording_before_the_call_is_finalised(transactional_db, settings, tmp_path):
    settings.RECORDING_WORK_DIR = tmp_path / "in-progress"
    settings.MEDIA_ROOT = tmp_path / "media"
    Call.objects.create(call_sid=SID, status=CallStatus.IN_PROGRESS)
    writer, recording = TurnWriter(SID), CallRecording(SID)

    async def call() -> None:
        writer.start()
        assert await recording.start(now=0.0)
        assert recording.recorder is not None
        recording.recorder.caller(FRAME, 0)
        writer.store_later(turn(0))
        await writer.store_the_end(CallSummary(EndedReason.AGENT_ENDED), recording)

    asyncio.run(call())
    stored = Call.objects.get()
    assert stored.recording.name.endswith(f"{SID}.wav")
    assert wav_frames(Path(stored.recording.path)) == 160
    assert not (tmp_path / "in-progress" / f"{SID}.wav").exists()
    assert stored.turns.count() == 1 and stored.ended_reason == EndedReason.AGENT_ENDED
    assert writer.unstored_description() == "nothing"
