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

from calls import realtime, replay, twilio_media
from calls.audio import BYTES_PER_MS, base64_size, split_base64
from calls.bridge_actions import (
    Action,
    AgentAudio,
    AgentCut,
    CallSummary,
    EndCall,
    RecordError,
    SaveTurn,
    SendOpenAI,
    SendTwilio,
    TurnRecord,
)
from calls.call_control import CLOSING_METADATA, CallControl, Closing
from calls.playback import Playback
from calls.realtime import AgentConfig

logger = logging.getLogger(__name__)

# 120 ms of mu-law per Twilio media message: 960 bytes = 1280 base64 characters. Marks at
# this grain keep the barge-in estimate fine without flooding Twilio.
CHUNK_CHARS = 1280
# Caller audio kept while OpenAI connects (the caller's first words matter): 10 s.
MAX_EARLY_FRAMES = 500
# Caller audio sent before speech was detected that the service counts in (its default
# ``prefix_padding_ms`` is 300 ms): kept so an utterance cut by a drop can be sent again.
PREFIX_FRAMES = 25
REPLAY_PREFIX = replay.REPLAY_PREFIX


@dataclass(slots=True)
class Item:
    """A conversation item: a caller utterance, an agent answer or a tool call."""

    item_id: str
    position: int
    role: str  # "caller" | "agent" | "tool" | "other"
    transcript: str = ""
    transcript_parts: list[str] = field(default_factory=list)
    transcript_done: bool = False
    audio_done: bool = False
    sent_bytes: int = 0
    started_ms: int | None = None
    ended_ms: int | None = None
    truncated: bool = False
    heard_ms: int | None = None
    latency_ms: int | None = None
    saved: bool = False
    session: int = 0  # the OpenAI session it belongs to (1, 2... after reconnects)
    cut_off: bool = False  # agent: the session dropped while it was being generated
    words_lost: bool = False  # caller: the session dropped before its transcript came
    # Tool calls: what the model asked and what it was given back (None: still running).
    call_id: str = ""
    tool_name: str = ""
    arguments: str = ""
    tool_output: str | None = None

    def replay_turn(self) -> replay.Turn | None:
        """This item as the replacement session is to be told it; None if it is not a turn."""
        if self.role == "caller":
            known = self.transcript_done and not self.words_lost
            return replay.Turn("caller", self.transcript, words_known=known)
        if self.role == "agent":
            return replay.Turn(
                "agent",
                self.transcript or "".join(self.transcript_parts),
                interrupted=self.truncated,
                heard_ms=self.heard_ms,
                audio_ms=self.sent_bytes // BYTES_PER_MS,
                cut_off=self.cut_off,
            )
        if self.role == "tool":
            return replay.Turn(
                "tool",
                call_id=self.call_id,
                tool_name=self.tool_name,
                arguments=self.arguments,
                tool_output=self.tool_output,
            )
        return None


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


class CallBridge(CallControl):
    """Audio both ways, barge-in, transcripts and the OpenAI session's life; what the agent
    does to the call itself (tools, transfer, ending, limits, keys) is ``CallControl``'s."""

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
        # Caller audio of the utterance in progress (not yet committed), for a new session.
        self._uncommitted: deque[str] = deque(maxlen=MAX_EARLY_FRAMES)
        self._caller_speaking = False
        self._first_media_ms: int | None = None
        self._next_position = 0
        self._active_response: str | None = None
        self._wanted: str | None = None  # a response.create to send once none is active
        self._last_create = realtime.response_create()
        self._interrupted: set[str] = set()
        self._cancel_sent: set[str] = set()
        self._item_response: dict[str, str] = {}
        self._speech_ms: dict[str, tuple[int | None, int | None]] = {}
        self._pending_tools: set[str] = set()
        self._closing: Closing | None = None
        self._transferred_to = ""
        self._transfer_started = 0.0
        self._dtmf: list[str] = []
        self._dtmf_last = 0.0
        self._dtmf_count = 0
        self._silence_prompts = 0
        self._wrap_up_sent = False
        self.record_audio = False  # emit AgentAudio/AgentCut for a recording
        self.interruptions = 0
        self.first_audio_ms: int | None = None
        self.latencies_ms: list[int] = []
        self._speech_stopped_at: float | None = None
        self.sessions = 0  # OpenAI sessions opened for this call
        self.reconnects = 0  # ... of which after losing one
        self._session_live_since = now
        self._recycle_requested = False
        self._replayed = 0
        self._respond_after_replay = False  # a tool finished while no session was live
        self._caller_left_at: float | None = None
        self._probe(now)

    # -- plumbing -----------------------------------------------------------------------

    def _probe(self, now: float) -> None:
        """A mark with nothing before it measures the round trip to Twilio right away."""
        name = self.playback.probe(now)
        self._outbox.append(SendTwilio(twilio_media.mark_message(self.stream_sid, name)))

    def drain(self) -> list[Action]:
        actions, self._outbox = self._outbox, []
        return actions

    def _offset_ms(self, now: float) -> int:
        return max(0, int((now - self.started_at) * 1000))

    def _end(self, reason: str, error: str = "", *, hang_up: bool = False) -> None:
        if self.ended is None:
            self.ended = EndCall(reason, error, hang_up)
            self._outbox.append(self.ended)

    def _item(self, item_id: str, role: str) -> Item:
        item = self.items.get(item_id)
        if item is None:
            item = Item(item_id=item_id, position=self._next_position, role=role, session=self.sessions)
            self._next_position += 1
            self.items[item_id] = item
        return item

    # -- OpenAI connection ----------------------------------------------------------------

    def on_openai_connected(self, *, configured: bool = False) -> None:
        """A session is open. ``configured``: it was opened before the call's media socket
        (calls/preconnect.py) and already sent this agent's session.update; sending it
        again would only cost a second round of session.updated."""
        self.sessions += 1
        self._recycle_requested = False
        if not configured:
            self._outbox.append(SendOpenAI(realtime.dumps(realtime.session_update(self.agent))))

    def on_openai_lost(self, now: float, reason: str, *, planned: bool = False) -> None:
        """The OpenAI session is gone (dropped, or replaced on purpose). Until the next one is
        live, caller audio is kept; what Twilio is playing plays on."""
        self.live = False
        active, self._active_response = self._active_response, None
        self._wanted = None
        # Tools still running keep running: their results are given to the next session.
        for item in sorted(self.items.values(), key=lambda i: i.position):
            being_said = active is not None and self._item_response.get(item.item_id) == active
            if item.role == "agent" and not item.transcript_done and being_said:
                # No more of this answer will come; what was sent plays on and is stored.
                item.cut_off = not planned
                item.transcript = "".join(item.transcript_parts)
                item.transcript_done = item.audio_done = True
                self._maybe_finish_agent(item, now)
            elif item.role == "caller" and not item.saved and item.started_ms is not None:
                # Its transcription belonged to the lost session and will never come.
                item.words_lost = True
                self._save(item, "")
        if self._caller_speaking:
            # The caller was mid-sentence: the lost session heard the start of it. The next
            # one hears the whole sentence again, from just before it began.
            self._early.extend(self._uncommitted)
        self._caller_speaking = False
        self._uncommitted.clear()
        if not planned:
            self.reconnects += 1
            self._outbox.append(RecordError(f"OpenAI session lost ({reason}); reconnecting"))

    def _go_live(self, now: float) -> None:
        self.live = True
        self._session_live_since = now
        if not self.playback.pending:
            self._probe(now)  # the start-up probe is back: measure again, now the loop is calmer
        if self.sessions > 1:
            # A new session knows nothing: give it the conversation so far, as text.
            self._replay_conversation()
            for payload in self._early:
                self._outbox.append(SendOpenAI(realtime.audio_append(payload)))
            self._early.clear()
            return
        for payload in self._early:
            self._outbox.append(SendOpenAI(realtime.audio_append(payload)))
        self._early.clear()
        if self.agent.greeting:
            self._request_response(realtime.greeting_instructions(self.agent.greeting))

    def _replay_conversation(self) -> None:
        turns = [
            turn
            for item in sorted(self.items.values(), key=lambda i: i.position)
            if (turn := item.replay_turn()) is not None
        ]
        events = replay.replay_items(turns, first_id=self._replayed + 1)
        self._replayed += len(events)
        self._outbox.extend(SendOpenAI(event) for event in events)
        # The drop may have eaten the answer to the caller's last words (or to a tool's
        # output): ask for it rather than leave the caller in silence.
        unanswered = bool(turns) and (
            turns[-1].role == "caller" or (turns[-1].role == "tool" and turns[-1].tool_output is not None)
        )
        if (unanswered or self._respond_after_replay) and not self._pending_tools and self._closing is None:
            self._request_response()
        self._respond_after_replay = False

    def _request_response(
        self, instructions: str | None = None, metadata: dict[str, str] | None = None, *, tools: bool = True
    ) -> None:
        """Only one response may be active: ask now, or as soon as the current one is done."""
        create = realtime.response_create(instructions, metadata, tools=tools)
        if self._active_response is not None:
            self._wanted = create
            return
        self._last_create = create
        self._outbox.append(SendOpenAI(create))

    # -- Twilio -> OpenAI -------------------------------------------------------------------

    def on_twilio(self, event: twilio_media.TwilioEvent, now: float) -> None:
        if isinstance(event, twilio_media.Media):
            self.frames_in += 1
            if self._first_media_ms is None:
                self._first_media_ms = event.timestamp_ms
            if self.live:
                self._outbox.append(SendOpenAI(realtime.audio_append(event.payload)))
                uncommitted = self._uncommitted
                uncommitted.append(event.payload)
                if not self._caller_speaking and len(uncommitted) > PREFIX_FRAMES:
                    uncommitted.popleft()
            else:
                self._early.append(event.payload)
        elif isinstance(event, twilio_media.Mark):
            self._on_mark(event.name, now)
        elif isinstance(event, twilio_media.Stop):
            self.on_stream_closed(now)
            # After a transfer Twilio stops the stream itself: that is no hang-up. The stop
            # may even overtake the REST response confirming the redirect.
            self._end("transferred" if self.transferred_to else "caller_hung_up")
        elif isinstance(event, twilio_media.Dtmf):
            self._on_dtmf(event.digit, now)
        # connected/start are handled by the consumer before the bridge exists.

    def _on_mark(self, name: str, now: float) -> None:
        chunk = self.playback.echo(name, now)
        if chunk is None or not chunk.item_id:
            return
        item = self.items.get(chunk.item_id)
        if item is not None:
            item.ended_ms = self._offset_ms(now - self.playback.delay)
            self._maybe_finish_agent(item, now)
        self._maybe_close(now)

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
        self._go_live(now)

    def _on_error(self, event: dict[str, Any], now: float) -> None:
        error = event.get("error") if isinstance(event.get("error"), dict) else {}
        code = str(error.get("code") or "")
        message = str(error.get("message") or "")[:500]
        if not self.live:
            self._end("error", f"OpenAI refused the session: {code or 'error'}: {message}")
            return
        if code == "conversation_already_has_active_response":
            self._wanted = self._wanted or self._last_create
        elif code == "response_cancel_not_active":
            logger.debug("call %s: response already finished before cancel", self.call_sid)
        elif "shorter than" in message or error.get("param") == "audio_end_ms":
            logger.warning("call %s: truncate refused: %s", self.call_sid, message)
        else:
            logger.warning("call %s: OpenAI error %s: %s", self.call_sid, code, message)
            self._outbox.append(RecordError(f"OpenAI error {code}: {message}"))

    def _on_speech_started(self, event: dict[str, Any], now: float) -> None:
        self._silence_prompts = 0
        self._caller_speaking = True
        if self._closing is not None and self._closing.reason == "silence" and not self._closing.fired:
            self._closing = None  # the caller is back
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
            if self.record_audio:
                self._outbox.append(AgentCut(now + self.playback.delay))
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
        if heard:
            self.interruptions += 1
        for interrupted_id, nbytes in heard.items():
            self._truncate(interrupted_id, nbytes, now)

    def _truncate(self, item_id: str, heard_bytes: int, now: float) -> None:
        audio_end_ms = heard_bytes // BYTES_PER_MS
        item = self.items.get(item_id)
        if item is None or item.session == self.sessions:
            self._outbox.append(SendOpenAI(realtime.truncate(item_id, audio_end_ms)))
        # else: an answer of a lost session, still playing when the caller cut in. The live
        # session never had that item (only its replayed text) and would refuse the truncate.
        if item is None:
            return
        item.truncated = True
        item.heard_ms = audio_end_ms
        item.ended_ms = self._offset_ms(now)
        if response_id := self._item_response.get(item_id, ""):
            self._interrupted.add(response_id)
        self._maybe_finish_agent(item, now)

    def _on_speech_stopped(self, event: dict[str, Any], now: float) -> None:
        self._speech_stopped_at = now  # the clock for the next answer's response latency
        item_id = str(event.get("item_id") or "")
        start, _ = self._speech_ms.get(item_id, (None, None))
        self._speech_ms[item_id] = (start, _int(event.get("audio_end_ms")))

    def _on_committed(self, event: dict[str, Any], now: float) -> None:
        self._caller_speaking = False
        self._uncommitted.clear()
        item = self._item(str(event.get("item_id") or ""), "caller")
        start, end = self._speech_ms.pop(item.item_id, (None, None))
        base = self._first_media_ms or 0
        item.started_ms = None if start is None else base + start
        item.ended_ms = None if end is None else base + end
        if not self.agent.transcription_model:
            self._save(item, "")

    def _on_item_added(self, event: dict[str, Any], now: float) -> None:
        raw = event.get("item")
        if not isinstance(raw, dict) or not raw.get("id") or str(raw["id"]).startswith(REPLAY_PREFIX):
            return
        role = {"user": "caller", "assistant": "agent"}.get(str(raw.get("role")), "other")
        self._item(str(raw["id"]), role)

    def _on_response_created(self, event: dict[str, Any], now: float) -> None:
        response = event.get("response") if isinstance(event.get("response"), dict) else {}
        self._active_response = str(response.get("id") or "response")
        metadata = response.get("metadata") if isinstance(response.get("metadata"), dict) else {}
        if self._closing is not None:
            if metadata.get(CLOSING_METADATA) == self._closing.reason:
                self._closing.goodbye_response = self._active_response
            else:
                # The call is ending: nothing else is said (a prompt of the service's own,
                # an answer to a late noise). Its audio is dropped and it is cancelled.
                self._interrupted.add(self._active_response)

    def _on_output_item_added(self, event: dict[str, Any], now: float) -> None:
        raw = event.get("item") if isinstance(event.get("item"), dict) else {}
        if raw.get("id"):
            role = {"message": "agent", "function_call": "tool"}.get(str(raw.get("type")), "other")
            item = self._item(str(raw["id"]), role)
            self._item_response[item.item_id] = str(event.get("response_id") or self._active_response)

    def _on_audio_delta(self, event: dict[str, Any], now: float) -> None:
        response_id = str(event.get("response_id") or self._active_response or "")
        if response_id in self._interrupted:
            # The caller is talking: this audio must not play. If the session did not
            # cancel the response itself, cancel it once.
            if response_id == self._active_response and response_id not in self._cancel_sent:
                self._cancel_sent.add(response_id)
                self._outbox.append(SendOpenAI(realtime.response_cancel(response_id)))
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
                self._measure_latency(item, now)
            if self.record_audio:
                self._outbox.append(AgentAudio(piece, starts))
            item.sent_bytes += nbytes
            self.frames_out += 1
            self._outbox.append(SendTwilio(twilio_media.media_message(self.stream_sid, piece)))
            self._outbox.append(SendTwilio(twilio_media.mark_message(self.stream_sid, name)))

    def _response_spoke(self, response_id: str) -> bool:
        """Whether any audio of this response was sent to the caller."""
        return any(
            item.sent_bytes
            for item in self.items.values()
            if item.role == "agent" and self._item_response.get(item.item_id) == response_id
        )

    def _measure_latency(self, item: Item, now: float) -> None:
        """First audio of an answer: how long after the caller stopped speaking it left."""
        if self.first_audio_ms is None:
            self.first_audio_ms = self._offset_ms(now)
        if self._speech_stopped_at is not None:
            item.latency_ms = max(0, int((now - self._speech_stopped_at) * 1000))
            self.latencies_ms.append(item.latency_ms)
            self._speech_stopped_at = None

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
        closing = self._closing
        if closing is not None and closing.goodbye_response == response.get("id"):
            closing.wait_for_goodbye = False
        if closing is not None and not closing.fired and closing.tool_response == response.get("id"):
            closing.tool_response = ""
            if not self._response_spoke(str(response.get("id"))):
                # The model called end_call/transfer_call without a word, as real models do
                # whatever the tool description says: the caller must not hear the line drop in
                # silence. Ask for the goodbye (or the transfer notice) now.
                self._wanted = None
                self._ask_goodbye(closing, now)
        if self._wanted and not self._pending_tools and (closing is None or closing.wait_for_goodbye):
            self._last_create, self._wanted = self._wanted, None
            self._outbox.append(SendOpenAI(self._last_create))
        self._maybe_close(now)

    def _on_transcription_completed(self, event: dict[str, Any], now: float) -> None:
        item = self._item(str(event.get("item_id") or ""), "caller")
        add_usage(self.transcription_usage, event.get("usage"))
        item.transcript = str(event.get("transcript") or "").strip()
        item.transcript_done = True
        self._save(item, item.transcript)

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
                    latency_ms=item.latency_ms,
                )
            )
        )

    @property
    def awaiting_transcripts(self) -> bool:
        """Caller speech was committed whose transcription has not arrived yet."""
        if not self.agent.transcription_model:
            return False
        return any(
            i.role == "caller" and not i.saved and i.started_ms is not None for i in self.items.values()
        )

    def summary(self, end: EndCall) -> CallSummary:
        usage = dict(self.usage)
        if self.transcription_usage:
            usage["transcription"] = self.transcription_usage
        return CallSummary(
            reason=end.reason,
            error=end.error,
            usage=usage,
            transferred_to=self.transferred_to,
            reconnects=self.reconnects,
            interruptions=self.interruptions,
            first_audio_ms=self.first_audio_ms,
            latencies_ms=tuple(self.latencies_ms),
        )

    def on_stream_closed(self, now: float) -> None:
        """The caller's side ended the stream (``stop``, or the socket closed under us)."""
        if self._caller_left_at is None:
            self._caller_left_at = now

    def finish(self, now: float) -> None:
        """The call is over: store what is known of every unfinished turn, and cut the
        recording's agent audio where the caller stopped hearing it."""
        delay = self.playback.delay
        # The caller left at Twilio one link delay before we heard of it (audio still queued
        # then was never played); if we end the call, playback stops when our close arrives.
        left = self._caller_left_at
        stream_end = left - delay if left is not None else now + delay
        heard = self.playback.heard_at(stream_end - delay) if self.playback.is_playing else {}
        if self.record_audio:
            self._outbox.append(AgentCut(stream_end))
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
    "response.function_call_arguments.done": CallBridge._on_function_call,
    "input_audio_buffer.timeout_triggered": CallBridge._on_timeout_triggered,
    "conversation.item.input_audio_transcription.completed": CallBridge._on_transcription_completed,
    "conversation.item.input_audio_transcription.failed": CallBridge._on_transcription_failed,
}
