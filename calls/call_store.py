"""What the media consumer keeps of a call while it runs: turns, tool calls and errors
written in order by a writer task (never in the audio path; while the database is away they
wait and are retried until it answers, never dropped), the call's end, and the recording,
mixed and written in a worker thread once a second. A mixin of
``calls.consumers.MediaStreamConsumer``; it uses the consumer's state declared below and
is tested through it (tests/test_e2e_*.py, tests/test_recording.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError

from calls import services
from calls.bridge.actions import CallSummary, EndCall, RecordError, SaveToolCall, SaveTurn
from calls.recording import Mixer, Recorder, WavFile
from calls.threads import in_db_thread, in_thread

if TYPE_CHECKING:
    from calls.bridge import CallBridge

__all__ = ["CallStore", "StoreOutage", "in_db_thread", "in_thread", "retry_delays"]

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


class CallStore:
    # The consumer state this part reads and writes (set up in MediaStreamConsumer.connect).
    call_sid: str
    bridge: CallBridge | None
    to_database: asyncio.Queue[StoreAction | None]
    writer: asyncio.Task[None] | None
    outage: StoreOutage
    unstored: Counter[str]  # queued or being written, by kind; "call end" until finalised
    recorder: Recorder | None
    wav: WavFile | None
    recording_flush: asyncio.Future[None] | None

    def _store_later(self, action: StoreAction) -> None:
        self.unstored[_KINDS[type(action)]] += 1
        self.to_database.put_nowait(action)

    def _unstored_description(self) -> str:
        counts = self.unstored.items()
        parts = [f"{count} {kind}{'s' if count > 1 else ''}" for kind, count in counts if count]
        return ", ".join(parts) or "nothing"

    async def _stored(self, what: str, service: Callable[..., Any], **kwargs: Any) -> bool:
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

    async def _write_database(self) -> None:
        """Store turns as they complete, in order; while the database is away they wait in the
        queue (never dropped) and the writer retries until it answers."""
        while True:
            if self.to_database.empty():
                self.outage.caught_up()
            action = await self.to_database.get()
            if action is None:
                return
            kind = _KINDS[type(action)]
            try:
                if isinstance(action, SaveTurn):
                    await self._stored(kind, services.turn_record, call_sid=self.call_sid, turn=action.turn)
                elif isinstance(action, SaveToolCall):
                    await self._stored(
                        kind, services.tool_call_record, call_sid=self.call_sid, record=action.record
                    )
                else:
                    await self._stored(
                        kind, services.call_record_error, call_sid=self.call_sid, message=action.message
                    )
            except Exception:
                logger.exception("call %s: could not store a %s", self.call_sid, kind)
            finally:
                self.unstored[kind] -= 1

    async def _store_the_end(self, end: EndCall) -> None:
        """Everything queued, then the recording, then the call's end: each waits for the
        database if it is away, so the call is never left "in progress" by an outage."""
        self.unstored["call end"] = 1
        self.to_database.put_nowait(None)
        if self.writer is not None:
            await asyncio.gather(self.writer, return_exceptions=True)
        await self._finish_recording()
        bridge = self.bridge
        summary = bridge.summary(end) if bridge else CallSummary(end.reason, end.error)
        try:
            await self._stored("call end", services.call_finalize, call_sid=self.call_sid, summary=summary)
        except Exception:
            logger.exception("call %s: could not finalise the call", self.call_sid)
        self.unstored["call end"] = 0
        self.outage.caught_up()

    async def _start_recording(self, now: float) -> None:
        assert self.bridge is not None
        path = settings.RECORDING_WORK_DIR / f"{self.call_sid}.wav"
        try:
            self.wav = await in_thread(WavFile)(path)
        except OSError as exc:  # a full disk costs the recording, never the call
            logger.error("call %s: cannot record (%s)", self.call_sid, exc)
            return
        self.recorder = Recorder(Mixer(started_at=now), self.wav)
        self.bridge.record_audio = True

    async def _record(self, recorder: Recorder, now: float) -> None:
        # Mixing, conversion and file I/O in a worker thread, off the audio loop. Shielded: a
        # batch taken must be written even if the ticker is cancelled as the call ends.
        self.recording_flush = asyncio.ensure_future(in_thread(recorder.flush)(recorder.batch(), now))
        try:
            await asyncio.shield(self.recording_flush)
        except OSError as exc:
            logger.error("call %s: recording stopped (%s)", self.call_sid, exc)
            self.recorder = None  # what was written so far is still stored at the end

    async def _finish_recording(self) -> None:
        """Write what is left, close the file and hand it to the storage backend."""
        wav, recorder = self.wav, self.recorder
        if wav is None:
            return
        self.wav = self.recorder = None
        self.unstored["recording"] = 1
        if self.recording_flush is not None:  # batches are written one at a time, in order
            await asyncio.gather(self.recording_flush, return_exceptions=True)
        try:
            if recorder is not None:
                await in_thread(recorder.flush)(recorder.batch(), None)
            await in_thread(wav.close)()
            saved = await self._stored(
                "recording", services.call_save_recording, call_sid=self.call_sid, path=wav.path
            )
            if saved:
                await in_thread(wav.path.unlink)()
        except OSError as exc:
            # The partial file stays on disk (its header keeps it playable) for recovery.
            logger.error(
                "call %s: could not store the recording (%s); kept at %s", self.call_sid, exc, wav.path
            )
        finally:
            self.unstored["recording"] = 0
