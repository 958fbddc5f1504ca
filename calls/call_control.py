"""What the agent does to the call itself, as part of the sans-IO bridge: tools (and the
built-in ``end_call`` and ``transfer_call``), ending the call once the agent has spoken,
the time limit, the silent caller, key presses, and replacing the OpenAI session before its
60 minutes are up. A mixin of ``calls.bridge.CallBridge``: it works on the bridge's state
(declared below) and emits the same actions, and is tested through it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from calls import realtime
from calls.bridge_actions import (
    Action,
    EndCall,
    RecordError,
    RecycleSession,
    RunTool,
    SaveToolCall,
    SaveTurn,
    SendOpenAI,
    ToolCallRecord,
    Transfer,
    TurnRecord,
)
from calls.realtime import AgentConfig

if TYPE_CHECKING:
    from calls.bridge import Item
    from calls.playback import Playback

logger = logging.getLogger(__name__)

# Key presses are gathered until a pause (or '#') so "1234#" reaches the model as one turn.
DTMF_PAUSE = 1.5
# How long the agent has to wrap up before the time limit, and the grace after it.
WRAP_UP_SECONDS = 20
HARD_STOP_GRACE = 10
# A goodbye that never finishes playing (marks lost) does not keep the call open forever.
CLOSING_DEADLINE = 20.0
TRANSFER_STOP_DEADLINE = 10.0
# How long past ``session_max_seconds`` to wait for a quiet moment before recycling anyway.
SESSION_RECYCLE_GRACE = 60.0
# Tags the response.create of a goodbye we asked for, so its response can be recognised.
CLOSING_METADATA = "voiceagent_closing"
# What the agent is asked to say when it ends or transfers the call without a word.
GOODBYE = {
    "agent_ended": "You have ended the call. Say a brief, polite goodbye to the caller now.",
    "transferred": "Tell the caller in one short sentence that you are transferring them now.",
}
# While nothing plays, re-measure the round trip to Twilio this often.
PROBE_INTERVAL = 2.0


@dataclass(slots=True)
class Closing:
    """The call is to end once the agent has finished speaking (or at ``deadline``)."""

    reason: str
    deadline: float
    transfer_to: str = ""
    wait_for_goodbye: bool = False  # a goodbye was asked for and has not been said yet
    goodbye_response: str = ""
    fired: bool = False
    # The response whose tool call (end_call, transfer_call) started the closing, until it is
    # done: if it said nothing, a goodbye is asked for.
    tool_response: str = ""


class CallControl:
    # The bridge state this part reads and writes (set up in CallBridge.__init__).
    agent: AgentConfig
    call_sid: str
    started_at: float
    live: bool
    ended: EndCall | None
    playback: Playback
    items: dict[str, Item]
    _outbox: list[Action]
    _active_response: str | None
    _pending_tools: set[str]
    _closing: Closing | None
    _transferred_to: str
    _transfer_started: float
    _dtmf: list[str]
    _dtmf_last: float
    _dtmf_count: int
    _silence_prompts: int
    _wrap_up_sent: bool
    _respond_after_replay: bool
    _session_live_since: float
    _recycle_requested: bool

    # Provided by CallBridge.
    def _item(self, item_id: str, role: str) -> Item:
        raise NotImplementedError

    def _request_response(
        self, instructions: str | None = None, metadata: dict[str, str] | None = None, *, tools: bool = True
    ) -> None:
        raise NotImplementedError

    def _end(self, reason: str, error: str = "", *, hang_up: bool = False) -> None:
        raise NotImplementedError

    def _offset_ms(self, now: float) -> int:
        raise NotImplementedError

    def _probe(self, now: float) -> None:
        raise NotImplementedError

    # -- tools ----------------------------------------------------------------------------

    def _on_function_call(self, event: dict[str, Any], now: float) -> None:
        call_id = str(event.get("call_id") or "")
        name = str(event.get("name") or "")
        arguments = str(event.get("arguments") or "")
        item = self._item(str(event.get("item_id") or call_id), "tool")
        if not call_id:
            return
        item.call_id, item.tool_name, item.arguments = call_id, name, arguments
        if name not in self.agent.tool_names:
            self._tool_done(item.position, name, call_id, arguments, error=f"unknown tool {name!r}")
            self._request_response()
        elif name == "end_call":
            self._tool_done(item.position, name, call_id, arguments, result={"ok": True})
            self._close_after_speaking("agent_ended", now, tool_response=self._response_of(event))
        elif name == "transfer_call":
            self._on_transfer_call(item.position, call_id, arguments, now, self._response_of(event))
        else:
            self._pending_tools.add(call_id)
            self._outbox.append(RunTool(call_id, name, arguments, item.position))

    def on_tool_result(self, call_id: str, output: str, record: ToolCallRecord, now: float) -> None:
        """A function tool finished (or failed): give the model its output and let it speak."""
        if call_id not in self._pending_tools:
            return
        self._pending_tools.discard(call_id)
        self._remember_output(call_id, output)
        self._outbox.append(SaveToolCall(record))
        if not self.live:
            # The session was lost while the tool ran: the next one gets the output with the
            # rest of the conversation, then answers.
            self._respond_after_replay = True
            return
        self._outbox.append(SendOpenAI(realtime.function_output(call_id, output)))
        if not self._pending_tools and self._closing is None:
            self._request_response()

    def _tool_done(
        self, position: int, name: str, call_id: str, arguments: str, *, result: Any = None, error: str = ""
    ) -> None:
        output = realtime.dumps({"error": error} if error else result)
        self._remember_output(call_id, output)
        self._outbox.append(
            SaveToolCall(ToolCallRecord(position, name, call_id, arguments, result, error, 0))
        )
        self._outbox.append(SendOpenAI(realtime.function_output(call_id, output)))

    def _response_of(self, event: dict[str, Any]) -> str:
        return str(event.get("response_id") or self._active_response or "")

    def _on_transfer_call(
        self, position: int, call_id: str, arguments: str, now: float, response_id: str
    ) -> None:
        destinations = self.agent.transfer_destinations
        try:
            requested = realtime.json_object(arguments).get("destination") or ""
        except ValueError:
            requested = ""
        if not destinations:
            error = "no transfer number is configured for this agent"
        elif requested and requested not in destinations:
            error = f"{requested!r} is not an allowed destination"
        else:
            number = requested or destinations[0]
            self._tool_done(position, "transfer_call", call_id, arguments, result={"transferring_to": number})
            self._close_after_speaking("transferred", now, transfer_to=number, tool_response=response_id)
            return
        self._tool_done(position, "transfer_call", call_id, arguments, error=error)
        self._request_response()

    def _remember_output(self, call_id: str, output: str) -> None:
        """Kept so a replacement OpenAI session can be told what the tool returned."""
        for item in self.items.values():
            if item.call_id == call_id:
                item.tool_output = output
                return

    def on_transfer_result(self, ok: bool, error: str, now: float) -> None:
        if ok:
            assert self._closing is not None
            self._transferred_to = self._closing.transfer_to
            self._transfer_started = now
            return
        # The caller stays with the agent, who explains.
        self._closing = None
        self._outbox.append(RecordError(f"Transfer failed: {error}"))
        self._outbox.append(
            SendOpenAI(
                realtime.text_item(
                    "The transfer failed. Apologise briefly and offer to keep helping.", role="system"
                )
            )
        )
        self._request_response()

    @property
    def transferred_to(self) -> str:
        """The number the call was (or is being) transferred to."""
        if self._transferred_to:
            return self._transferred_to
        closing = self._closing
        return closing.transfer_to if closing is not None and closing.fired else ""

    # -- ending the call, limits, silence, key presses --------------------------------------

    def _close_after_speaking(
        self, reason: str, now: float, *, transfer_to: str = "", say: str = "", tool_response: str = ""
    ) -> None:
        current = self._closing
        if current is not None and (current.fired or (current.wait_for_goodbye and not transfer_to)):
            # Already ending, with a goodbye on its way (the model may call end_call in the
            # very goodbye we asked for): that goodbye still has to be heard.
            return
        self._closing = Closing(reason, now + CLOSING_DEADLINE, transfer_to, tool_response=tool_response)
        if say:
            self._ask_goodbye(self._closing, now, say)
        self._maybe_close(now)

    def _ask_goodbye(self, closing: Closing, now: float, say: str = "") -> None:
        """A system note, then a response tagged as this closing's goodbye, with no tools."""
        closing.wait_for_goodbye = True
        closing.deadline = max(closing.deadline, now + CLOSING_DEADLINE)
        note = say or GOODBYE.get(closing.reason, GOODBYE["agent_ended"])
        self._outbox.append(SendOpenAI(realtime.text_item(note, role="system")))
        self._request_response(metadata={CLOSING_METADATA: closing.reason}, tools=False)

    def _maybe_close(self, now: float) -> None:
        closing = self._closing
        if closing is None or closing.fired:
            return
        speaking = self._active_response is not None or self.playback.is_playing or closing.wait_for_goodbye
        if speaking and now < closing.deadline:
            return
        closing.fired = True
        if closing.transfer_to:
            self._outbox.append(Transfer(closing.transfer_to))
        else:
            self._end(closing.reason, hang_up=True)

    def _on_timeout_triggered(self, event: dict[str, Any], now: float) -> None:
        """The session's idle timeout fired: the service is prompting the silent caller."""
        self._silence_prompts += 1
        if self._silence_prompts <= self.agent.max_silence_prompts or self._closing is not None:
            return
        # Enough prompting: after the service's prompt, a goodbye, then hang up.
        self._close_after_speaking(
            "silence",
            now,
            say="The caller has not answered for a while. Say a brief, polite goodbye now.",
        )

    def _on_dtmf(self, digit: str, now: float) -> None:
        self._dtmf.append(digit)
        self._dtmf_last = now
        if digit == "#":
            self._flush_dtmf(now)

    def _flush_dtmf(self, now: float) -> None:
        digits = "".join(self._dtmf)
        self._dtmf.clear()
        self._dtmf_count += 1
        item = self._item(f"dtmf_{self._dtmf_count}", "caller")
        item.started_ms = item.ended_ms = self._offset_ms(now)
        item.saved = item.transcript_done = True
        noun = "key" if len(digits) == 1 else "keys"
        item.transcript = f"[The caller pressed the {noun} {digits} on their phone keypad.]"
        self._outbox.append(
            SaveTurn(
                TurnRecord(
                    item.position,
                    "caller",
                    f"Pressed {digits}",
                    item.item_id,
                    item.started_ms,
                    item.ended_ms,
                    kind="dtmf",
                )
            )
        )
        self._outbox.append(SendOpenAI(realtime.text_item(item.transcript, item_id=item.item_id)))
        self._request_response()

    def on_tick(self, now: float) -> None:
        """Called a few times a second: key-press pauses, the time limit, stuck goodbyes,
        and round-trip probes while nothing is playing."""
        if not self.playback.pending and now - self.playback.last_probe >= PROBE_INTERVAL:
            self._probe(now)
        if self._dtmf and now - self._dtmf_last >= DTMF_PAUSE:
            self._flush_dtmf(now)
        if self.live and self.ended is None:
            elapsed = now - self.started_at
            limit = self.agent.max_call_seconds
            wrap_up = min(WRAP_UP_SECONDS, limit / 4)
            if elapsed >= limit + HARD_STOP_GRACE:
                self._end("time_limit", hang_up=True)
            elif elapsed >= limit - wrap_up and not self._wrap_up_sent:
                self._wrap_up_sent = True
                self._close_after_speaking(
                    "time_limit",
                    now,
                    say="The call has reached its time limit. Tell the caller politely that you "
                    "have to end the call now, and say goodbye.",
                )
        if self._transferred_to and now - self._transfer_started > TRANSFER_STOP_DEADLINE:
            self._end("transferred")
        self._maybe_recycle(now)
        self._maybe_close(now)

    def _maybe_recycle(self, now: float) -> None:
        """OpenAI ends a session at 60 minutes. Past ``session_max_seconds`` the session is
        replaced at the first quiet moment (nobody speaking, no tool running), where the
        switch cannot be heard; past the limit minus one minute, even if it is not quiet."""
        age = now - self._session_live_since
        limit = self.agent.session_max_seconds
        if not self.live or self._recycle_requested or self.ended is not None or age < limit:
            return
        quiet = self._active_response is None and not self.playback.is_playing and not self._pending_tools
        if quiet or age >= limit + SESSION_RECYCLE_GRACE:
            self._recycle_requested = True
            self._outbox.append(RecycleSession())
