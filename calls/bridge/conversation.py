"""The conversation as the bridge keeps it: its items in order, the actions decided so far,
the one response the service may have active, and the end of the call. Shared by the
bridge's two parts (``core``: audio, barge-in, transcripts, sessions; ``control``: tools,
closing, limits, keys), each of which owns the rest of its own state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from calls import realtime
from calls.audio import BYTES_PER_MS
from calls.bridge import replay
from calls.bridge.actions import Action, EndCall, EndReason, SaveTurn, SendOpenAI, TurnRecord

ItemRole = Literal["caller", "agent", "tool", "other"]


@dataclass(slots=True)
class Item:
    """A conversation item: a caller utterance, an agent answer or a tool call."""

    item_id: str
    position: int
    role: ItemRole
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


class Conversation:
    def __init__(self, *, started_at: float) -> None:
        self.started_at = started_at
        self.items: dict[str, Item] = {}
        self._next_position = 0
        self._outbox: list[Action] = []
        self.ended: EndCall | None = None
        # The OpenAI session: opened how many times, and whether the current one is
        # configured as we asked (audio may flow).
        self.sessions = 0
        self.session_ready = False
        # Responses: the service allows one active at a time.
        self.active_response: str | None = None
        self.wanted: str | None = None  # a response.create to send once none is active
        self.last_create = realtime.response_create()
        self.item_response: dict[str, str] = {}  # item -> the response that produced it
        self.interrupted: set[str] = set()  # responses whose audio must not play

    # -- actions ---------------------------------------------------------------------------

    def emit(self, action: Action) -> None:
        self._outbox.append(action)

    def take(self) -> list[Action]:
        """Everything decided since the last take, in order."""
        actions, self._outbox = self._outbox, []
        return actions

    def send_openai(self, text: str) -> None:
        self._outbox.append(SendOpenAI(text))

    # -- items -----------------------------------------------------------------------------

    def item(self, item_id: str, role: ItemRole) -> Item:
        """The item with this id, created (in the next position) if it is new."""
        item = self.items.get(item_id)
        if item is None:
            item = Item(item_id=item_id, position=self._next_position, role=role, session=self.sessions)
            self._next_position += 1
            self.items[item_id] = item
        return item

    def in_order(self) -> list[Item]:
        return sorted(self.items.values(), key=lambda i: i.position)

    def offset_ms(self, now: float) -> int:
        return max(0, int((now - self.started_at) * 1000))

    def save(self, item: Item, text: str) -> None:
        """Store the turn once (tool items are stored as tool calls, not here)."""
        if item.saved or item.role not in ("caller", "agent"):
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

    # -- responses ---------------------------------------------------------------------------

    def request_response(
        self, instructions: str | None = None, metadata: dict[str, str] | None = None, *, tools: bool = True
    ) -> None:
        """Only one response may be active: ask now, or as soon as the current one is done."""
        create = realtime.response_create(instructions, metadata, tools=tools)
        if self.active_response is not None:
            self.wanted = create
            return
        self.last_create = create
        self.send_openai(create)

    def send_wanted(self) -> None:
        """The response asked for while another was active, if any, now."""
        if self.wanted:
            self.last_create, self.wanted = self.wanted, None
            self.send_openai(self.last_create)

    def response_spoke(self, response_id: str) -> bool:
        """Whether any audio of this response was sent to the caller."""
        return any(
            item.sent_bytes
            for item in self.items.values()
            if item.role == "agent" and self.item_response.get(item.item_id) == response_id
        )

    # -- the end -----------------------------------------------------------------------------

    def end(self, reason: EndReason, error: str = "", *, hang_up: bool = False) -> None:
        if self.ended is None:
            self.ended = EndCall(reason, error, hang_up)
            self._outbox.append(self.ended)
