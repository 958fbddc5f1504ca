"""What the media consumer keeps of a call while it runs: ``TurnWriter`` writes turns, tool
calls and errors in order from a task of its own (never in the audio path; while the database
is away they wait and are retried until it answers, never dropped), then the call's end;
``CallRecording`` mixes and writes the recording in a worker thread once a second.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError

from calls import services
from calls.bridge.actions import CallSummary, RecordError, SaveToolCall, SaveTurn
from calls.recording import Mixer, Recorder, WavFile
from calls.threads import in_db_thread, in_thread

__all__ = ["CallRecording", "StoreOutage", "TurnWriter", "in_db_thread", "in_thread", "retry_delays"]

logger = logging.getLogger(__name__)

# Retries while the database is away: quick at first (a dropped connection is usually back at
# once), then every 2 s, so storing resumes within 2 s of the database answering again.
DB_RETRY_FIRST_SECONDS = 0.2
DB_RETRY_MAX_SECONDS = 2.0

StoreAction = SaveTurn | SaveToolCall | RecordError
_KINDS: dict[type, str] = {SaveTurn: "turn", SaveToolCall: "tool call", RecordError: "call error"}


def retry_delays(
    first: float = DB_RETRY_FIRST_SECONDS, most: float = DB_RETRY_MAX_SECONDS
) -> Iterator[float]:
    """Capped exponential backoff, for as long as the caller keeps asking."""
    delay = first
    while True:
        yield delay
        delay = min(delay * 2, most)


class StoreOutage:
    """Whether a call's storing is paused by the database: one warning when it stops, one line
    when it has caught up, whatever the number of retries in between."""

    def __init__(self, call_sid: str) -> None:
        self.call_sid = call_sid
        self.since: float | None = None  # the first failure of this outage
        self.resumed_at: float | None = None  # the first success after it
        self.written = 0

    @property
    def paused(self) -> bool:
        return self.since is not None and self.resumed_at is None

    def failed(self, exc: DatabaseError, now: float) -> None:
        if self.since is None:
            logger.warning(
                "call %s: database unavailable (%s); storing paused, kept in order until it answers",
                self.call_sid,
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
            )
            self.since, self.written = now, 0
        self.resumed_at = None  # flapping: still the same outage

    def stored(self, now: float) -> None:
        if self.since is None:
            return
        self.written += 1
        if self.resumed_at is None:
            self.resumed_at = now

    def caught_up(self) -> None:
        """Nothing is waiting to be stored: close the outage, if there was one."""
        if self.since is None or self.resumed_at is None:
            return
        logger.info(
            "call %s: storing resumed after %.1f s, %d items written",
            self.call_sid,
            self.resumed_at - self.since,
            self.written,
        )
        self.since = self.resumed_at = None


class TurnWriter:
    """Stores a call's turns, tool calls and errors in the order they are handed over, then its
    end; counts what is not stored yet, so a call that ends during an outage can say so."""

    def __init__(self, call_sid: str) -> None:
        self.call_sid = call_sid
        self.outage = StoreOutage(call_sid)
        # Queued or being written, by kind; "call end" until the call is finalised.
        self.unstored: Counter[str] = Counter()
        self._queue: asyncio.Queue[StoreAction | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._write())

    def store_later(self, action: StoreAction) -> None:
        self.unstored[_KINDS[type(action)]] += 1
        self._queue.put_nowait(action)

    def unstored_description(self) -> str:
        counts = self.unstored.items()
        parts = [f"{count} {kind}{'s' if count > 1 else ''}" for kind, count in counts if count]
        return ", ".join(parts) or "nothing"

    async def stored(self, what: str, service: Callable[..., Any], **kwargs: Any) -> bool:
        """Run a database service until it succeeds, however long the database is away; False
        if the database refused the data itself (retrying cannot fix that)."""
        delays = retry_delays()
        while True:
            try:
                await in_db_thread(service)(**kwargs)
            except (IntegrityError, DataError) as exc:
                # Never log the transcript text.
                logger.error("call %s: could not store a %s: %s", self.call_sid, what, exc)
                return False
            except DatabaseError as exc:
                self.outage.failed(exc, time.monotonic())
                await asyncio.sleep(next(delays))
                continue
            self.outage.stored(time.monotonic())
            return True

    async def _write(self) -> None:
        """Store turns as they complete, in order; while the database is away they wait in the
        queue (never dropped) and the writer retries until it answers."""
        while True:
            if self._queue.empty():
                self.outage.caught_up()
            action = await self._queue.get()
            if action is None:
                return
            kind = _KINDS[type(action)]
            try:
                if isinstance(action, SaveTurn):
                    await self.stored(kind, services.turn_record, call_sid=self.call_sid, turn=action.turn)
                elif isinstance(action, SaveToolCall):
                    await self.stored(
                        kind, services.tool_call_record, call_sid=self.call_sid, record=action.record
                    )
                else:
                    await self.stored(
                        kind, services.call_record_error, call_sid=self.call_sid, message=action.message
                    )
            except Exception:
                logger.exception("call %s: could not store a %s", self.call_sid, kind)
            finally:
                self.unstored[kind] -= 1

    async def drain(self) -> None:
        """Store everything handed over so far, then stop: nothing more can be handed over."""
        self._queue.put_nowait(None)
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    async def store_the_end(self, summary: CallSummary, recording: CallRecording | None = None) -> None:
        """Everything queued, then the recording, then the call's end: each waits for the
        database if it is away, so the call is never left "in progress" by an outage."""
        self.unstored["call end"] = 1
        await self.drain()
        if recording is not None and recording.wav is not None:
            self.unstored["recording"] = 1
            try:
                await recording.finish(self._save_recording)
            finally:
                self.unstored["recording"] = 0
        try:
            await self.stored("call end", services.call_finalize, call_sid=self.call_sid, summary=summary)
        except Exception:
            logger.exception("call %s: could not finalise the call", self.call_sid)
        self.unstored["call end"] = 0
        self.outage.caught_up()

    async def _save_recording(self, path: Path) -> bool:
        return await self.stored("recording", services.call_save_recording, call_sid=self.call_sid, path=path)


class CallRecording:
    """The call's recording on local disk while the call runs, then handed to storage. Noting
    audio is an append (``recorder``, None while not recording); mixing and writing happen in
    a worker thread once a second (``record``) and at the end (``finish``)."""

    def __init__(self, call_sid: str) -> None:
        self.call_sid = call_sid
        self.wav: WavFile | None = None
        # Checked for every frame on the audio path: an attribute, not a method call.
        self.recorder: Recorder | None = None
        self._flush: asyncio.Future[None] | None = None

    async def start(self, now: float) -> bool:
        """Open the file; False if it cannot be (the call goes on without a recording)."""
        path = settings.RECORDING_WORK_DIR / f"{self.call_sid}.wav"
        try:
            self.wav = await in_thread(WavFile)(path)
        except OSError as exc:  # a full disk costs the recording, never the call
            logger.error("call %s: cannot record (%s)", self.call_sid, exc)
            return False
        self.recorder = Recorder(Mixer(started_at=now), self.wav)
        return True

    async def record(self, now: float) -> None:
        """Write what is final up to ``now`` (the ticker calls this once a second)."""
        recorder = self.recorder
        if recorder is None:
            return
        # Mixing, conversion and file I/O in a worker thread, off the audio loop. Shielded: a
        # batch taken must be written even if the ticker is cancelled as the call ends.
        self._flush = asyncio.ensure_future(in_thread(recorder.flush)(recorder.batch(), now))
        try:
            await asyncio.shield(self._flush)
        except OSError as exc:
            logger.error("call %s: recording stopped (%s)", self.call_sid, exc)
            self.recorder = None  # what was written so far is still stored at the end

    async def finish(self, save: Callable[[Path], Awaitable[bool]]) -> None:
        """Write what is left, close the file and hand it to ``save`` (True once stored, and
        the local file is then deleted)."""
        wav, recorder = self.wav, self.recorder
        if wav is None:
            return
        self.wav = self.recorder = None
        if self._flush is not None:  # batches are written one at a time, in order
            await asyncio.gather(self._flush, return_exceptions=True)
        try:
            if recorder is not None:
                await in_thread(recorder.flush)(recorder.batch(), None)
            await in_thread(wav.close)()
            if await save(wav.path):
                await in_thread(wav.path.unlink)()
        except OSError as exc:
            # The partial file stays on disk (its header keeps it playable) for recovery.
            logger.error(
                "call %s: could not store the recording (%s); kept at %s", self.call_sid, exc, wav.path
            )
