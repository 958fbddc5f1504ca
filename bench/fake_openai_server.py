"""A lean fake of the OpenAI Realtime GA WebSocket for benchmarks, run in its own process.

``calls.fakes.openai_realtime.FakeRealtimeServer`` is the protocol reference for tests; it
keeps every event, deep-copies state and runs an energy VAD per frame, which is right for
assertions and too heavy to sit next to 50 calls on two cores. This one speaks the same GA
event shapes the bridge uses and does little else:

* ``session.update`` -> ``session.updated`` echoing the requested session (so the bridge's
  format checks see ``audio/pcmu``), after ``session.created`` on connect;
* ``input_audio_buffer.append``: the tagged frame (``bench.wire``) is timestamped on arrival;
  its speech flag stands in for server VAD: ``speech_started`` on the first speech frame
  (cancelling an active response, as ``interrupt_response`` does), ``speech_stopped`` +
  ``committed`` + a response after ``silence_duration_ms`` of silent frames, and a late
  input transcription;
* ``response.create`` -> a response whose audio is streamed as tagged ``output_audio.delta``
  events faster than real time, each timestamped just before it is written;
* ``response.cancel``, ``conversation.item.truncate`` and ``conversation.item.create`` are
  answered the way the service answers them.

A WebSocket on ``/bench/control`` answers ``dump`` with every timestamp gathered since the
last dump (JSON) and forgets them. All times are ``time.monotonic()`` (CLOCK_MONOTONIC,
system-wide on Linux), comparable with the driver's.

Run: ``python -m bench.fake_openai_server --port 0``; it prints ``PORT <n>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import random
import signal
import string
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

if __package__ in (None, ""):  # run as a file: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from bench.wire import agent_audio, caller_body_intact, caller_frames_b64, parse_caller_b64

log = logging.getLogger("bench.fake_openai")

_ID_CHARS = string.ascii_letters + string.digits
CONTROL_PATH = "/bench/control"
REALTIME_PATH = "/v1/realtime"


def new_id(prefix: str) -> str:
    return f"{prefix}_" + "".join(random.choices(_ID_CHARS, k=21))


def dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


@dataclass
class Options:
    greeting_ms: int = 2000
    answer_ms: tuple[int, int] = (1000, 3000)
    delta_ms: int = 200  # audio per output_audio.delta
    speedup: float = 4.0  # audio streamed this many times faster than real time
    think_ms: int = 250  # from commit to response.created
    transcription_ms: int = 150
    handshake_ms: int = 0  # WebSocket upgrade answered this late (TCP + TLS + upgrade to OpenAI)
    session_created_ms: int = 0  # then session.created this late (the service setting up)


@dataclass
class Answer:
    index: int
    id: str
    item_id: str
    t_created: float
    cancelled: str = ""  # reason, once cancelled
    t_interrupted: float | None = None  # speech_started while this response was active
    t_done: float | None = None
    blocks: int = 0


@dataclass
class Session:
    """One connection from the bridge, with what the benchmark measures about it."""

    index: int
    ws: ServerConnection
    options: Options
    t_open: float
    call: int | None = None  # benchmark call id, from the first tagged frame
    t_session_updated: float | None = None
    t_closed: float | None = None
    in_seq: list[int] = field(default_factory=list)
    in_t: list[float] = field(default_factory=list)
    in_untagged: int = 0
    in_corrupt: int = 0
    deltas: list[tuple[float, int, int, int]] = field(default_factory=list)  # t, first seq, n, response
    responses: list[Answer] = field(default_factory=list)
    speech_started: list[float] = field(default_factory=list)
    truncates: list[tuple[int, int]] = field(default_factory=list)  # response index, audio_end_ms
    client_events: dict[str, int] = field(default_factory=dict)
    errors_sent: dict[str, int] = field(default_factory=dict)
    # state
    silence_frames_needed: int = 25
    audio_ms: int = 0
    speaking_item: str | None = None
    speech_start_ms: int = 0
    silent_frames: int = 0
    active: Answer | None = None
    next_block: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    rng: random.Random = field(default_factory=random.Random)

    def summary(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "call": self.call,
            "t_open": self.t_open,
            "t_session_updated": self.t_session_updated,
            "t_closed": self.t_closed,
            "in_seq": self.in_seq,
            "in_t": self.in_t,
            "in_untagged": self.in_untagged,
            "in_corrupt": self.in_corrupt,
            "deltas": self.deltas,
            "responses": [
                {
                    "index": r.index,
                    "t_created": r.t_created,
                    "t_done": r.t_done,
                    "cancelled": r.cancelled,
                    "t_interrupted": r.t_interrupted,
                    "blocks": r.blocks,
                }
                for r in self.responses
            ],
            "speech_started": self.speech_started,
            "truncates": self.truncates,
            "client_events": self.client_events,
            "errors_sent": self.errors_sent,
        }


class LeanRealtimeFake:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.sessions: list[Session] = []
        self.session_count = 0
        self.lags: list[float] = []

    # -- connections -------------------------------------------------------------------

    async def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path not in (REALTIME_PATH, CONTROL_PATH):
            return connection.respond(404, "Not Found\n")
        if path == REALTIME_PATH and self.options.handshake_ms > 0:
            await asyncio.sleep(self.options.handshake_ms / 1000)  # this upgrade only
        return None

    async def handle(self, ws: ServerConnection) -> None:
        path = urlsplit(ws.request.path if ws.request else "").path
        if path == CONTROL_PATH:
            await self.control(ws)
            return
        auth = ws.request.headers.get("Authorization", "") if ws.request else ""
        if not auth.startswith("Bearer ") or "OpenAI-Beta" in (ws.request.headers if ws.request else {}):
            await ws.send(dumps(error_event("invalid_api_key", "Incorrect API key provided.")))
            await ws.close(3000, "invalid_request_error.invalid_api_key")
            return
        session = Session(self.session_count, ws, self.options, time.monotonic())
        session.rng.seed(session.index)
        self.session_count += 1
        self.sessions.append(session)
        try:
            if self.options.session_created_ms > 0:
                await asyncio.sleep(self.options.session_created_ms / 1000)
            await self.send(session, {"type": "session.created", "session": base_session()})
            async for raw in ws:
                await self.dispatch(session, raw)
        except ConnectionClosed:
            pass
        finally:
            session.t_closed = time.monotonic()
            for task in list(session.tasks):
                task.cancel()
            await asyncio.gather(*session.tasks, return_exceptions=True)

    async def control(self, ws: ServerConnection) -> None:
        async for raw in ws:
            if raw == "dump":
                sessions, self.sessions = self.sessions, [s for s in self.sessions if s.t_closed is None]
                lags, self.lags = sorted(self.lags), []
                await ws.send(
                    json.dumps(
                        {
                            "sessions": [s.summary() for s in sessions],
                            "loop_lag_ms": lag_summary(lags),
                        }
                    )
                )
            else:
                await ws.send(json.dumps({"error": f"unknown command {raw!r}"}))

    # -- events ------------------------------------------------------------------------

    async def send(self, session: Session, event: dict[str, Any]) -> None:
        event.setdefault("event_id", new_id("event"))
        await session.ws.send(dumps(event))

    async def fail(self, session: Session, code: str, message: str, param: str | None = None) -> None:
        session.errors_sent[code] = session.errors_sent.get(code, 0) + 1
        await self.send(session, error_event(code, message, param))

    async def dispatch(self, session: Session, raw: str | bytes) -> None:
        now = time.monotonic()
        try:
            event = json.loads(raw)
        except ValueError:
            await self.fail(session, "invalid_json", "Invalid JSON: expected an event object.")
            return
        if not isinstance(event, dict):
            await self.fail(session, "invalid_json", "Invalid JSON: expected an event object.")
            return
        kind = str(event.get("type"))
        if kind == "input_audio_buffer.append":
            await self.on_append(session, event, now)
            return
        session.client_events[kind] = session.client_events.get(kind, 0) + 1
        if kind == "session.update":
            await self.on_session_update(session, event)
        elif kind == "response.create":
            if session.active is not None:
                await self.fail(
                    session,
                    "conversation_already_has_active_response",
                    f"Conversation already has an active response in progress: {session.active.id}.",
                )
            else:
                self.start_response(session, self.options.greeting_ms)
        elif kind == "response.cancel":
            if session.active is None:
                await self.fail(
                    session, "response_cancel_not_active", "Cancellation failed: no active response found"
                )
            else:
                session.active.cancelled = "client_cancelled"
        elif kind == "conversation.item.truncate":
            item_id, end_ms = event.get("item_id"), event.get("audio_end_ms")
            answer = next((r for r in session.responses if r.item_id == item_id), None)
            if answer is not None and isinstance(end_ms, int):
                session.truncates.append((answer.index, end_ms))
            await self.send(
                session,
                {
                    "type": "conversation.item.truncated",
                    "item_id": event.get("item_id"),
                    "content_index": 0,
                    "audio_end_ms": event.get("audio_end_ms"),
                },
            )
        elif kind == "conversation.item.create":
            item = dict(event.get("item") or {})
            item.setdefault("id", new_id("item"))
            item.update(object="realtime.item", status="completed")
            await self.send(
                session, {"type": "conversation.item.added", "previous_item_id": None, "item": item}
            )
            await self.send(
                session, {"type": "conversation.item.done", "previous_item_id": None, "item": item}
            )
        else:
            await self.fail(session, "invalid_value", f"Invalid value: '{kind}'.", "type")

    async def on_session_update(self, session: Session, event: dict[str, Any]) -> None:
        raw = event.get("session")
        requested: dict[str, Any] = raw if isinstance(raw, dict) else {}
        config = {**base_session(), **requested, "object": "realtime.session", "id": new_id("sess")}
        detection = (((requested.get("audio") or {}).get("input") or {}).get("turn_detection")) or {}
        silence_ms = int(detection.get("silence_duration_ms") or 500)
        session.silence_frames_needed = max(1, silence_ms // 20)
        session.t_session_updated = time.monotonic()
        await self.send(session, {"type": "session.updated", "session": config})

    async def on_append(self, session: Session, event: dict[str, Any], now: float) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            session.in_untagged += 1
            return
        for frame in caller_frames_b64(audio):
            await self.on_caller_frame(session, frame, now)

    async def on_caller_frame(self, session: Session, audio: str, now: float) -> None:
        tag = parse_caller_b64(audio)
        if tag is None:
            session.in_untagged += 1
            return
        call, seq, speech = tag
        if session.call is None:
            session.call = call
        session.in_seq.append(seq)
        session.in_t.append(now)
        if not caller_body_intact(audio, speech):
            session.in_corrupt += 1
        start_ms = session.audio_ms
        session.audio_ms += 20
        # Stand-in for server VAD: the frame's speech flag.
        if speech:
            session.silent_frames = 0
            if session.speaking_item is None:
                session.speaking_item = new_id("item")
                session.speech_start_ms = max(0, start_ms - 300)
                session.speech_started.append(now)
                active = session.active
                if active is not None and not active.cancelled:
                    # Audio of this response sent from now on is dropped by the bridge on purpose.
                    active.t_interrupted = time.monotonic()
                await self.send(
                    session,
                    {
                        "type": "input_audio_buffer.speech_started",
                        "audio_start_ms": session.speech_start_ms,
                        "item_id": session.speaking_item,
                    },
                )
                if active is not None and not active.cancelled:
                    active.cancelled = "turn_detected"  # interrupt_response: the stream stops
            return
        if session.speaking_item is None:
            return
        session.silent_frames += 1
        if session.silent_frames >= session.silence_frames_needed:
            await self.commit(session)

    async def commit(self, session: Session) -> None:
        item_id = session.speaking_item or new_id("item")
        session.speaking_item, session.silent_frames = None, 0
        end_ms = session.audio_ms
        item = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        await self.send(
            session,
            {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": end_ms, "item_id": item_id},
        )
        await self.send(
            session, {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": None}
        )
        await self.send(session, {"type": "conversation.item.added", "previous_item_id": None, "item": item})
        await self.send(session, {"type": "conversation.item.done", "previous_item_id": None, "item": item})
        seconds = (end_ms - session.speech_start_ms) / 1000
        self.spawn(session, self.answer(session, item_id, seconds))

    def spawn(self, session: Session, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        session.tasks.add(task)
        task.add_done_callback(session.tasks.discard)

    async def answer(self, session: Session, item_id: str, seconds: float) -> None:
        options = self.options
        await asyncio.sleep(options.think_ms / 1000)
        if session.active is None and session.speaking_item is None:
            low, high = options.answer_ms
            self.start_response(session, session.rng.randint(low // 20, high // 20) * 20)
        await asyncio.sleep(max(0.0, (options.transcription_ms - options.think_ms) / 1000))
        await self.send(
            session,
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item_id,
                "content_index": 0,
                "transcript": "Benchmark caller turn.",
                "usage": {"type": "duration", "seconds": round(seconds, 3)},
            },
        )

    # -- responses ---------------------------------------------------------------------

    def start_response(self, session: Session, audio_ms: int) -> None:
        response = Answer(len(session.responses), new_id("resp"), new_id("item"), time.monotonic())
        session.responses.append(response)
        session.active = response
        self.spawn(session, self.stream(session, response, audio_ms))

    async def stream(self, session: Session, response: Answer, audio_ms: int) -> None:
        options = self.options
        ids = {"response_id": response.id, "item_id": response.item_id, "output_index": 0, "content_index": 0}
        item: dict[str, Any] = {
            "id": response.item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        body: dict[str, Any] = {
            "object": "realtime.response",
            "id": response.id,
            "status": "in_progress",
            "status_details": None,
            "output": [],
            "output_modalities": ["audio"],
            "usage": None,
            "metadata": None,
        }
        try:
            await self.send(session, {"type": "response.created", "response": dict(body)})
            await self.send(
                session,
                {
                    "type": "response.output_item.added",
                    "response_id": response.id,
                    "output_index": 0,
                    "item": item,
                },
            )
            await self.send(
                session, {"type": "conversation.item.added", "previous_item_id": None, "item": item}
            )
            await self.send(
                session,
                {"type": "response.content_part.added", **ids, "part": {"type": "audio", "transcript": ""}},
            )
            per_delta = max(1, options.delta_ms // 20)
            total = max(1, audio_ms // 20)
            pace = options.delta_ms / 1000 / options.speedup
            t0 = time.monotonic()
            sent = 0
            k = 0
            while sent < total and not response.cancelled:
                blocks = min(per_delta, total - sent)
                first = session.next_block
                session.next_block += blocks
                delta = base64.b64encode(agent_audio(session.index, first, blocks, response.index)).decode()
                message = (
                    f'{{"type":"response.output_audio.delta","event_id":"{new_id("event")}",'
                    f'"response_id":"{response.id}","item_id":"{response.item_id}",'
                    f'"output_index":0,"content_index":0,"delta":"{delta}"}}'
                )
                t = time.monotonic()
                await session.ws.send(message)
                session.deltas.append((t, first, blocks, response.index))
                response.blocks += blocks
                sent += blocks
                k += 1
                await self.send(
                    session, {"type": "response.output_audio_transcript.delta", **ids, "delta": "la "}
                )
                delay = t0 + k * pace - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            transcript = "la " * k
            status = "cancelled" if response.cancelled else "completed"
            item = {
                **item,
                "status": "incomplete" if response.cancelled else "completed",
                "content": [{"type": "output_audio", "transcript": transcript}],
            }
            await self.send(session, {"type": "response.output_audio.done", **ids})
            await self.send(
                session, {"type": "response.output_audio_transcript.done", **ids, "transcript": transcript}
            )
            await self.send(
                session,
                {
                    "type": "response.content_part.done",
                    **ids,
                    "part": {"type": "audio", "transcript": transcript},
                },
            )
            await self.send(
                session,
                {
                    "type": "response.output_item.done",
                    "response_id": response.id,
                    "output_index": 0,
                    "item": item,
                },
            )
            session.active = None
            response.t_done = time.monotonic()
            body.update(
                status=status,
                status_details={"type": "cancelled", "reason": response.cancelled}
                if response.cancelled
                else None,
                output=[item],
                usage={
                    "total_tokens": 100 + sent,
                    "input_tokens": 100,
                    "output_tokens": sent,
                    "input_token_details": {"text_tokens": 60, "audio_tokens": 40, "cached_tokens": 0},
                    "output_token_details": {"text_tokens": k, "audio_tokens": sent - k},
                },
            )
            await self.send(session, {"type": "response.done", "response": body})
        except ConnectionClosed:
            pass
        finally:
            if session.active is response:
                session.active = None


def base_session() -> dict[str, Any]:
    pcm = {"type": "audio/pcm", "rate": 24000}
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": new_id("sess"),
        "model": "gpt-realtime",
        "output_modalities": ["audio"],
        "instructions": "",
        "tools": [],
        "tool_choice": "auto",
        "audio": {
            "input": {
                "format": dict(pcm),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": None,
            },
            "output": {"format": dict(pcm), "voice": "marin", "speed": 1.0},
        },
    }


def error_event(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {
        "type": "error",
        "event_id": new_id("event"),
        "error": {"type": "invalid_request_error", "code": code, "message": message, "param": param},
    }


def lag_summary(lags: list[float]) -> dict[str, float | int]:
    """p50/p99/max of sorted lags (seconds), in ms."""
    if not lags:
        return {"n": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}

    def pick(q: float) -> float:
        return round(lags[min(len(lags) - 1, int(q * len(lags)))] * 1000, 3)

    return {"n": len(lags), "p50": pick(0.5), "p99": pick(0.99), "max": round(lags[-1] * 1000, 3)}


async def watch_lag(fake: LeanRealtimeFake, interval: float = 0.01) -> None:
    """Event-loop lag: how late a 10 ms sleep wakes up."""
    while True:
        due = time.monotonic() + interval
        await asyncio.sleep(interval)
        fake.lags.append(max(0.0, time.monotonic() - due))


async def main_async(args: argparse.Namespace) -> None:
    options = Options(
        greeting_ms=args.greeting_ms,
        answer_ms=(args.answer_min_ms, args.answer_max_ms),
        delta_ms=args.delta_ms,
        speedup=args.speedup,
        think_ms=args.think_ms,
        handshake_ms=args.handshake_ms,
        session_created_ms=args.session_created_ms,
    )
    fake = LeanRealtimeFake(options)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with serve(
        fake.handle,
        args.host,
        args.port,
        process_request=fake.process_request,
        compression=None,
        max_size=16 * 2**20,
        ping_interval=None,
    ) as server:
        port = server.sockets[0].getsockname()[1] if server.sockets else args.port
        print(f"PORT {port}", flush=True)
        lag = asyncio.create_task(watch_lag(fake))
        await stop.wait()
        lag.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--greeting-ms", type=int, default=2000)
    parser.add_argument("--answer-min-ms", type=int, default=1000)
    parser.add_argument("--answer-max-ms", type=int, default=3000)
    parser.add_argument("--delta-ms", type=int, default=200, help="audio per output_audio.delta")
    parser.add_argument("--speedup", type=float, default=4.0, help="streaming speed versus real time")
    parser.add_argument("--think-ms", type=int, default=250)
    parser.add_argument(
        "--handshake-ms", type=int, default=0, help="delay before answering each WebSocket upgrade"
    )
    parser.add_argument(
        "--session-created-ms", type=int, default=0, help="delay from the upgrade to session.created"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
