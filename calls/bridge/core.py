"""The call bridge: a sans-IO state machine between Twilio Media Streams and OpenAI Realtime.

Events go in (a parsed Twilio frame, a parsed OpenAI server event, the moment OpenAI
connects, a tick); each ``on_*`` method returns the actions they lead to (text for either
socket, a turn to store, the end of the call), so no caller can forget to carry them out.
No sockets, no ORM, no clock: the consumer passes ``now`` (monotonic seconds) and performs
the actions. Tests drive it directly.

``CallBridge`` owns audio both ways, barge-in, transcripts and the OpenAI session's life;
what the agent does to the call itself (tools, transfer, ending, limits, keys) is its
``CallControl``'s; both work on one ``Conversation``.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from typing import Any

from calls import realtime, twilio_media
from calls.audio import BYTES_PER_MS, base64_size, split_base64
from calls.bridge import replay
from calls.bridge.actions import (
    Action,
    AgentAudio,
    AgentCut,
    CallSummary,
    EndCall,
    RecordError,
    SendTwilio,
    ToolCallRecord,
)
from calls.bridge.control import CallControl
from calls.bridge.conversation import Conversation, Item, ItemRole
from calls.bridge.playback import Playback
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
# Conversation items by who speaks (conversation.item.added) or what a response outputs.
_ROLE_OF_SPEAKER: dict[str, ItemRole] = {"user": "caller", "assistant": "agent"}
_ROLE_OF_OUTPUT: dict[str, ItemRole] = {"message": "agent", "function_call": "tool"}
# While nothing plays, re-measure the round trip to Twilio this often.
PROBE_INTERVAL = 2.0


def add_usage(total: dict[str, Any], usage: Mapping[str, Any]) -> None:
    """Sum token counts field by field (nested details included)."""
    for key, value in usage.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            total[key] = total.get(key, 0) + value
        elif isinstance(value, dict):
            add_usage(total.setdefault(key, {}), value)


class CallBridge:
    """One call's bridge. Every public ``on_*`` method (and ``start``, ``finish``) returns the
    actions it decided, in order."""

    def __init__(
        self, agent: AgentConfig, *, stream_sid: str, call_sid: str, now: float, frames_per_append: int = 1
    ) -> None:
        self.agent = agent
        # Twilio's 20 ms frames sent to OpenAI per input_audio_buffer.append (OPENAI_AUDIO_APPEND_MS).
        self.frames_per_append = frames_per_append
        self._unsent: list[str] = []
        self.stream_sid = stream_sid
        self.call_sid = call_sid
        self.conversation = Conversation(started_at=now)
        self.playback = Playback()
        self.control = CallControl(agent, self.conversation, self.playback, now=now)
        self.usage: dict[str, Any] = {}
        self.transcription_usage: dict[str, Any] = {}
        self.frames_in = 0
        self.frames_out = 0
        self._early: deque[str] = deque(maxlen=MAX_EARLY_FRAMES)
        # Caller audio of the utterance in progress (not yet committed), for a new session.
        self._uncommitted: deque[str] = deque(maxlen=MAX_EARLY_FRAMES)
        self._caller_speaking = False
        self._first_media_ms: int | None = None
        self._cancel_sent: set[str] = set()
        self._speech_ms: dict[str, tuple[int | None, int | None]] = {}
        self.record_audio = False  # emit AgentAudio/AgentCut for a recording
        self.interruptions = 0
        self.first_audio_ms: int | None = None
        self.latencies_ms: list[int] = []
        self._speech_stopped_at: float | None = None
        self.reconnects = 0  # OpenAI sessions lost (and replaced) during the call
        self._replayed = 0
        self._caller_left_at: float | None = None

    # -- what others read ----------------------------------------------------------------

    @property
    def items(self) -> dict[str, Item]:
        return self.conversation.items

    @property
    def ended(self) -> EndCall | None:
        return self.conversation.ended

    @property
    def session_ready(self) -> bool:
        """The OpenAI session is configured as we asked: audio flows to it."""
        return self.conversation.session_ready

    @property
    def sessions(self) -> int:
        """OpenAI sessions opened for this call."""
        return self.conversation.sessions

    @property
    def transferred_to(self) -> str:
        return self.control.transferred_to

    @property
    def awaiting_transcripts(self) -> bool:
        """Caller speech was committed whose transcription has not arrived yet."""
        if not self.agent.transcription_model:
            return False
        return any(
            i.role == "caller" and not i.saved and i.started_ms is not None for i in self.items.values()
        )

    # -- plumbing -----------------------------------------------------------------------

    def _probe(self, now: float) -> None:
        """A mark with nothing before it measures the round trip to Twilio right away."""
        name = self.playback.probe(now)
        self.conversation.emit(SendTwilio(twilio_media.mark_message(self.stream_sid, name)))

    def start(self, now: float) -> list[Action]:
        """The stream is set up: measure the round trip to Twilio at once."""
        self._probe(now)
        return self.conversation.take()

    # -- OpenAI connection ----------------------------------------------------------------

    def on_openai_connected(self, *, configured: bool = False) -> list[Action]:
        """A session is open. ``configured``: it was opened before the call's media socket
        (calls/preconnect.py) and already sent this agent's session.update; sending it
        again would only cost a second round of session.updated."""
        conversation = self.conversation
        conversation.sessions += 1
        self.control.on_session_opened()
        if not configured:
            conversation.send_openai(realtime.dumps(realtime.session_update(self.agent)))
        return conversation.take()

    def on_openai_lost(self, now: float, reason: str, *, planned: bool = False) -> list[Action]:
        """The OpenAI session is gone (dropped, or replaced on purpose). Until the next one is
        live, caller audio is kept; what Twilio is playing plays on."""
        conversation = self.conversation
        conversation.session_ready = False
        active, conversation.active_response = conversation.active_response, None
        conversation.wanted = None
        # Tools still running keep running: their results are given to the next session.
        for item in conversation.in_order():
            being_said = active is not None and conversation.item_response.get(item.item_id) == active
            if item.role == "agent" and not item.transcript_done and being_said:
                # No more of this answer will come; what was sent plays on and is stored.
                item.cut_off = not planned
                item.transcript = "".join(item.transcript_parts)
                item.transcript_done = item.audio_done = True
                self._maybe_finish_agent(item)
            elif item.role == "caller" and not item.saved and item.started_ms is not None:
                # Its transcription belonged to the lost session and will never come.
                item.words_lost = True
                conversation.save(item, "")
        if self._caller_speaking:
            # The caller was mid-sentence: the lost session heard the start of it. The next
            # one hears the whole sentence again, from just before it began.
            self._early.extend(self._uncommitted)
        self._caller_speaking = False
        self._uncommitted.clear()
        self._unsent.clear()  # in _uncommitted too: replayed with it if the caller was speaking
        if not planned:
            self.reconnects += 1
            conversation.emit(RecordError(f"OpenAI session lost ({reason}); reconnecting"))
        return conversation.take()

    def _go_live(self, now: float) -> None:
        conversation = self.conversation
        conversation.session_ready = True
        self.control.on_session_ready(now)
        if not self.playback.pending:
            self._probe(now)  # the start-up probe is back: measure again, now the loop is calmer
        if conversation.sessions > 1:
            # A new session knows nothing: give it the conversation so far, as text.
            self._replay_conversation()
        for payload in self._early:
            conversation.send_openai(realtime.audio_append(payload))
        self._early.clear()
        if conversation.sessions == 1 and self.agent.greeting:
            conversation.request_response(realtime.greeting_instructions(self.agent.greeting))

    def _replay_conversation(self) -> None:
        conversation, control = self.conversation, self.control
        turns = [turn for item in conversation.in_order() if (turn := item.replay_turn()) is not None]
        events = replay.replay_items(turns, first_id=self._replayed + 1)
        self._replayed += len(events)
        for event in events:
            conversation.send_openai(event)
        # The drop may have eaten the answer to the caller's last words (or to a tool's
        # output): ask for it rather than leave the caller in silence.
        unanswered = bool(turns) and (
            turns[-1].role == "caller" or (turns[-1].role == "tool" and turns[-1].tool_output is not None)
        )
        if (
            (unanswered or control.respond_after_replay)
            and not control.pending_tools
            and control.closing is None
        ):
            conversation.request_response()
        control.respond_after_replay = False

    # -- Twilio -> OpenAI -------------------------------------------------------------------

    def on_twilio(self, event: twilio_media.TwilioEvent, now: float) -> list[Action]:
        conversation = self.conversation
        if isinstance(event, twilio_media.Media):
            self.frames_in += 1
            if self._first_media_ms is None:
                self._first_media_ms = event.timestamp_ms
            if conversation.session_ready:
                if self.frames_per_append == 1:
                    conversation.send_openai(realtime.audio_append(event.payload))
                else:
                    unsent = self._unsent
                    unsent.append(event.payload)
                    if len(unsent) >= self.frames_per_append:
                        conversation.send_openai(realtime.audio_append(realtime.joined_payloads(unsent)))
                        unsent.clear()
                uncommitted = self._uncommitted
                uncommitted.append(event.payload)
                if not self._caller_speaking and len(uncommitted) > PREFIX_FRAMES:
                    uncommitted.popleft()
            else:
                self._early.append(event.payload)
        elif isinstance(event, twilio_media.Mark):
            self._on_mark(event.name, now)
        elif isinstance(event, twilio_media.Stop):
            self._stream_closed(now)
            # After a transfer Twilio stops the stream itself: that is no hang-up. The stop
            # may even overtake the REST response confirming the redirect.
            conversation.end("transferred" if self.transferred_to else "caller_hung_up")
        elif isinstance(event, twilio_media.Dtmf):
            self.control.on_key(event.digit, now)
        # connected/start are handled by the consumer before the bridge exists.
        return conversation.take()

    def _on_mark(self, name: str, now: float) -> None:
        chunk = self.playback.echo(name, now)
        if chunk is None or not chunk.item_id:
            return
        item = self.items.get(chunk.item_id)
        if item is not None:
            item.ended_ms = self.conversation.offset_ms(now - self.playback.delay)
            self._maybe_finish_agent(item)
        self.control.maybe_close(now)

    # -- OpenAI -> Twilio -------------------------------------------------------------------

    def on_openai(self, event: realtime.ServerEvent, now: float) -> list[Action]:
        match event:  # the audio delta first: it is most of the traffic
            case realtime.AudioDelta():
                self._on_audio_delta(event, now)
            case realtime.AudioDone():
                self._on_audio_done(event.item_id)
            case realtime.TranscriptDelta():
                item = self.items.get(event.item_id)
                if item is not None:
                    item.transcript_parts.append(event.delta)
            case realtime.TranscriptDone():
                self._on_transcript_done(event)
            case realtime.ResponseCreated():
                self._on_response_created(event)
            case realtime.OutputItemAdded():
                self._on_output_item_added(event)
            case realtime.ResponseDone():
                self._on_response_done(event, now)
            case realtime.SpeechStarted():
                self._on_speech_started(event, now)
            case realtime.SpeechStopped():
                self._on_speech_stopped(event, now)
            case realtime.AudioCommitted():
                self._on_committed(event)
            case realtime.ItemAdded():
                self._on_item_added(event)
            case realtime.TranscriptionCompleted():
                self._on_transcription_completed(event)
            case realtime.TranscriptionFailed():
                self._on_transcription_failed(event)
            case realtime.FunctionCall():
                self.control.on_function_call(event, now)
            case realtime.IdleTimeout():
                self.control.on_idle_timeout(now)
            case realtime.SessionUpdated():
                self._on_session_updated(event, now)
            case realtime.ServerError():
                self._on_error(event)
            case realtime.Unknown():
                logger.debug("call %s: ignoring OpenAI event %s", self.call_sid, event.type)
            case realtime.Malformed():
                logger.warning(
                    "call %s: malformed OpenAI event %s: %s", self.call_sid, event.type or "?", event.reason
                )
        return self.conversation.take()

    def _on_session_updated(self, event: realtime.SessionUpdated, now: float) -> None:
        if self.conversation.session_ready:
            return
        if event.problems:
            self.conversation.end("error", "OpenAI session not as configured: " + "; ".join(event.problems))
            return
        self._go_live(now)

    def _on_error(self, error: realtime.ServerError) -> None:
        conversation = self.conversation
        code, message = error.code, error.message
        if not conversation.session_ready:
            conversation.end("error", f"OpenAI refused the session: {code or 'error'}: {message}")
            return
        if code == "conversation_already_has_active_response":
            conversation.wanted = conversation.wanted or conversation.last_create
        elif code == "response_cancel_not_active":
            logger.debug("call %s: response already finished before cancel", self.call_sid)
        elif "shorter than" in message or error.param == "audio_end_ms":
            logger.warning("call %s: truncate refused: %s", self.call_sid, message)
        else:
            logger.warning("call %s: OpenAI error %s: %s", self.call_sid, code, message)
            conversation.emit(RecordError(f"OpenAI error {code}: {message}"))

    def _on_speech_started(self, event: realtime.SpeechStarted, now: float) -> None:
        conversation = self.conversation
        self.control.on_caller_speaking()
        self._caller_speaking = True
        if event.item_id:
            self._speech_ms[event.item_id] = (event.audio_start_ms, None)
        active = conversation.active_response
        if active is not None:
            conversation.interrupted.add(active)
        # Barge-in: stop playback first, then tell the model what the caller really heard.
        heard: dict[str, int] = {}
        if self.playback.is_playing:
            heard = self.playback.clear(now)
            conversation.emit(SendTwilio(twilio_media.clear_message(self.stream_sid)))
            if self.record_audio:
                conversation.emit(AgentCut(now + self.playback.delay))
        # An answer still being generated is cut short even if its audio already played out
        # (a model slower than real time leaves Twilio's buffer empty between deltas).
        if active is not None:
            for item in self.items.values():
                if (
                    item.role == "agent"
                    and item.sent_bytes
                    and not item.truncated
                    and conversation.item_response.get(item.item_id) == active
                ):
                    heard.setdefault(item.item_id, self.playback.confirmed.get(item.item_id, 0))
        if heard:
            self.interruptions += 1
        for interrupted_id, nbytes in heard.items():
            self._truncate(interrupted_id, nbytes, now)

    def _truncate(self, item_id: str, heard_bytes: int, now: float) -> None:
        conversation = self.conversation
        audio_end_ms = heard_bytes // BYTES_PER_MS
        item = self.items.get(item_id)
        if item is None or item.session == conversation.sessions:
            conversation.send_openai(realtime.truncate(item_id, audio_end_ms))
        # else: an answer of a lost session, still playing when the caller cut in. The live
        # session never had that item (only its replayed text) and would refuse the truncate.
        if item is None:
            return
        item.truncated = True
        item.heard_ms = audio_end_ms
        item.ended_ms = conversation.offset_ms(now)
        if response_id := conversation.item_response.get(item_id, ""):
            conversation.interrupted.add(response_id)
        self._maybe_finish_agent(item)

    def _on_speech_stopped(self, event: realtime.SpeechStopped, now: float) -> None:
        self._speech_stopped_at = now  # the clock for the next answer's response latency
        start, _ = self._speech_ms.get(event.item_id, (None, None))
        self._speech_ms[event.item_id] = (start, event.audio_end_ms)

    def _on_committed(self, event: realtime.AudioCommitted) -> None:
        self._caller_speaking = False
        self._uncommitted.clear()
        item = self.conversation.item(event.item_id, "caller")
        start, end = self._speech_ms.pop(item.item_id, (None, None))
        base = self._first_media_ms or 0
        item.started_ms = None if start is None else base + start
        item.ended_ms = None if end is None else base + end
        if not self.agent.transcription_model:
            self.conversation.save(item, "")

    def _on_item_added(self, event: realtime.ItemAdded) -> None:
        if event.item_id.startswith(REPLAY_PREFIX):
            return
        self.conversation.item(event.item_id, _ROLE_OF_SPEAKER.get(event.role, "other"))

    def _on_response_created(self, event: realtime.ResponseCreated) -> None:
        response_id = event.response_id or "response"
        self.conversation.active_response = response_id
        self.control.on_response_created(response_id, event.metadata)

    def _on_output_item_added(self, event: realtime.OutputItemAdded) -> None:
        conversation = self.conversation
        item = conversation.item(event.item_id, _ROLE_OF_OUTPUT.get(event.item_type, "other"))
        conversation.item_response[item.item_id] = event.response_id or str(conversation.active_response)

    def _on_audio_delta(self, event: realtime.AudioDelta, now: float) -> None:
        conversation = self.conversation
        response_id = event.response_id or conversation.active_response or ""
        if response_id in conversation.interrupted:
            # The caller is talking: this audio must not play. If the session did not
            # cancel the response itself, cancel it once.
            if response_id == conversation.active_response and response_id not in self._cancel_sent:
                self._cancel_sent.add(response_id)
                conversation.send_openai(realtime.response_cancel(response_id))
            return
        item_id = event.item_id
        item = conversation.item(item_id, "agent")
        conversation.item_response.setdefault(item_id, response_id)
        emit = conversation.emit
        for piece in split_base64(event.delta, CHUNK_CHARS):
            nbytes = base64_size(piece)
            name, starts = self.playback.send(item_id, nbytes, now)
            if item.started_ms is None:
                item.started_ms = conversation.offset_ms(starts)
                self._measure_latency(item, now)
            if self.record_audio:
                emit(AgentAudio(piece, starts))
            item.sent_bytes += nbytes
            self.frames_out += 1
            emit(SendTwilio(twilio_media.media_message(self.stream_sid, piece)))
            emit(SendTwilio(twilio_media.mark_message(self.stream_sid, name)))

    def _measure_latency(self, item: Item, now: float) -> None:
        """First audio of an answer: how long after the caller stopped speaking it left."""
        if self.first_audio_ms is None:
            self.first_audio_ms = self.conversation.offset_ms(now)
        if self._speech_stopped_at is not None:
            item.latency_ms = max(0, int((now - self._speech_stopped_at) * 1000))
            self.latencies_ms.append(item.latency_ms)
            self._speech_stopped_at = None

    def _on_audio_done(self, item_id: str) -> None:
        item = self.items.get(item_id)
        if item is not None:
            item.audio_done = True
            self._maybe_finish_agent(item)

    def _on_transcript_done(self, event: realtime.TranscriptDone) -> None:
        item = self.conversation.item(event.item_id, "agent")
        item.transcript = event.transcript or "".join(item.transcript_parts)
        item.transcript_done = True
        self._maybe_finish_agent(item)

    def _on_response_done(self, event: realtime.ResponseDone, now: float) -> None:
        conversation = self.conversation
        add_usage(self.usage, event.usage)
        conversation.active_response = None
        for item_id in event.output_item_ids:
            item = self.items.get(item_id)
            if item is not None and item.role == "agent":
                item.audio_done = True
                if not item.transcript_done:
                    item.transcript = "".join(item.transcript_parts)
                    item.transcript_done = True
                self._maybe_finish_agent(item)
        self.control.on_response_done(event.response_id, now)
        if self.control.may_respond:
            conversation.send_wanted()
        self.control.maybe_close(now)

    def _on_transcription_completed(self, event: realtime.TranscriptionCompleted) -> None:
        item = self.conversation.item(event.item_id, "caller")
        add_usage(self.transcription_usage, event.usage)
        item.transcript = event.transcript
        item.transcript_done = True
        self.conversation.save(item, item.transcript)

    def _on_transcription_failed(self, event: realtime.TranscriptionFailed) -> None:
        item = self.conversation.item(event.item_id, "caller")
        logger.warning("call %s: caller transcription failed: %s", self.call_sid, event.message)
        self.conversation.save(item, "")

    # -- what the agent does to the call ----------------------------------------------------

    def on_tool_result(self, call_id: str, output: str, record: ToolCallRecord, now: float) -> list[Action]:
        """A function tool finished (or failed): give the model its output and let it speak."""
        self.control.on_tool_result(call_id, output, record)
        return self.conversation.take()

    def on_transfer_result(self, ok: bool, error: str, now: float) -> list[Action]:
        self.control.on_transfer_result(ok, error, now)
        return self.conversation.take()

    def on_tick(self, now: float) -> list[Action]:
        """Called a few times a second: round-trip probes while nothing is playing, then
        the control's timers (key-press pauses, the time limit, stuck goodbyes)."""
        if not self.playback.pending and now - self.playback.last_probe >= PROBE_INTERVAL:
            self._probe(now)
        self.control.on_tick(now)
        return self.conversation.take()

    # -- turns ----------------------------------------------------------------------------

    def _maybe_finish_agent(self, item: Item) -> None:
        """An agent turn is complete once its transcript is known and the caller has heard
        all of it (every mark echoed) or was cut off by a barge-in."""
        if item.saved or item.role != "agent" or not item.transcript_done:
            return
        if item.truncated:
            self.conversation.save(item, item.transcript)
            return
        heard_all = self.playback.confirmed.get(item.item_id, 0) >= item.sent_bytes
        if item.audio_done and heard_all:
            self.conversation.save(item, item.transcript)

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

    def _stream_closed(self, now: float) -> None:
        if self._caller_left_at is None:
            self._caller_left_at = now

    def on_stream_closed(self, now: float) -> list[Action]:
        """The caller's side ended the stream (``stop``, or the socket closed under us)."""
        self._stream_closed(now)
        return self.conversation.take()

    def finish(self, now: float) -> list[Action]:
        """The call is over: store what is known of every unfinished turn, and cut the
        recording's agent audio where the caller stopped hearing it."""
        conversation = self.conversation
        delay = self.playback.delay
        # The caller left at Twilio one link delay before we heard of it (audio still queued
        # then was never played); if we end the call, playback stops when our close arrives.
        left = self._caller_left_at
        stream_end = left - delay if left is not None else now + delay
        heard = self.playback.heard_at(stream_end - delay) if self.playback.is_playing else {}
        if self.record_audio:
            conversation.emit(AgentCut(stream_end))
        for item in conversation.in_order():
            if item.saved or item.role not in ("caller", "agent"):
                continue
            if item.role == "agent":
                if item.item_id in heard and heard[item.item_id] < item.sent_bytes:
                    item.truncated = True
                    item.heard_ms = heard[item.item_id] // BYTES_PER_MS
                text = item.transcript or "".join(item.transcript_parts)
                if not text and not item.sent_bytes:
                    continue
                conversation.save(item, text)
            elif item.item_id and (item.started_ms is not None or item.transcript):
                conversation.save(item, item.transcript)
        return conversation.take()
