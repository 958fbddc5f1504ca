"""What the media consumer keeps of a call while it runs: turns, tool calls and errors
written by a writer task (retried while the database is briefly away, never in the audio
path), and the recording, mixed and written in a worker thread once a second. A mixin of
``calls.consumers.MediaStreamConsumer``; it uses the consumer's state declared below and
is tested through it (tests/test_e2e_*.py, tests/test_recording.py).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError

from calls import services
from calls.bridge_actions import RecordError, SaveToolCall, SaveTurn
from calls.recording import Mixer, Recorder, WavFile

if TYPE_CHECKING:
    from calls.bridge import CallBridge

logger = logging.getLogger(__name__)

DB_RETRY_SECONDS = (0.2, 0.5, 1, 2, 4, 8)


def in_thread(function: Any) -> Any:
    """Database and file work runs in a worker thread, never on the event loop."""
    return sync_to_async(function, thread_sensitive=False)


class CallStore:
    # The consumer state this part reads and writes (set up in MediaStreamConsumer.connect).
    call_sid: str
    bridge: CallBridge | None
    to_database: asyncio.Queue[SaveTurn | SaveToolCall | RecordError | None]
    recorder: Recorder | None
    wav: WavFile | None
    recording_flush: asyncio.Future[None] | None

    async def _write_database(self) -> None:
        """Store turns as they complete; retry while the database is briefly away."""
        while (action := await self.to_database.get()) is not None:
            for delay in (*DB_RETRY_SECONDS, None):
                try:
                    if isinstance(action, SaveTurn):
                        await in_thread(services.turn_record)(call_sid=self.call_sid, turn=action.turn)
                    elif isinstance(action, SaveToolCall):
                        await in_thread(services.tool_call_record)(
                            call_sid=self.call_sid, record=action.record
                        )
                    else:
                        await in_thread(services.call_record_error)(
                            call_sid=self.call_sid, message=action.message
                        )
                    break
                except (IntegrityError, DataError) as exc:
                    # Retrying cannot fix the data itself; never log the transcript text.
                    logger.error(
                        "call %s: could not store a %s: %s", self.call_sid, type(action).__name__, exc
                    )
                    break
                except DatabaseError as exc:
                    if delay is None:
                        logger.error(
                            "call %s: gave up storing a %s: %s", self.call_sid, type(action).__name__, exc
                        )
                        break
                    logger.warning("call %s: database unavailable (%s); retrying", self.call_sid, exc)
                    await asyncio.sleep(delay)
                except Exception:
                    logger.exception("call %s: could not store a %s", self.call_sid, type(action).__name__)
                    break

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
        if self.recording_flush is not None:  # batches are written one at a time, in order
            await asyncio.gather(self.recording_flush, return_exceptions=True)
        try:
            if recorder is not None:
                await in_thread(recorder.flush)(recorder.batch(), None)
            await in_thread(wav.close)()
            await in_thread(services.call_save_recording)(call_sid=self.call_sid, path=wav.path)
            await in_thread(wav.path.unlink)()
        except (OSError, DatabaseError) as exc:
            # The partial file stays on disk (its header keeps it playable) for recovery.
            logger.error(
                "call %s: could not store the recording (%s); kept at %s", self.call_sid, exc, wav.path
            )
