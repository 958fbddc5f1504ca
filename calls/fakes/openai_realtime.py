"""A protocol-faithful fake of the OpenAI Realtime GA WebSocket service.

Why: end-to-end tests and offline development need a server that behaves like
``wss://api.openai.com/v1/realtime`` -- including the awkward parts a bridge must survive (late input
transcriptions, cancellation "done" events, truncate errors, mid-call drops) -- without network or
cost.  Behaviour follows /work/shared/protocols/openai-realtime.md; UNCONFIRMED details are marked.
Event shapes are not taken on trust from those notes: when the ``openai`` SDK is installed (always
in tests) every event in and out is checked against its GA types (``calls.fakes.realtime_schema``).
Every connection is an independent session; nothing here imports Django.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import json
import logging
import random
import re
import string
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from calls.fakes import mulaw, realtime_schema

log = logging.getLogger(__name__)

Event = dict[str, Any]

BETA_MESSAGE = "The Realtime Beta API is no longer supported. Please use /v1/realtime for the GA API."
DEFAULT_INSTRUCTIONS = (
    "Your knowledge cutoff is 2023-10. You are a helpful, witty, and friendly AI. Act like a human, "
    "but remember that you aren't a human and that you can't do human things in the real world."
)
_SESSION_KEYS = frozenset(
    {
        "type",
        "model",
        "output_modalities",
        "instructions",
        "audio",
        "tools",
        "tool_choice",
        "max_output_tokens",
        "truncation",
        "prompt",
        "include",
        "tracing",
        "parallel_tool_calls",
        "reasoning",
    }
)
_SIDE_KEYS = {
    "input": frozenset({"format", "transcription", "noise_reduction", "turn_detection"}),
    "output": frozenset({"format", "voice", "speed"}),
}
_TD_DEFAULTS: dict[str, Event] = {
    "server_vad": {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 200,
        "idle_timeout_ms": None,
        "create_response": True,
        "interrupt_response": True,
    },
    "semantic_vad": {
        "type": "semantic_vad",
        "eagerness": "auto",
        "create_response": True,
        "interrupt_response": True,
    },
}
_SEMANTIC_SILENCE_MS = 500  # semantic_vad has no silence setting; approximate "medium" eagerness
_ID_ALPHABET = string.ascii_letters + string.digits


# Our own generator: tests that reseed the global one (hypothesis does) must not make the
# fake hand out the same ids twice.
_ids = random.Random()


def new_id(prefix: str) -> str:
    """Return an id shaped like the service's (``event_C9G5RJeJ2gF77mV7f2B1j``)."""
    return f"{prefix}_" + "".join(_ids.choices(_ID_ALPHABET, k=21))


def _tokens(text: str) -> int:
    """Rough text-token estimate: 1.3 tokens per word."""
    return round(len(text.split()) * 1.3)


def _split(text: str, parts: int) -> list[str]:
    """Split ``text`` into ``parts`` contiguous pieces (some may be empty) that join back exactly."""
    parts = max(parts, 1)
    bounds = [len(text) * i // parts for i in range(parts + 1)]
    return [text[bounds[i] : bounds[i + 1]] for i in range(parts)]


def _words(text: str) -> list[str]:
    """Split ``text`` into word-sized text deltas that join back exactly.

    Why word-sized: the model streams text token by token, each carrying its leading space, so
    a client must cope with many small deltas. Empty text gives no deltas at all."""
    pieces: list[str] = re.findall(r"\s*\S+", text)
    tail = text[sum(map(len, pieces)) :]
    if tail and pieces:
        pieces[-1] += tail
    elif tail:
        pieces = [tail]
    return pieces


@dataclass
class Reply:
    """One scripted model response."""

    transcript: str = ""
    audio: bytes | None = None  # sent verbatim; None -> deterministic tone in the output format
    function_call: tuple[str, dict[str, Any]] | None = None
    delta_ms: int = 100
    pace: float = 0.0
    seed: int | None = None  # tone seed; None -> CRC32 of the transcript

    @property
    def speaks(self) -> bool:
        """A reply with only a function call produces no message item (as the model does)."""
        return self.audio is not None or bool(self.transcript) or self.function_call is None

    def render_audio(self, fmt: str = mulaw.ULAW) -> bytes:
        """The exact bytes the server streams for this reply, so tests can compare them."""
        if self.audio is not None:
            return bytes(self.audio)
        seed = self.seed if self.seed is not None else zlib.crc32(self.transcript.encode())
        return mulaw.tone(max(200, len(self.transcript) * 60), seed, fmt)


@dataclass
class Script:
    """What happens in each session; tests build one per scenario."""

    replies: list[Reply] = field(default_factory=list)
    caller_transcripts: list[str] = field(default_factory=list)
    transcription_delay: float = 0.05
    vad_threshold_rms: float = 500.0
    reject_session_update: dict[str, Any] | None = None
    close_after_session_update: int | None = None
    close_after_first_delta: int | None = None
    connect_delay: float = 0.0
    carry_over: bool = False  # sessions given this same Script share its replies and transcripts

    def __post_init__(self) -> None:
        # Synthesise reply audio now, in whatever thread builds the script, rather than
        # inside the server's event loop mid-call (see ``mulaw.tone``).
        for reply in self.replies:
            reply.render_audio()


class FakeProtocolError(AssertionError):
    """The fake sent a server event the SDK's GA types reject: a bug in the fake, not the client."""


class _Dropped(Exception):
    """Raised inside a response stream after a scripted mid-call close."""


class _Watch:
    """A change signal that waiters can block on without polling."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait_until(self, predicate: Callable[[], Any], seconds: float) -> Any:
        async with asyncio.timeout(seconds):
            while not (result := predicate()):
                await self._event.wait()
            return result


def _matcher(predicate_or_type: str | Callable[[Event], bool]) -> Callable[[Event], bool]:
    if isinstance(predicate_or_type, str):
        return lambda ev: ev.get("type") == predicate_or_type
    return predicate_or_type


@dataclass
class _Response:
    """Bookkeeping for one in-flight response."""

    id: str
    index: int
    created: asyncio.Event = field(default_factory=asyncio.Event)
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str | None = None


def _error(
    code: str | None,
    message: str,
    param: str | None = None,
    event_id: str | None = None,
    type_: str = "invalid_request_error",
) -> Event:
    return {
        "type": "error",
        "event_id": new_id("event"),
        "error": {"type": type_, "code": code, "message": message, "param": param, "event_id": event_id},
    }


def _client_event_id(ev: Event) -> str | None:
    """The client's ``event_id`` to echo in an error; one that is not a string (itself the
    error) is not echoed, as ``error.event_id`` is a string or null in the SDK's RealtimeError."""
    event_id = ev.get("event_id")
    return event_id if isinstance(event_id, str) else None


def _check_format(fmt: Any, path: str) -> tuple[str, str, str] | None:
    if not isinstance(fmt, dict) or fmt.get("type") not in mulaw.BYTES_PER_MS:
        return "invalid_value", f"Invalid value for '{path}.type'.", f"{path}.type"
    if fmt["type"] == mulaw.PCM and fmt.get("rate", 24000) != 24000:
        return "invalid_value", "Only a 24kHz sample rate is supported.", f"{path}.rate"
    return None


def check_session_update(patch: Any, current: Event, audio_sent: bool) -> tuple[str, str, str] | None:
    """Validate a GA ``session.update`` payload; return (code, message, param) when refused."""
    if not isinstance(patch, dict):
        return "invalid_type", "Invalid type for 'session': expected an object.", "session"
    for key in patch:
        if key not in _SESSION_KEYS:
            return "unknown_parameter", f"Unknown parameter: 'session.{key}'.", f"session.{key}"
    if "type" not in patch:
        return ("missing_required_parameter", "Missing required parameter: 'session.type'.", "session.type")
    if patch["type"] != "realtime":
        return "invalid_value", f"Invalid value: '{patch['type']}'.", "session.type"
    if patch.get("output_modalities", ["audio"]) not in (["audio"], ["text"]):
        return (
            "invalid_value",
            "Invalid value for 'session.output_modalities'.",
            "session.output_modalities",
        )
    audio = patch.get("audio")
    if audio is None:
        return None
    if not isinstance(audio, dict):
        return "invalid_type", "Invalid type for 'session.audio'.", "session.audio"
    for side, part in audio.items():
        path = f"session.audio.{side}"
        if side not in _SIDE_KEYS:
            return "unknown_parameter", f"Unknown parameter: '{path}'.", path
        if part is None:
            continue
        if not isinstance(part, dict):
            return "invalid_type", f"Invalid type for '{path}'.", path
        for key in part:
            if key not in _SIDE_KEYS[side]:
                return "unknown_parameter", f"Unknown parameter: '{path}.{key}'.", f"{path}.{key}"
        if "format" in part and (problem := _check_format(part["format"], f"{path}.format")):
            return problem
    td = (audio.get("input") or {}).get("turn_detection")
    if isinstance(td, dict):
        path = "session.audio.input.turn_detection"
        kind = td.get("type")
        if kind is None:  # required in each member of the SDK's turn-detection union
            return "missing_required_parameter", f"Missing required parameter: '{path}.type'.", f"{path}.type"
        if kind not in _TD_DEFAULTS:
            return "invalid_value", f"Invalid value for '{path}.type'.", f"{path}.type"
        for key in td:
            if key not in _TD_DEFAULTS[kind]:
                return "unknown_parameter", f"Unknown parameter: '{path}.{key}'.", f"{path}.{key}"
    voice = (audio.get("output") or {}).get("voice")
    if voice is not None and voice != current["audio"]["output"]["voice"] and audio_sent:
        # UNCONFIRMED code; the documented rule is "cannot change once the model has responded".
        return (
            "cannot_update_voice",
            "Cannot update a conversation's voice if assistant audio is present.",
            "session.audio.output.voice",
        )
    return None


def apply_session_update(config: Event, patch: Event) -> Event:
    """Deep-merge the present fields; formats/transcription/noise_reduction replace wholesale."""
    new = copy.deepcopy(config)
    for key, value in patch.items():
        if key in ("type", "model"):  # model is fixed by the URL
            continue
        if key != "audio":
            new[key] = copy.deepcopy(value)
            continue
        for side, part in (value or {}).items():
            for sub, val in (part or {}).items():
                current = new["audio"][side].get(sub)
                if sub == "turn_detection" and isinstance(val, dict):
                    kind = val["type"]
                    base = current if current and current.get("type") == kind else _TD_DEFAULTS[kind]
                    val = {**base, **val}
                new["audio"][side][sub] = copy.deepcopy(val)
    return new


def default_session(model: str | None) -> Event:
    """The GA default session object, as observed in ``session.created``."""
    pcm = {"type": mulaw.PCM, "rate": 24000}
    return {
        "type": "realtime",
        "object": "realtime.session",
        "id": new_id("sess"),
        "model": model,
        "output_modalities": ["audio"],
        "instructions": DEFAULT_INSTRUCTIONS,
        "tools": [],
        "tool_choice": "auto",
        "max_output_tokens": "inf",
        "tracing": None,
        "truncation": "auto",
        "prompt": None,
        "expires_at": int(time.time()) + 3600,
        "audio": {
            "input": {
                "format": dict(pcm),
                "transcription": None,
                "noise_reduction": None,
                "turn_detection": dict(_TD_DEFAULTS["server_vad"]),
            },
            "output": {"format": dict(pcm), "voice": "marin", "speed": 1.0},
        },
        "include": None,
    }


class FakeSession:
    """One client connection: protocol state plus a full record of traffic for assertions."""

    def __init__(self, ws: ServerConnection, script: Script, index: int) -> None:
        self.ws = ws
        self.script = script
        self.index = index
        self.opened_at = time.monotonic()  # when the upgrade completed, to order it against the caller
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
        self.model: str | None = query.get("model", [None])[0]
        self.headers: dict[str, str] = {
            k.lower(): v for k, v in (ws.request.headers.raw_items() if ws.request else [])
        }
        self.received: list[Event] = []
        self.input_audio = bytearray()
        self.append_count = 0
        self.sent: list[Event] = []
        # Client events refused because the SDK's GA types reject them (also in ``received``
        # unless they are appends), and server events of ours that they reject (bugs).
        self.refused: list[tuple[Event, realtime_schema.Problem]] = []
        self.invalid_sent: list[str] = []
        self.output_audio: dict[str, bytearray] = {}
        self.truncates: list[Event] = []
        self.config: Event = default_session(self.model)
        self.conversation_id = new_id("conv")
        self.items: list[Event] = []  # the conversation, in order (no audio)
        self.rejected: str | None = None  # error code when the handshake was refused
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.active: _Response | None = None
        self._watch = _Watch()
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        # A script shared by sessions (``carry_over``) is a conversation that survives drops:
        # each session goes on where the last one stopped.
        self._replies = script.replies if script.carry_over else list(script.replies)
        self._transcripts = (
            script.caller_transcripts if script.carry_over else list(script.caller_transcripts)
        )
        self._updates = 0
        self._responses = 0
        self._audio_sent = False
        self._user_audio_ms: dict[str, int] = {}
        self._calls: dict[str, Event] = {}
        self._prev_input_tokens = 0
        # Input/VAD positions are byte counters so the ms arithmetic is exact.
        self._in_total = 0
        self._buffered = 0
        self._frame = bytearray()
        self._speech_item: str | None = None
        self._speech_start_ms = 0
        self._silence = 0
        self._idle_timer: asyncio.TimerHandle | None = None
        self._audio_ms: dict[str, int] = {}

    # -- assertions helpers -------------------------------------------------------------------
    def events_of(self, type_: str) -> list[Event]:
        """Received client events of one type (``input_audio_buffer.append`` is not kept)."""
        return [ev for ev in self.received if ev.get("type") == type_]

    def sent_of(self, type_: str) -> list[Event]:
        """Server events of one type that this session sent."""
        return [ev for ev in self.sent if ev.get("type") == type_]

    async def wait_for_event(
        self, predicate_or_type: str | Callable[[Event], bool], timeout: float = 5, *, start: int = 0
    ) -> Event:
        """Wait for a received client event (searching from ``received[start]``)."""
        match = _matcher(predicate_or_type)
        return await self._watch.wait_until(
            lambda: next((ev for ev in self.received[start:] if match(ev)), None), timeout
        )

    async def wait_for_sent(
        self, predicate_or_type: str | Callable[[Event], bool], timeout: float = 5, *, start: int = 0
    ) -> Event:
        """Wait for a server event this session sent (searching from ``sent[start]``)."""
        match = _matcher(predicate_or_type)
        return await self._watch.wait_until(
            lambda: next((ev for ev in self.sent[start:] if match(ev)), None), timeout
        )

    async def wait_for_input_audio(self, nbytes: int, timeout: float = 5) -> bytes:
        """Wait until at least ``nbytes`` of input audio have arrived; return all of it."""
        await self._watch.wait_until(lambda: len(self.input_audio) >= nbytes, timeout)
        return bytes(self.input_audio)

    async def wait_closed(self, timeout: float = 5) -> None:
        """Wait until the connection and all its tasks have finished."""
        async with asyncio.timeout(timeout):
            await self.closed.wait()

    # -- plumbing -----------------------------------------------------------------------------
    @property
    def _in_bpm(self) -> int:
        return mulaw.BYTES_PER_MS[self.config["audio"]["input"]["format"]["type"]]

    @property
    def _out_fmt(self) -> str:
        return str(self.config["audio"]["output"]["format"]["type"])

    async def _send(self, *events: Event) -> None:
        """Send events in order, never interleaved with another task's batch."""
        async with self._send_lock:
            for ev in events:
                ev.setdefault("event_id", new_id("event"))
                text = json.dumps(ev)
                if problem := realtime_schema.server_event_problem(ev.get("type"), text):
                    bug = f"fake sent an invalid {ev.get('type')}: {problem}"
                    self.invalid_sent.append(bug)
                    log.error("fake realtime session %d: %s", self.index, bug)
                    raise FakeProtocolError(bug)
                self.sent.append(ev)
                self._watch.notify()
                await self.ws.send(text)

    async def _fail(self, code: str | None, message: str, param: str | None, ev: Event) -> None:
        await self._send(_error(code, message, param, _client_event_id(ev)))

    async def _close(self, code: int, reason: str = "") -> None:
        self.close_code = code
        await self.ws.close(code, reason)

    async def drop(self, how: str = "1011") -> None:
        """End the session mid-call the ways the service does: ``"1011"`` (server error),
        ``"session_expired"`` (the 60-minute cap: an ``error``, then 1001), or ``"reset"``
        (the TCP connection lost with no close frame, as a network failure does)."""
        if how == "reset":
            self.close_code = 1006
            if self.ws.transport is not None:
                self.ws.transport.abort()
        elif how == "session_expired":
            await self._send(
                _error(
                    "session_expired",
                    "Your session hit the maximum duration of 60 minutes.",
                    type_="invalid_request_error",
                )
            )
            await self._close(1001, "Your session hit the maximum duration of 60 minutes.")
        else:
            await self._close(int(how))

    def _spawn(self, coro: Any) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _add_item(self, item: Event, after: str | None = None, root: bool = False) -> str | None:
        """Insert an item into the conversation; return its ``previous_item_id``."""
        pos = 0 if root else len(self.items)
        if after is not None:
            pos = next(i for i, it in enumerate(self.items) if it["id"] == after) + 1
        self.items.insert(pos, item)
        return self.items[pos - 1]["id"] if pos else None

    def _find(self, item_id: Any) -> Event | None:
        return next((it for it in self.items if it["id"] == item_id), None)

    # -- connection lifecycle -----------------------------------------------------------------
    async def run(self, api_key: str) -> None:
        """Serve this connection until it closes, then reap every task it started."""
        try:
            auth = self.headers.get("authorization", "")
            if not auth.startswith("Bearer "):
                self.rejected = "missing_auth"
                await self._send(_error(None, "Missing bearer or basic authentication in header"))
                await self._close(3000, "invalid_request_error.missing_auth")
                return
            if auth[7:] != api_key:
                key = auth[7:]
                shown = f"{key[:3]}...{key[-4:]}" if len(key) > 8 else "***"
                self.rejected = "invalid_api_key"
                await self._send(_error("invalid_api_key", f"Incorrect API key provided: {shown}."))
                await self._close(3000, "invalid_request_error.invalid_api_key")
                return
            if "openai-beta" in self.headers:
                self.rejected = "beta_api_shape_disabled"
                await self._send(_error("beta_api_shape_disabled", BETA_MESSAGE))
                await self._close(4000, "invalid_request_error.beta_api_shape_disabled")
                return
            if self.script.connect_delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.script.connect_delay):
                        await self.ws.wait_closed()
                    return  # the client gave up during the delay
            await self._send({"type": "session.created", "session": copy.deepcopy(self.config)})
            log.info("fake realtime session %d opened (model=%s)", self.index, self.model)
            async for raw in self.ws:
                await self._dispatch(raw)
        except ConnectionClosed:
            pass
        finally:
            await self._reap()
            if self.close_code is None:
                self.close_code = self.ws.close_code
            self.closed.set()
            self._watch.notify()
            log.info("fake realtime session %d closed (code=%s)", self.index, self.close_code)

    async def _reap(self) -> None:
        self._disarm_idle_timer()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _dispatch(self, raw: str | bytes) -> None:
        try:
            ev = json.loads(raw)
        except ValueError:
            ev = None
        if not isinstance(ev, dict):  # code UNCONFIRMED
            await self._send(_error("invalid_json", "Invalid JSON: expected an event object."))
            return
        kind = ev.get("type")
        if kind != "input_audio_buffer.append":
            self.received.append(ev)
            self._watch.notify()
        if problem := realtime_schema.client_event_problem(kind, raw):
            # The service refuses the whole event and acts on none of it.
            self.refused.append((ev, problem))
            log.warning(
                "fake realtime session %d refused %s: %s (%s)",
                self.index,
                kind,
                problem.code,
                problem.message,
            )
            await self._fail(problem.code, problem.message, problem.param, ev)
            return
        if kind == "input_audio_buffer.append":
            await self._on_append(ev)
            return
        handler = self._handlers.get(str(kind))
        if handler is None:
            supported = ", ".join(f"'{name}'" for name in sorted(self._handlers))
            await self._fail(
                "invalid_value",
                f"Invalid value: '{kind}'. Supported values are: 'input_audio_buffer.append', {supported}.",
                "type",
                ev,
            )
            return
        await handler(self, ev)

    # -- session ------------------------------------------------------------------------------
    async def _on_session_update(self, ev: Event) -> None:
        self._updates += 1
        first = self._updates == 1
        if first and self.script.reject_session_update is not None:
            err = {
                "type": "invalid_request_error",
                "code": None,
                "message": "",
                "param": None,
                **self.script.reject_session_update,
                "event_id": _client_event_id(ev),
            }
            await self._send({"type": "error", "error": err})
        elif problem := check_session_update(ev.get("session"), self.config, self._audio_sent):
            await self._fail(*problem, ev)
        else:
            self.config = apply_session_update(self.config, ev["session"])
            await self._send({"type": "session.updated", "session": copy.deepcopy(self.config)})
        if first and self.script.close_after_session_update is not None:
            await self._close(self.script.close_after_session_update)

    # -- input audio and VAD ------------------------------------------------------------------
    async def _on_append(self, ev: Event) -> None:
        try:
            data = base64.b64decode(ev.get("audio") or "", validate=True)
        except (binascii.Error, TypeError, ValueError):
            await self._fail("invalid_value", "Invalid 'audio'. Expected base64-encoded audio.", "audio", ev)
            return
        self.input_audio += data
        self.append_count += 1
        self._watch.notify()
        self._in_total += len(data)
        self._buffered += len(data)
        td = self.config["audio"]["input"]["turn_detection"]
        if not td:
            self._frame.clear()
            return
        self._frame += data
        size = self._in_bpm * 20
        while len(self._frame) >= size:
            start = self._in_total - len(self._frame)
            chunk = bytes(self._frame[:size])
            del self._frame[:size]
            await self._vad_frame(chunk, start, td)

    async def _vad_frame(self, chunk: bytes, start: int, td: Event) -> None:
        """Energy VAD on one 20 ms frame starting at session byte ``start``."""
        bpm = self._in_bpm
        fmt = self.config["audio"]["input"]["format"]["type"]
        loud = mulaw.rms(chunk, fmt) > self.script.vad_threshold_rms
        if self._speech_item is None:
            if not loud:
                return
            self._speech_item, self._silence = new_id("item"), 0
            self._disarm_idle_timer()
            self._speech_start_ms = max(0, start // bpm - int(td.get("prefix_padding_ms", 300)))
            await self._send(
                {
                    "type": "input_audio_buffer.speech_started",
                    "audio_start_ms": self._speech_start_ms,
                    "item_id": self._speech_item,
                }
            )
            if self.active is not None and td.get("interrupt_response", True):
                await self._cancel_active("turn_detected")
            return
        self._silence = 0 if loud else self._silence + len(chunk)
        limit = td.get("silence_duration_ms", _SEMANTIC_SILENCE_MS)
        if self._silence // bpm >= limit:
            end_ms = (start + len(chunk)) // bpm
            item_id = self._speech_item
            await self._send(
                {"type": "input_audio_buffer.speech_stopped", "audio_end_ms": end_ms, "item_id": item_id}
            )
            await self._commit(
                item_id, end_ms - self._speech_start_ms, auto_respond=bool(td.get("create_response", True))
            )

    async def _commit(self, item_id: str, audio_ms: int, auto_respond: bool, transcribe: bool = True) -> None:
        """Turn the buffer into a user item, maybe respond, and transcribe it late."""
        self._buffered, self._speech_item, self._silence = 0, None, 0
        item: Event = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "completed",
            "role": "user",
            "content": [{"type": "input_audio", "transcript": None}],
        }
        prev = self._add_item(item)
        self._user_audio_ms[item_id] = audio_ms
        await self._send(
            {"type": "input_audio_buffer.committed", "item_id": item_id, "previous_item_id": prev},
            {"type": "conversation.item.added", "previous_item_id": prev, "item": copy.deepcopy(item)},
            {"type": "conversation.item.done", "previous_item_id": prev, "item": copy.deepcopy(item)},
        )
        resp = self._start_response() if auto_respond and self.active is None else None
        if transcribe and self.config["audio"]["input"]["transcription"]:
            text = self._transcripts.pop(0) if self._transcripts else ""
            self._spawn(self._transcribe(item, text, audio_ms, resp))

    async def _transcribe(self, item: Event, text: str, audio_ms: int, resp: _Response | None) -> None:
        """Deliver the transcription after the response started, i.e. out of order (as live)."""
        if resp is not None:
            await resp.created.wait()
        await asyncio.sleep(self.script.transcription_delay)
        item["content"][0]["transcript"] = text
        with contextlib.suppress(ConnectionClosed):
            await self._send(
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": item["id"],
                    "content_index": 0,
                    "transcript": text,
                    "usage": {"type": "duration", "seconds": audio_ms / 1000},
                }
            )

    async def _on_commit(self, ev: Event) -> None:
        have = self._buffered / self._in_bpm
        if have < 100:
            await self._fail(
                "input_audio_buffer_commit_empty",
                "Error committing input audio buffer: buffer too small. Expected at "
                f"least 100ms of audio, but buffer only has {have:.2f}ms of audio.",
                None,
                ev,
            )
            return
        await self._commit(self._speech_item or new_id("item"), int(have), auto_respond=False)

    async def _on_clear(self, ev: Event) -> None:
        self._buffered, self._speech_item, self._silence = 0, None, 0
        self._frame.clear()
        await self._send({"type": "input_audio_buffer.cleared"})

    # -- responses ----------------------------------------------------------------------------
    async def _on_response_create(self, ev: Event) -> None:
        if self.active is not None:
            await self._fail(
                "conversation_already_has_active_response",
                "Conversation already has an active response in progress: "
                f"{self.active.id}. Wait until the response is finished before "
                "creating a new one.",
                None,
                ev,
            )
            return
        params = ev.get("response")
        if params is not None and not isinstance(params, dict):
            await self._fail("invalid_type", "Invalid type for 'response'.", "response", ev)
            return
        if (params or {}).get("output_modalities") not in (None, ["audio"], ["text"]):
            # The SDK's type admits any list of "text"/"audio"; the service takes one modality
            # per response, as it does per session (see check_session_update).
            await self._fail(
                "invalid_value",
                "Invalid value for 'response.output_modalities'.",
                "response.output_modalities",
                ev,
            )
            return
        self._start_response(params or {})

    async def _on_response_cancel(self, ev: Event) -> None:
        wanted = ev.get("response_id")
        if self.active is None or (wanted is not None and wanted != self.active.id):
            await self._fail(
                "response_cancel_not_active", "Cancellation failed: no active response found", None, ev
            )
            return
        await self._cancel_active("client_cancelled")

    async def _cancel_active(self, reason: str) -> None:
        """Stop the stream and wait until its cancelled ``response.done`` has gone out."""
        resp = self.active
        if resp is None:
            return
        resp.reason = reason
        resp.cancel.set()
        await resp.finished.wait()

    def _arm_idle_timer(self, output: list[Event]) -> None:
        """server_vad ``idle_timeout_ms``: once the answer would have finished playing
        (response.done + its audio duration) and the caller stays silent that long, the
        service commits the silence and responds (``input_audio_buffer.timeout_triggered``)."""
        td = self.config["audio"]["input"]["turn_detection"] or {}
        idle_ms = td.get("idle_timeout_ms") if td.get("type") == "server_vad" else None
        if not idle_ms:
            return
        played_ms = sum(self._audio_ms.get(str(item.get("id")), 0) for item in output)
        self._disarm_idle_timer()
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(
            (played_ms + idle_ms) / 1000, lambda: self._spawn(self._idle_timeout())
        )

    def _disarm_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None

    async def _idle_timeout(self) -> None:
        self._idle_timer = None
        if self.active is not None or self._speech_item is not None:
            return
        now_ms = self._in_total // self._in_bpm
        item_id = new_id("item")
        with contextlib.suppress(ConnectionClosed):
            await self._send(
                {
                    "type": "input_audio_buffer.timeout_triggered",
                    "audio_start_ms": max(0, now_ms - 1),
                    "audio_end_ms": now_ms,
                    "item_id": item_id,
                }
            )
            # Silence has no words: it does not use up a scripted caller transcript.
            await self._commit(item_id, 0, auto_respond=True, transcribe=False)

    def _start_response(self, params: Event | None = None) -> _Response:
        self._disarm_idle_timer()
        resp = _Response(new_id("resp"), self._responses)
        self._responses += 1
        self.active = resp
        reply = self._replies.pop(0) if self._replies else Reply(transcript="OK.")
        self._spawn(self._stream(resp, reply, params or {}))
        return resp

    def _modalities(self, params: Event) -> list[str]:
        """``response.create`` may override the session's output modalities for one response."""
        return list(params.get("output_modalities") or self.config["output_modalities"])

    def _response_obj(self, resp: _Response, status: str, params: Event) -> Event:
        cfg = self.config
        return {
            "object": "realtime.response",
            "id": resp.id,
            "status": status,
            "status_details": None,
            "output": [],
            "conversation_id": self.conversation_id,
            "output_modalities": self._modalities(params),
            "max_output_tokens": cfg["max_output_tokens"],
            "audio": {
                "output": {
                    "format": cfg["audio"]["output"]["format"],
                    "voice": cfg["audio"]["output"]["voice"],
                }
            },
            "usage": None,
            "metadata": params.get("metadata"),
        }

    async def _stream(self, resp: _Response, reply: Reply, params: Event) -> None:
        """Stream one scripted reply in the GA event order (notes section 5A/5C)."""
        try:
            body = self._response_obj(resp, "in_progress", params)
            await self._send({"type": "response.created", "response": copy.deepcopy(body)})
            resp.created.set()
            output: list[Event] = []
            if reply.speaks and not resp.cancel.is_set():
                stream = self._stream_text if self._modalities(params) == ["text"] else self._stream_audio
                output.append(await stream(resp, reply, len(output)))
            if reply.function_call and not resp.cancel.is_set():
                output.append(await self._stream_call(resp, reply.function_call, len(output)))
            body["status"] = "cancelled" if resp.reason else "completed"
            if resp.reason:
                body["status_details"] = {"type": "cancelled", "reason": resp.reason}
            body["output"] = copy.deepcopy(output)
            body["usage"] = self._usage(output)
            total = body["usage"]["total_tokens"]
            self.active = None  # the client may respond to response.done straight away
            if not resp.reason:
                self._arm_idle_timer(output)
            await self._send(
                {"type": "response.done", "response": body},
                {
                    "type": "rate_limits.updated",
                    "rate_limits": [
                        {"name": "requests", "limit": 5000, "remaining": 4999, "reset_seconds": 0.012},
                        {
                            "name": "tokens",
                            "limit": 40000,
                            "remaining": 40000 - total,
                            "reset_seconds": round(total * 0.0015, 3),
                        },
                    ],
                },
            )
        except (ConnectionClosed, _Dropped):
            pass
        finally:
            if self.active is resp:
                self.active = None
            resp.created.set()
            resp.finished.set()

    async def _pause(self, resp: _Response, pace: float) -> None:
        """Wait between deltas, waking early on cancellation; always yield to the reader."""
        if pace <= 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(pace):
                await resp.cancel.wait()

    async def _maybe_drop(self, resp: _Response, done: int) -> None:
        """Honour ``Script.close_after_first_delta`` (first response only), audio or text."""
        if done == 1 and resp.index == 0 and self.script.close_after_first_delta is not None:
            await self._close(self.script.close_after_first_delta)
            raise _Dropped

    async def _open_message(
        self, resp: _Response, index: int, part: Event
    ) -> tuple[Event, str | None, Event]:
        """Add an in-progress assistant message and announce it with its first content part;
        return the item, its ``previous_item_id`` and the ids every delta of the part carries."""
        item_id = new_id("item")
        item: Event = {
            "id": item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        prev = self._add_item(item)
        ids = {"response_id": resp.id, "item_id": item_id, "output_index": index, "content_index": 0}
        await self._send(
            {
                "type": "response.output_item.added",
                "response_id": resp.id,
                "output_index": index,
                "item": copy.deepcopy(item),
            },
            {"type": "conversation.item.added", "previous_item_id": prev, "item": copy.deepcopy(item)},
            {"type": "response.content_part.added", **ids, "part": part},
        )
        return item, prev, ids

    async def _close_message(
        self, resp: _Response, item: Event, prev: str | None, ids: Event, part: Event, *dones: Event
    ) -> None:
        """Send the part's own ``done`` events, then close the part, the item and the conversation
        entry: the same tail whether the message was spoken or written."""
        await self._send(
            *dones,
            {"type": "response.content_part.done", **ids, "part": part},
            {
                "type": "response.output_item.done",
                "response_id": resp.id,
                "output_index": ids["output_index"],
                "item": copy.deepcopy(item),
            },
            {"type": "conversation.item.done", "previous_item_id": prev, "item": copy.deepcopy(item)},
        )

    async def _stream_audio(self, resp: _Response, reply: Reply, index: int) -> Event:
        item, prev, ids = await self._open_message(resp, index, {"type": "audio", "transcript": ""})
        item_id = item["id"]
        audio = reply.render_audio(self._out_fmt)
        size = max(1, reply.delta_ms) * mulaw.BYTES_PER_MS[self._out_fmt]
        chunks = [audio[i : i + size] for i in range(0, len(audio), size)]
        pieces = _split(reply.transcript, len(chunks))
        sent_audio = self.output_audio.setdefault(item_id, bytearray())
        said: list[str] = []
        done = 0
        for chunk, piece in zip(chunks, pieces, strict=True):
            if resp.cancel.is_set():
                break
            sent_audio += chunk
            self._audio_sent = True
            events: list[Event] = [
                {"type": "response.output_audio.delta", **ids, "delta": base64.b64encode(chunk).decode()}
            ]
            if piece:
                said.append(piece)
                events.append({"type": "response.output_audio_transcript.delta", **ids, "delta": piece})
            await self._send(*events)
            done += 1
            await self._maybe_drop(resp, done)
            await self._pause(resp, reply.pace)
        transcript = "".join(said)
        self._audio_ms[item_id] = len(sent_audio) // mulaw.BYTES_PER_MS[self._out_fmt]
        item["status"] = "completed" if done == len(chunks) else "incomplete"
        item["content"] = [{"type": "output_audio", "transcript": transcript}]
        await self._close_message(
            resp,
            item,
            prev,
            ids,
            {"type": "audio", "transcript": transcript},
            {"type": "response.output_audio.done", **ids},
            {"type": "response.output_audio_transcript.done", **ids, "transcript": transcript},
        )
        return item

    async def _stream_text(self, resp: _Response, reply: Reply, index: int) -> Event:
        """``output_modalities: ["text"]``: the transcript is written, not spoken.

        No audio is rendered or recorded in ``output_audio``, so usage counts text tokens only
        and the item cannot be truncated (the service truncates audio only)."""
        item, prev, ids = await self._open_message(resp, index, {"type": "text", "text": ""})
        pieces = _words(reply.transcript)
        said: list[str] = []
        for piece in pieces:
            if resp.cancel.is_set():
                break
            said.append(piece)
            await self._send({"type": "response.output_text.delta", **ids, "delta": piece})
            await self._maybe_drop(resp, len(said))
            await self._pause(resp, reply.pace)
        text = "".join(said)
        item["status"] = "completed" if len(said) == len(pieces) else "incomplete"
        item["content"] = [{"type": "output_text", "text": text}]
        await self._close_message(
            resp,
            item,
            prev,
            ids,
            {"type": "text", "text": text},
            {"type": "response.output_text.done", **ids, "text": text},
        )
        return item

    async def _stream_call(self, resp: _Response, call: tuple[str, dict[str, Any]], index: int) -> Event:
        name, arguments = call
        args = json.dumps(arguments)
        item_id, call_id = new_id("item"), new_id("call")
        item: Event = {
            "id": item_id,
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "name": name,
            "call_id": call_id,
            "arguments": "",
        }
        prev = self._add_item(item)
        self._calls[call_id] = item
        ids = {"response_id": resp.id, "item_id": item_id, "output_index": index, "call_id": call_id}
        half = len(args) // 2
        await self._send(
            {
                "type": "response.output_item.added",
                "response_id": resp.id,
                "output_index": index,
                "item": copy.deepcopy(item),
            },
            {"type": "conversation.item.added", "previous_item_id": prev, "item": copy.deepcopy(item)},
            *(
                {"type": "response.function_call_arguments.delta", **ids, "delta": piece}
                for piece in (args[:half], args[half:])
                if piece
            ),
            {"type": "response.function_call_arguments.done", **ids, "name": name, "arguments": args},
        )
        item.update(status="completed", arguments=args)
        await self._send(
            {
                "type": "response.output_item.done",
                "response_id": resp.id,
                "output_index": index,
                "item": copy.deepcopy(item),
            },
            {"type": "conversation.item.done", "previous_item_id": prev, "item": copy.deepcopy(item)},
        )
        return item

    def _usage(self, output: list[Event]) -> Event:
        """Token counts per the cost guide: user audio 10 tok/s, assistant audio 20 tok/s."""
        bpm = mulaw.BYTES_PER_MS[self._out_fmt]
        mine = {it["id"] for it in output}

        def text_of(it: Event) -> str:
            if it["type"] == "function_call":
                return str(it.get("arguments", ""))
            if it["type"] == "function_call_output":
                return str(it.get("output", ""))
            return " ".join(str(p.get("text") or p.get("transcript") or "") for p in it.get("content", []))

        def audio_tokens(it: Event) -> int:
            if it["id"] in self._user_audio_ms:
                return round(self._user_audio_ms[it["id"]] / 100)
            return round(len(self.output_audio.get(it["id"], b"")) / bpm / 50)

        history = [it for it in self.items if it["id"] not in mine]
        in_text = _tokens(str(self.config.get("instructions") or "")) + sum(
            _tokens(text_of(it)) for it in history
        )
        in_audio = sum(audio_tokens(it) for it in history)
        in_total = in_text + in_audio
        cached = min(self._prev_input_tokens, in_total) // 64 * 64
        self._prev_input_tokens = in_total
        cached_text = min(cached, in_text)
        out_text = sum(_tokens(text_of(it)) for it in output)
        out_audio = sum(audio_tokens(it) for it in output)
        return {
            "total_tokens": in_total + out_text + out_audio,
            "input_tokens": in_total,
            "output_tokens": out_text + out_audio,
            "input_token_details": {
                "text_tokens": in_text,
                "audio_tokens": in_audio,
                "image_tokens": 0,
                "cached_tokens": cached,
                "cached_tokens_details": {
                    "text_tokens": cached_text,
                    "audio_tokens": cached - cached_text,
                    "image_tokens": 0,
                },
            },
            "output_token_details": {"text_tokens": out_text, "audio_tokens": out_audio},
        }

    # -- conversation items -------------------------------------------------------------------
    async def _on_item_create(self, ev: Event) -> None:
        raw = ev.get("item")
        item: Event = copy.deepcopy(raw) if isinstance(raw, dict) else {}
        kind = item.get("type")
        if kind == "message":
            role = item.get("role")
            allowed = {
                "user": {"input_text", "input_audio", "input_image"},
                "system": {"input_text"},
                "assistant": {"output_text"},
            }.get(str(role), set())
            parts = item.get("content")
            if (
                not allowed
                or not isinstance(parts, list)
                or any(not isinstance(p, dict) or p.get("type") not in allowed for p in parts)
            ):
                await self._fail(
                    "invalid_value",
                    "Invalid message item: unsupported role or content type.",
                    "item.content",
                    ev,
                )
                return
        elif kind == "function_call":
            # History of a call made elsewhere (the SDK's RealtimeConversationItemFunctionCall;
            # "messages, function calls, and function call responses" in its docstring): its
            # call_id may then be answered with a function_call_output.
            if item.get("call_id"):
                self._calls[str(item["call_id"])] = item
        elif kind == "function_call_output":
            if item.get("call_id") not in self._calls:  # message UNCONFIRMED
                await self._fail(
                    "invalid_value",
                    f"Tool call ID '{item.get('call_id')}' not found in conversation.",
                    "item.call_id",
                    ev,
                )
                return
        else:
            await self._fail("invalid_value", f"Invalid value: '{kind}'.", "item.type", ev)
            return
        after = ev.get("previous_item_id")
        if after not in (None, "root") and self._find(after) is None:
            await self._fail(
                "invalid_value", f"Previous item with id '{after}' not found.", "previous_item_id", ev
            )
            return
        item.setdefault("id", new_id("item"))
        item.update(object="realtime.item", status="completed")
        prev = self._add_item(item, None if after == "root" else after, root=after == "root")
        await self._send(
            {"type": "conversation.item.added", "previous_item_id": prev, "item": copy.deepcopy(item)},
            {"type": "conversation.item.done", "previous_item_id": prev, "item": copy.deepcopy(item)},
        )

    async def _on_item_truncate(self, ev: Event) -> None:
        self.truncates.append(ev)
        item_id, end_ms = ev.get("item_id"), ev.get("audio_end_ms")
        item = self._find(item_id)
        if item is None or item_id not in self.output_audio:
            message = (
                f"Item with item_id '{item_id}' not found."
                if item is None
                else "Only model output audio messages can be truncated"
            )
            await self._fail("invalid_value", message, "item_id", ev)
            return
        if ev.get("content_index", 0) != 0:
            await self._fail("invalid_value", "Invalid content_index.", "content_index", ev)
            return
        bpm = mulaw.BYTES_PER_MS[self._out_fmt]
        sent = len(self.output_audio[item_id])
        if not isinstance(end_ms, int) or end_ms < 0 or end_ms * bpm > sent:
            # Observed message; the code is UNCONFIRMED.
            await self._fail(
                "invalid_value",
                f"Audio content of {sent // bpm}ms is already shorter than {end_ms}ms",
                "audio_end_ms",
                ev,
            )
            return
        for part in item.get("content", []):
            part["transcript"] = ""  # the service drops the text of a truncated item
        await self._send(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": 0,
                "audio_end_ms": end_ms,
            }
        )

    async def _on_item_delete(self, ev: Event) -> None:
        item = self._find(ev.get("item_id"))
        if item is None:
            await self._fail(
                "invalid_value", f"Item with item_id '{ev.get('item_id')}' not found.", "item_id", ev
            )
            return
        self.items.remove(item)
        await self._send({"type": "conversation.item.deleted", "item_id": item["id"]})

    async def _on_item_retrieve(self, ev: Event) -> None:
        item = self._find(ev.get("item_id"))
        if item is None:
            await self._fail(
                "invalid_value", f"Item with item_id '{ev.get('item_id')}' not found.", "item_id", ev
            )
            return
        await self._send({"type": "conversation.item.retrieved", "item": copy.deepcopy(item)})

    _handlers: dict[str, Callable[[FakeSession, Event], Any]] = {
        "session.update": _on_session_update,
        "input_audio_buffer.commit": _on_commit,
        "input_audio_buffer.clear": _on_clear,
        "conversation.item.create": _on_item_create,
        "conversation.item.truncate": _on_item_truncate,
        "conversation.item.delete": _on_item_delete,
        "conversation.item.retrieve": _on_item_retrieve,
        "response.create": _on_response_create,
        "response.cancel": _on_response_cancel,
    }


class FakeRealtimeServer:
    """A local WebSocket server speaking the Realtime GA protocol, one FakeSession per connection."""

    def __init__(
        self,
        script: Script | Callable[[], Script] | None = None,
        *,
        api_key: str = "sk-test-fake",
        host: str = "127.0.0.1",
        port: int = 0,
        handshake_delay: float = 0.0,
    ) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        # Seconds before the WebSocket upgrade is answered, like TCP + TLS + upgrade to the
        # real service (Script.connect_delay delays session.created after it). Settable.
        self.handshake_delay = handshake_delay
        self.sessions: list[FakeSession] = []
        self.connection_attempts = 0
        self._script = script
        self._server: Server | None = None
        self._watch: _Watch | None = None

    @property
    def url(self) -> str:
        """Base URL; clients append ``?model=...`` as they would for the real service."""
        return f"ws://{self.host}:{self.port}/v1/realtime"

    def set_script(self, script: Script | Callable[[], Script] | None) -> None:
        """Use ``script`` (or a factory called per connection) for sessions opened from now on."""
        self._script = script

    def _next_script(self) -> Script:
        script = self._script() if callable(self._script) else self._script
        return script if script is not None else Script()

    async def start(self) -> None:
        self._watch = _Watch()
        self._server = await serve(
            self._handle, self.host, self.port, process_request=self._process_request, max_size=32 * 2**20
        )
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("fake OpenAI Realtime server listening on %s", self.url)
        if not realtime_schema.ENABLED:
            log.warning(
                "openai SDK not installed: events are not checked against its Realtime types "
                "(pip install -r requirements-dev.txt to check them)"
            )

    @property
    def invalid_sent(self) -> list[str]:
        """Server events the SDK's GA types rejected, over all sessions: bugs in the fake."""
        return [bug for session in self.sessions for bug in session.invalid_sent]

    async def stop(self) -> None:
        """Close every session (1001) and wait for all handlers and their tasks to finish.

        Raises FakeProtocolError if the fake sent any event the SDK rejects, so the test that
        used it fails even when the bad event only made a client give up quietly."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self.invalid_sent:
            raise FakeProtocolError("; ".join(self.invalid_sent))

    async def __aenter__(self) -> FakeRealtimeServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve_forever(self) -> None:
        """For a developer command: run until cancelled."""
        assert self._server is not None, "call start() first"
        await self._server.serve_forever()

    async def wait_for_session(
        self,
        index: int = 0,
        timeout: float = 5,
    ) -> FakeSession:
        """Wait until connection number ``index`` (0-based) has been accepted."""
        assert self._watch is not None, "call start() first"
        return await self._watch.wait_until(
            lambda: self.sessions[index] if len(self.sessions) > index else None, timeout
        )

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.connection_attempts += 1
        if urlsplit(request.path).path != "/v1/realtime":
            return connection.respond(404, "Not Found\n")
        if self.handshake_delay > 0:
            await asyncio.sleep(self.handshake_delay)  # this connection only: others go on
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        session = FakeSession(ws, self._next_script(), len(self.sessions))
        self.sessions.append(session)
        if self._watch is not None:
            self._watch.notify()
        await session.run(self.api_key)
