"""A live phone line around ``SimulatedCaller``: the caller's microphone and ear.

Why: Twilio sends a 20 ms frame every 20 ms for the whole call, silence included, and a person
on the phone speaks after the agent has finished. ``Line`` keeps the line live between
utterances; ``Listener`` follows what the caller hears (agent turns, marks, clears), reports it
as it happens through a ``write`` callable, and tells when the agent's turn is over: nothing
left to play and no new audio for ``QUIET`` seconds, which is all a caller can know.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass

from calls.audio import base64_size
from calls.fakes.twilio_caller import SimulatedCaller, StreamClosed, mulaw_silence

Write = Callable[[str], None]

QUIET = 1.0  # seconds with nothing left to play and no new audio: the agent's turn is over
LINE_CHUNK_MS = 100  # silence goes down the line in chunks of this many ms (5 frames)


@dataclass
class AgentTurn:
    """One stretch of agent audio as the caller experienced it."""

    started: float
    heard_from: int  # len(caller.heard) when it started
    received_from: int
    ended: float | None = None
    heard: int = 0
    received: int = 0
    marks_played: int = 0
    marks_flushed: int = 0
    cleared: bool = False


def stamp(caller: SimulatedCaller, at: float | None = None) -> str:
    t0 = caller.stream_started_at or time.monotonic()
    return f"[{(at if at is not None else time.monotonic()) - t0:6.2f} s]"


class Signal:
    """Lets the conversation wait for the listener's conclusions without polling."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float | None = None) -> bool:
        try:
            async with asyncio.timeout(timeout):
                while not predicate():
                    await self._event.wait()
        except TimeoutError:
            return False
        return True


class Listener:
    """Follows what the caller hears and says it as it happens: agent turns, marks, clears."""

    def __init__(self, caller: SimulatedCaller, write: Write, verbosity: int) -> None:
        self.caller, self.write, self.verbosity = caller, write, verbosity
        self.turns: list[AgentTurn] = []
        self.current: AgentTurn | None = None
        self.changed = Signal()
        self._seen = 0  # caller.received consumed
        self._echoes = 0  # caller.mark_echoes consumed
        self._drained_at: float | None = None
        self._received = 0  # bytes of agent audio in the media messages consumed

    def _news(self) -> bool:
        c = self.caller
        return (
            len(c.received) > self._seen
            or len(c.mark_echoes) > self._echoes
            or c.closed_by_server is not None
            or (self.current is not None and c.buffered_bytes == 0 and self._drained_at is None)
        )

    async def run(self) -> None:
        c = self.caller
        while True:
            timeout = None if self._drained_at is None else self._drained_at + QUIET - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await c.wait_for(self._news, timeout=max(0.0, timeout) if timeout is not None else None)
            now = time.monotonic()
            self._consume(now)
            if self.current is not None:
                if c.buffered_bytes:
                    self._drained_at = None
                elif self._drained_at is None:
                    self._drained_at = now
                elif now - self._drained_at >= QUIET - 1e-3:
                    self._finish(self._drained_at)
            if c.closed_by_server is not None:
                if self.current is not None:
                    self._finish(now)
                return

    def _consume(self, now: float) -> None:
        c = self.caller
        for at, message in c.received[self._seen :]:
            event = message.get("event") if isinstance(message, dict) else None
            if event == "media" and self.current is None:
                self.current = AgentTurn(started=at, heard_from=len(c.heard), received_from=self._received)
                self.write(f"{stamp(c, at)} agent: speaking")
                self.changed.notify()
            if event == "media":
                size = base64_size(str(message.get("media", {}).get("payload", "")))
                self._received += size
                if self.verbosity >= 3:
                    self.write(f"{stamp(c, at)} agent: media ({size} B)")
            elif event == "clear":
                if self.current is not None:
                    self.current.cleared = True
                self.write(
                    f"{stamp(c, at)} server: clear (the caller barged in; unplayed agent audio dropped)"
                )
        self._seen = len(c.received)
        for echo in c.mark_echoes[self._echoes :]:
            if self.current is not None:
                if echo.played:
                    self.current.marks_played += 1
                else:
                    self.current.marks_flushed += 1
            if self.verbosity >= 2:
                how = "played" if echo.played else "flushed by clear"
                self.write(f"{stamp(c, echo.time)} caller: mark {echo.name} echoed ({how})")
        self._echoes = len(c.mark_echoes)

    def _finish(self, at: float) -> None:
        turn, c = self.current, self.caller
        assert turn is not None
        turn.ended = at
        turn.heard = len(c.heard) - turn.heard_from
        turn.received = self._received - turn.received_from
        self.turns.append(turn)
        self.current, self._drained_at = None, None
        cut = ", cut off by clear" if turn.cleared else ""
        self.write(
            f"{stamp(c, at)} agent: done: heard {turn.heard / 8000:.2f} s of {turn.received / 8000:.2f} s "
            f"received; marks echoed {turn.marks_played} played, {turn.marks_flushed} flushed{cut}"
        )
        self.changed.notify()

    def finished_since(self, t: float) -> bool:
        return any(turn.started >= t for turn in self.turns)


class Line:
    """The caller's microphone on a live phone line: speech when there is some, silence otherwise,
    one 20 ms frame every 20 ms like Twilio."""

    def __init__(self, caller: SimulatedCaller) -> None:
        self.caller = caller
        self._speech: asyncio.Queue[tuple[bytes, asyncio.Future[None]]] = asyncio.Queue()

    async def run(self) -> None:
        silence = mulaw_silence(LINE_CHUNK_MS)
        due = time.monotonic()
        pending: asyncio.Future[None] | None = None
        try:
            while True:
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing the line, as a phone does
                audio, pending = self._speech.get_nowait() if not self._speech.empty() else (silence, None)
                await self.caller.send_audio(audio)
                due += len(audio) / 8000
                if pending is not None:
                    pending.set_result(None)
        except StreamClosed as exc:
            if pending is not None and not pending.done():
                pending.set_exception(exc)

    async def say(self, audio: bytes) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._speech.put_nowait((audio, done))
        await done
