"""What the agent does to the call itself, as part of the sans-IO bridge: tools (and the
built-in ``end_call`` and ``transfer_call``), ending the call once the agent has spoken,
the time limit, the silent caller, key presses, and replacing the OpenAI session before its
60 minutes are up. ``CallControl`` owns that state; the bridge holds one, tells it what
happened and reads its answers. Both write to the shared ``Conversation``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from calls import realtime
from calls.bridge.actions import (
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
from calls.bridge.conversation import Conversation
from calls.bridge.playback import Playback
from calls.realtime import AgentConfig

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


# Why the agent ends the call: the end reasons a closing can carry.
ClosingReason = Literal["agent_ended", "transferred", "time_limit", "silence"]


@dataclass(slots=True)
class Closing:
    """The call is to end once the agent has finished speaking (or at ``deadline``)."""

    reason: ClosingReason
    deadline: float
    transfer_to: str = ""
    wait_for_goodbye: bool = False  # a goodbye was asked for and has not been said yet
    goodbye_response: str = ""
    fired: bool = False
    # The response whose tool call (end_call, transfer_call) started the closing, until it is
    # done: if it said nothing, a goodbye is asked for.
    tool_response: str = ""


class KeyPresses:
    """Key presses gathered until a pause or ``#``, so "1234#" reaches the model as one turn."""

    def __init__(self) -> None:
        self.digits: list[str] = []
        self.last = 0.0
        self.turns = 0  # how many were handed over

    def press(self, digit: str, now: float) -> str | None:
        """The digits to hand over now (``#`` ends them), else None."""
        self.digits.append(digit)
        self.last = now
        return self.take() if digit == "#" else None

    def paused(self, now: float) -> str | None:
        """The digits to hand over because the caller stopped pressing, else None."""
        if self.digits and now - self.last >= DTMF_PAUSE:
            return self.take()
        return None

    def take(self) -> str:
        digits = "".join(self.digits)
        self.digits.clear()
        self.turns += 1
        return digits


class CallControl:
    def __init__(
        self, agent: AgentConfig, conversation: Conversation, playback: Playback, *, now: float
    ) -> None:
        self.agent = agent
        self.conversation = conversation
        self.playback = playback
        self.pending_tools: set[str] = set()  # call ids of function tools running
        self.closing: Closing | None = None
        self._transferred_to = ""
        self._transfer_started = 0.0
        self.keys = KeyPresses()
        self._silence_prompts = 0
        self._wrap_up_sent = False
        # A tool finished while no session was live: the next one is to answer after replay.
        self.respond_after_replay = False
        self._session_live_since = now
        self._recycle_requested = False

    @property
    def may_respond(self) -> bool:
        """Whether a response asked for while another was active may be sent now."""
        closing = self.closing
        return not self.pending_tools and (closing is None or closing.wait_for_goodbye)

    # -- the OpenAI session's age -------------------------------------------------------------

    def on_session_opened(self) -> None:
        self._recycle_requested = False

    def on_session_ready(self, now: float) -> None:
        self._session_live_since = now

    def _maybe_recycle(self, now: float) -> None:
        """OpenAI ends a session at 60 minutes. Past ``session_max_seconds`` the session is
        replaced at the first quiet moment (nobody speaking, no tool running), where the
        switch cannot be heard; past the limit minus one minute, even if it is not quiet."""
        conversation = self.conversation
        age = now - self._session_live_since
        limit = self.agent.session_max_seconds
        if (
            not conversation.session_ready
            or self._recycle_requested
            or conversation.ended is not None
            or age < limit
        ):
            return
        quiet = (
            conversation.active_response is None and not self.playback.is_playing and not self.pending_tools
        )
        if quiet or age >= limit + SESSION_RECYCLE_GRACE:
            self._recycle_requested = True
            conversation.emit(RecycleSession())

    # -- tools ----------------------------------------------------------------------------

    def on_function_call(self, event: realtime.FunctionCall, now: float) -> None:
        conversation = self.conversation
        call_id, name, arguments = event.call_id, event.name, event.arguments
        item = conversation.item(event.item_id or call_id, "tool")
        item.call_id, item.tool_name, item.arguments = call_id, name, arguments
        response_id = event.response_id or conversation.active_response or ""
        if name not in self.agent.tool_names:
            self._tool_done(item.position, name, call_id, arguments, error=f"unknown tool {name!r}")
            conversation.request_response()
        elif name == "end_call":
            self._tool_done(item.position, name, call_id, arguments, result={"ok": True})
            self._close_after_speaking("agent_ended", now, tool_response=response_id)
        elif name == "transfer_call":
            self._on_transfer_call(item.position, call_id, arguments, now, response_id)
        else:
            self.pending_tools.add(call_id)
            conversation.emit(RunTool(call_id, name, arguments, item.position))

    def on_tool_result(self, call_id: str, output: str, record: ToolCallRecord) -> None:
        """A function tool finished (or failed): give the model its output and let it speak."""
        if call_id not in self.pending_tools:
            return
        conversation = self.conversation
        self.pending_tools.discard(call_id)
        self._remember_output(call_id, output)
        conversation.emit(SaveToolCall(record))
        if not conversation.session_ready:
            # The session was lost while the tool ran: the next one gets the output with the
            # rest of the conversation, then answers.
            self.respond_after_replay = True
            return
        conversation.send_openai(realtime.function_output(call_id, output))
        if not self.pending_tools and self.closing is None:
            conversation.request_response()

    def _tool_done(
        self, position: int, name: str, call_id: str, arguments: str, *, result: Any = None, error: str = ""
    ) -> None:
        output = realtime.dumps({"error": error} if error else result)
        self._remember_output(call_id, output)
        self.conversation.emit(
            SaveToolCall(ToolCallRecord(position, name, call_id, arguments, result, error, 0))
        )
        self.conversation.send_openai(realtime.function_output(call_id, output))

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
        self.conversation.request_response()

    def _remember_output(self, call_id: str, output: str) -> None:
        """Kept so a replacement OpenAI session can be told what the tool returned."""
        for item in self.conversation.items.values():
            if item.call_id == call_id:
                item.tool_output = output
                return

    def on_transfer_result(self, ok: bool, error: str, now: float) -> None:
        if ok:
            assert self.closing is not None
            self._transferred_to = self.closing.transfer_to
            self._transfer_started = now
            return
        # The caller stays with the agent, who explains.
        self.closing = None
        conversation = self.conversation
        conversation.emit(RecordError(f"Transfer failed: {error}"))
        conversation.send_openai(
            realtime.text_item(
                "The transfer failed. Apologise briefly and offer to keep helping.", role="system"
            )
        )
        conversation.request_response()

    @property
    def transferred_to(self) -> str:
        """The number the call was (or is being) transferred to."""
        if self._transferred_to:
            return self._transferred_to
        closing = self.closing
        return closing.transfer_to if closing is not None and closing.fired else ""

    # -- responses while the call is ending ---------------------------------------------------

    def on_response_created(self, response_id: str, metadata: Mapping[str, str]) -> None:
        closing = self.closing
        if closing is None:
            return
        if metadata.get(CLOSING_METADATA) == closing.reason:
            closing.goodbye_response = response_id
        else:
            # The call is ending: nothing else is said (a prompt of the service's own, an
            # answer to a late noise). Its audio is dropped and it is cancelled.
            self.conversation.interrupted.add(response_id)

    def on_response_done(self, response_id: str, now: float) -> None:
        closing = self.closing
        if closing is None:
            return
        if closing.goodbye_response == response_id:
            closing.wait_for_goodbye = False
        if not closing.fired and closing.tool_response == response_id:
            closing.tool_response = ""
            if not self.conversation.response_spoke(response_id):
                # The model called end_call/transfer_call without a word, as real models do
                # whatever the tool description says: the caller must not hear the line drop
                # in silence. Ask for the goodbye (or the transfer notice) now.
                self.conversation.wanted = None
                self._ask_goodbye(closing, now)

    # -- ending the call, limits, silence, key presses --------------------------------------

    def _close_after_speaking(
        self,
        reason: ClosingReason,
        now: float,
        *,
        transfer_to: str = "",
        say: str = "",
        tool_response: str = "",
    ) -> None:
        current = self.closing
        if current is not None and (current.fired or (current.wait_for_goodbye and not transfer_to)):
            # Already ending, with a goodbye on its way (the model may call end_call in the
            # very goodbye we asked for): that goodbye still has to be heard.
            return
        self.closing = Closing(reason, now + CLOSING_DEADLINE, transfer_to, tool_response=tool_response)
        if say:
            self._ask_goodbye(self.closing, now, say)
        self.maybe_close(now)

    def _ask_goodbye(self, closing: Closing, now: float, say: str = "") -> None:
        """A system note, then a response tagged as this closing's goodbye, with no tools."""
        closing.wait_for_goodbye = True
        closing.deadline = max(closing.deadline, now + CLOSING_DEADLINE)
        note = say or GOODBYE.get(closing.reason, GOODBYE["agent_ended"])
        self.conversation.send_openai(realtime.text_item(note, role="system"))
        self.conversation.request_response(metadata={CLOSING_METADATA: closing.reason}, tools=False)

    def maybe_close(self, now: float) -> None:
        """End (or transfer) the call if it is closing and the agent has finished speaking."""
        closing = self.closing
        if closing is None or closing.fired:
            return
        speaking = (
            self.conversation.active_response is not None
            or self.playback.is_playing
            or closing.wait_for_goodbye
        )
        if speaking and now < closing.deadline:
            return
        closing.fired = True
        if closing.transfer_to:
            self.conversation.emit(Transfer(closing.transfer_to))
        else:
            self.conversation.end(closing.reason, hang_up=True)

    def on_idle_timeout(self, now: float) -> None:
        """The session's idle timeout fired: the service is prompting the silent caller."""
        self._silence_prompts += 1
        if self._silence_prompts <= self.agent.max_silence_prompts or self.closing is not None:
            return
        # Enough prompting: after the service's prompt, a goodbye, then hang up.
        self._close_after_speaking(
            "silence",
            now,
            say="The caller has not answered for a while. Say a brief, polite goodbye now.",
        )

    def on_caller_speaking(self) -> None:
        self._silence_prompts = 0
        closing = self.closing
        if closing is not None and closing.reason == "silence" and not closing.fired:
            self.closing = None  # the caller is back

    def on_key(self, digit: str, now: float) -> None:
        digits = self.keys.press(digit, now)
        if digits is not None:
            self._hand_over_keys(digits, now)

    def _hand_over_keys(self, digits: str, now: float) -> None:
        conversation = self.conversation
        item = conversation.item(f"dtmf_{self.keys.turns}", "caller")
        item.started_ms = item.ended_ms = conversation.offset_ms(now)
        item.saved = item.transcript_done = True
        noun = "key" if len(digits) == 1 else "keys"
        item.transcript = f"[The caller pressed the {noun} {digits} on their phone keypad.]"
        conversation.emit(
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
        conversation.emit(SendOpenAI(realtime.text_item(item.transcript, item_id=item.item_id)))
        conversation.request_response()

    def on_tick(self, now: float) -> None:
        """Key-press pauses, the time limit, stuck transfers and goodbyes, the session's age."""
        conversation = self.conversation
        digits = self.keys.paused(now)
        if digits is not None:
            self._hand_over_keys(digits, now)
        if conversation.session_ready and conversation.ended is None:
            elapsed = now - conversation.started_at
            limit = self.agent.max_call_seconds
            wrap_up = min(WRAP_UP_SECONDS, limit / 4)
            if elapsed >= limit + HARD_STOP_GRACE:
                conversation.end("time_limit", hang_up=True)
            elif elapsed >= limit - wrap_up and not self._wrap_up_sent:
                self._wrap_up_sent = True
                self._close_after_speaking(
                    "time_limit",
                    now,
                    say="The call has reached its time limit. Tell the caller politely that you "
                    "have to end the call now, and say goodbye.",
                )
        if self._transferred_to and now - self._transfer_started > TRANSFER_STOP_DEADLINE:
            conversation.end("transferred")
        self._maybe_recycle(now)
        self.maybe_close(now)
