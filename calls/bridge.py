"""The call bridge: a sans-IO state machine between Twilio Media Streams and OpenAI Realtime.

Events go in (a parsed Twilio frame, an OpenAI server event, the moment OpenAI connects);
actions come out (text for either socket, a turn to store, the end of the call). No
sockets, no ORM, no clock: the consumer passes ``now`` (monotonic seconds) and performs
the actions. Tests drive it directly.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from calls import realtime, twilio_media
from calls.audio import BYTES_PER_MS, base64_size, split_base64
from calls.playback import Playback
from calls.realtime import AgentConfig

logger = logging.getLogger(__name__)

# 120 ms of mu-law per Twilio media message: 960 bytes = 1280 base64 characters. Marks at
# this grain keep the barge-in estimate fine without flooding Twilio.
CHUNK_CHARS = 1280
# Caller audio kept while OpenAI connects (the caller's first words matter): 10 s.
MAX_EARLY_FRAMES = 500


@dataclass(frozen=True, slots=True)
class SendTwilio:
    text: str


@dataclass(frozen=True, slots=True)
class SendOpenAI:
    text: str


@dataclass(frozen=True, slots=True)
class TurnRecord:
    position: int
    role: str  # "caller" | "agent"
    text: str
    item_id: str
    started_ms: int | None
    ended_ms: int | None
    interrupted: bool = False
    heard_ms: int | None = None


@dataclass(frozen=True, slots=True)
class SaveTurn:
    turn: TurnRecord


@dataclass(frozen=True, slots=True)
class RecordError:
    message: str


@dataclass(frozen=True, slots=True)
class EndCall:
    reason: str  # an EndedReason value
    error: str = ""


Action = SendTwilio | SendOpenAI | SaveTurn | RecordError | EndCall


@dataclass(slots=True)
class Item:
    """A conversation item: a caller utterance or an agent answer."""

    item_id: str
    position: int
    role: str
    transcript: str = ""
    transcript_parts: list[str] = field(default_factory=list)
    transcript_done: bool = False
    audio_done: bool = False
    sent_bytes: int = 0
    started_ms: int | None = None
    ended_ms: int | None = None
    truncated: bool = False
    heard_ms: int | None = None
    saved: bool = False


def add_usage(total: dict[str, Any], usage: object) -> None:
    """Sum token counts field by field (nested details included)."""
    if not isinstance(usage, dict):
        return
    for key, value in usage.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            total[key] = total.get(key, 0) + value
        elif isinstance(value, dict):
            add_usage(total.setdefault(key, {}), value)


class CallBridge:
    def __init__(self, agent: AgentConfig, *, stream_sid: str, call_sid: str, now: float) -> None:
        self.agent = agent
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.started_at = now
        self.live = False  # OpenAI session configured as we asked
        self.ended: EndCall | None = None
        self.playback = Playback()
        self.items: dict[str, Item] = {}
        self.usage: dict[str, Any] = {}
        self.transcription_usage: dict[str, Any] = {}
        self.frames_in = 0
        self.frames_out = 0
        self._outbox: list[Action] = []
        self._early: deque[str] = deque(maxlen=MAX_EARLY_FRAMES)
        self._first_media_ms: int | None = None
        self._next_position = 0
        self._active_response: str | None = None
        self._response_wanted = False
        self._interrupted: set[str] = set()
        self._cancel_sent: set[str] = set()
        self._item_response: dict[str, str] = {}
        self._speech_ms: dict[str, tuple[int | None, int | None]] = {}
        # A mark with nothing before it measures the round trip to Twilio right away.
        probe = self.playback.probe(now)
        self._outbox.append(SendTwilio(twilio_media.mark_message(stream_sid, probe)))

    # -- plumbing -----------------------------------------------------------------------

    def drain(self) -> list[Action]:
        actions, self._outbox = self._outbox, []
        return actions

    def _offset_ms(self, now: float) -> int:
        return max(0, int((now - self.started_at) * 1000))

    def _end(self, reason: str, error: str = "") -> None:
        if self.ended is None:
            self.ended = EndCall(reason, error)
            self._outbox.append(self.ended)

    def _item(self, item_id: str, role: str) -> Item:
        item = self.items.get(item_id)
        if item is None:
            item = Item(item_id=item_id, position=self._next_position, role=role)
            self._next_position += 1
            self.items[item_id] = item
        return item

    # -- OpenAI connection ----------------------------------------------------------------

    def on_openai_connected(self) -> None:
        self._outbox.append(SendOpenAI(realtime.dumps(realtime.session_update(self.agent))))

    def _go_live(self) -> None:
        self.live = True
        for payload in self._early:
            self._outbox.append(SendOpenAI(realtime.audio_append(payload)))
        self._early.clear()
        if self.agent.greeting:
            self._request_response(realtime.greeting_instructions(self.agent.greeting))

    def _request_response(self, instructions: str | None = None) -> None:
        if self._active_response is not None:
            self._response_wanted = True
            return
        self._outbox.append(SendOpenAI(realtime.response_create(instructions)))

    # -- Twilio -> OpenAI -------------------------------------------------------------------

    def on_twilio(self, event: twilio_media.TwilioEvent, now: float) -> None:
        if isinstance(event, twilio_media.Media):
            self.frames_in += 1
            if self._first_media_ms is None:
                self._first_media_ms = event.timestamp_ms
            if self.live:
                self._outbox.append(SendOpenAI(realtime.audio_append(event.payload)))
            else:
                self._early.append(event.payload)
        elif isinstance(event, twilio_media.Mark):
            self._on_mark(event.name, now)
        elif isinstance(event, twilio_media.Stop):
            self._end("caller_hung_up")
        elif isinstance(event, twilio_media.Dtmf):
            logger.info("call %s: caller pressed %s", self.call_sid, event.digit)
        # connected/start are handled by the consumer before the bridge exists.

    def _on_mark(self, name: str, now: float) -> None:
        chunk = self.playback.echo(name, now)
        if chunk is None or not chunk.item_id:
            return
        item = self.items.get(chunk.item_id)
        if item is not None:
            item.ended_ms = self._offset_ms(now - self.playback.delay)
            self._maybe_finish_agent(item, now)

    # -- OpenAI -> Twilio -------------------------------------------------------------------

    def on_openai(self, event: dict[str, Any], now: float) -> None:
        kind = event.get("type")
        handler = _HANDLERS.get(kind)  # type: ignore[arg-type]
        if handler is None:
            logger.debug("call %s: ignoring OpenAI event %s", self.call_sid, kind)
            return
        handler(self, event, now)

    def _on_session_updated(self, event: dict[str, Any], now: float) -> None:
        if self.live:
            return
        problems = realtime.session_problems(event.get("session"))
        if problems:
            self._end("error", "OpenAI session not as configured: " + "; ".join(problems))
            return
        self._go_live()

    def _on_error(self, event: dict[str, Any], now: float) -> None:
        error = event.get("error") if isinstance(event.get("error"), dict) else {}
        code = str(error.get("code") or "")
        message = str(error.get("message") or "")[:500]
        if not self.live:
            self._end("error", f"OpenAI refused the session: {code or 'error'}: {message}")
            return
        if code == "conversation_already_has_active_response":
            self._response_wanted = True
        elif code == "response_cancel_not_active":
            logger.debug("call %s: response already finished before cancel", self.call_sid)
        elif "shorter than" in message or error.get("param") == "audio_end_ms":
            logger.warning("call %s: truncate refused: %s", self.call_sid, message)
        else:
            logger.warning("call %s: OpenAI error %s: %s", self.call_sid, code, message)
            self._outbox.append(RecordError(f"OpenAI error {code}: {message}"))

    def _on_speech_started(self, event: dict[str, Any], now: float) -> None:
        item_id = str(event.get("item_id") or "")
        if item_id:
            self._speech_ms[item_id] = (_int(event.get("audio_start_ms")), None)
        active = self._active_response
        if active is not None:
            self._interrupted.add(active)
        # Barge-in: stop playback first, then tell the model what the caller really heard.
        heard: dict[str, int] = {}
        if self.playback.is_playing:
            heard = self.playback.clear(now)
            self._outbox.append(SendTwilio(twilio_media.clear_message(self.stream_sid)))
        # An answer still being generated is cut short even if its audio already played out
        # (a model slower than real time leaves Twilio's buffer empty between deltas).
        for item in self.items.values():
            if (
                active is not None
                and item.role == "agent"
                and item.sent_bytes
                and not item.truncated
                and self._item_response.get(item.item_id) == active
            ):
                heard.setdefault(item.item_id, self.playback.confirmed.get(item.item_id, 0))
        for interrupted_id, nbytes in heard.items():
            self._truncate(interrupted_id, nbytes, now)

    def _truncate(self, item_id: str, heard_bytes: int, now: float) -> None:
        audio_end_ms = heard_bytes // BYTES_PER_MS
        self._outbox.append(SendOpenAI(realtime.truncate(item_id, audio_end_ms)))
        item = self.items.get(item_id)
        if item is None:
            return
        item.truncated = True
        item.heard_ms = audio_end_ms
        item.ended_ms = self._offset_ms(now)
        if response_id := self._item_response.get(item_id, ""):
            self._interrupted.add(response_id)
        self._maybe_finish_agent(item, now)

    def _on_speech_stopped(self, event: dict[str, Any], now: float) -> None:
        item_id = str(event.get("item_id") or "")
        start, _ = self._speech_ms.get(item_id, (None, None))
        self._speech_ms[item_id] = (start, _int(event.get("audio_end_ms")))

    def _on_committed(self, event: dict[str, Any], now: float) -> None:
        item = self._item(str(event.get("item_id") or ""), "caller")
        start, end = self._speech_ms.pop(item.item_id, (None, None))
        base = self._first_media_ms or 0
        item.started_ms = None if start is None else base + start
        item.ended_ms = None if end is None else base + end
        if not self.agent.transcription_model:
            self._save(item, "")

    def _on_item_added(self, event: dict[str, Any], now: float) -> None:
        raw = event.get("item")
        if not isinstance(raw, dict) or not raw.get("id"):
            return
        role = {"user": "caller", "assistant": "agent"}.get(str(raw.get("role")), "other")
        self._item(str(raw["id"]), role)

    def _on_response_created(self, event: dict[str, Any], now: float) -> None:
        response = event.get("response") if isinstance(event.get("response"), dict) else {}
        self._active_response = str(response.get("id") or "response")

    def _on_output_item_added(self, event: dict[str, Any], now: float) -> None:
        raw = event.get("item") if isinstance(event.get("item"), dict) else {}
        if raw.get("id"):
            item = self._item(str(raw["id"]), "agent" if raw.get("type") == "message" else "other")
            self._item_response[item.item_id] = str(event.get("response_id") or self._active_response)

    def _on_audio_delta(self, event: dict[str, Any], now: float) -> None:
        response_id = str(event.get("response_id") or self._active_response or "")
        if response_id in self._interrupted:
            # The caller is talking: this audio must not play. If the session did not
            # cancel the response itself, cancel it once.
            if response_id == self._active_response and response_id not in self._cancel_sent:
                self._cancel_sent.add(response_id)
                self._outbox.append(SendOpenAI(realtime.response_cancel()))
            return
        delta = event.get("delta")
        item_id = str(event.get("item_id") or "")
        if not isinstance(delta, str) or not delta or not item_id:
            return
        item = self._item(item_id, "agent")
        self._item_response.setdefault(item_id, response_id)
        for piece in split_base64(delta, CHUNK_CHARS):
            nbytes = base64_size(piece)
            name, starts = self.playback.send(item_id, nbytes, now)
            if item.started_ms is None:
                item.started_ms = self._offset_ms(starts)
            item.sent_bytes += nbytes
            self.frames_out += 1
            self._outbox.append(SendTwilio(twilio_media.media_message(self.stream_sid, piece)))
            self._outbox.append(SendTwilio(twilio_media.mark_message(self.stream_sid, name)))

    def _on_audio_done(self, event: dict[str, Any], now: float) -> None:
        item = self.items.get(str(event.get("item_id") or ""))
        if item is not None:
            item.audio_done = True
            self._maybe_finish_agent(item, now)

    def _on_transcript_delta(self, event: dict[str, Any], now: float) -> None:
        item = self.items.get(str(event.get("item_id") or ""))
        if item is not None and isinstance(event.get("delta"), str):
            item.transcript_parts.append(event["delta"])

    def _on_transcript_done(self, event: dict[str, Any], now: float) -> None:
        item = self._item(str(event.get("item_id") or ""), "agent")
        item.transcript = str(event.get("transcript") or "".join(item.transcript_parts))
        item.transcript_done = True
        self._maybe_finish_agent(item, now)

    def _on_response_done(self, event: dict[str, Any], now: float) -> None:
        response = event.get("response") if isinstance(event.get("response"), dict) else {}
        add_usage(self.usage, response.get("usage"))
        self._active_response = None
        for raw in response.get("output") or []:
            item = self.items.get(str(raw.get("id"))) if isinstance(raw, dict) else None
            if item is not None and item.role == "agent":
                item.audio_done = True
                if not item.transcript_done:
                    item.transcript = "".join(item.transcript_parts)
                    item.transcript_done = True
                self._maybe_finish_agent(item, now)
        if self._response_wanted:
            self._response_wanted = False
            self._outbox.append(SendOpenAI(realtime.response_create()))

    def _on_transcription_completed(self, event: dict[str, Any], now: float) -> None:
        item = self._item(str(event.get("item_id") or ""), "caller")
        add_usage(self.transcription_usage, event.get("usage"))
        self._save(item, str(event.get("transcript") or "").strip())

    def _on_transcription_failed(self, event: dict[str, Any], now: float) -> None:
        item = self._item(str(event.get("item_id") or ""), "caller")
        error = event.get("error") if isinstance(event.get("error"), dict) else {}
        logger.warning("call %s: caller transcription failed: %s", self.call_sid, error.get("message"))
        self._save(item, "")

    # -- turns ----------------------------------------------------------------------------

    def _maybe_finish_agent(self, item: Item, now: float) -> None:
        """An agent turn is complete once its transcript is known and the caller has heard
        all of it (every mark echoed) or was cut off by a barge-in."""
        if item.saved or item.role != "agent" or not item.transcript_done:
            return
        if item.truncated:
            self._save(item, item.transcript)
            return
        heard_all = self.playback.confirmed.get(item.item_id, 0) >= item.sent_bytes
        if item.audio_done and heard_all:
            self._save(item, item.transcript)

    def _save(self, item: Item, text: str) -> None:
        if item.saved:
            return
        item.saved = True
        self._outbox.append(
            SaveTurn(
                TurnRecord(
                    position=item.position,
                    role=item.role,
                    text=text,
                    item_id=item.item_id,
                    started_ms=item.started_ms,
                    ended_ms=item.ended_ms,
                    interrupted=item.truncated,
                    heard_ms=item.heard_ms,
                )
            )
        )

    def finish(self, now: float) -> None:
        """The call is over: store what is known of every unfinished turn."""
        heard = self.playback.heard_at(now) if self.playback.is_playing else {}
        for item in sorted(self.items.values(), key=lambda i: i.position):
            if item.saved or item.role not in ("caller", "agent"):
                continue
            if item.role == "agent":
                if item.item_id in heard and heard[item.item_id] < item.sent_bytes:
                    item.truncated = True
                    item.heard_ms = heard[item.item_id] // BYTES_PER_MS
                text = item.transcript or "".join(item.transcript_parts)
                if not text and not item.sent_bytes:
                    continue
                self._save(item, text)
            elif item.item_id and (item.started_ms is not None or item.transcript):
                self._save(item, item.transcript)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_HANDLERS = {
    "session.updated": CallBridge._on_session_updated,
    "error": CallBridge._on_error,
    "input_audio_buffer.speech_started": CallBridge._on_speech_started,
    "input_audio_buffer.speech_stopped": CallBridge._on_speech_stopped,
    "input_audio_buffer.committed": CallBridge._on_committed,
    "conversation.item.added": CallBridge._on_item_added,
    "response.created": CallBridge._on_response_created,
    "response.output_item.added": CallBridge._on_output_item_added,
    "response.output_audio.delta": CallBridge._on_audio_delta,
    "response.output_audio.done": CallBridge._on_audio_done,
    "response.output_audio_transcript.delta": CallBridge._on_transcript_delta,
    "response.output_audio_transcript.done": CallBridge._on_transcript_done,
    "response.done": CallBridge._on_response_done,
    "conversation.item.input_audio_transcription.completed": CallBridge._on_transcription_completed,
    "conversation.item.input_audio_transcription.failed": CallBridge._on_transcription_failed,
}
