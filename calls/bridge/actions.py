"""What the bridge asks the outside world to do. Plain data: the consumer performs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

# How a call ended, as the bridge decides it: the values of ``calls.models.EndedReason``
# that come from inside a call (the others come from Twilio's status callbacks). Kept as
# literals here so the core needs no Django; tests/test_bridge_actions.py checks they match.
EndReason = Literal[
    "caller_hung_up",
    "agent_ended",
    "transferred",
    "time_limit",
    "silence",
    "operator_hung_up",
    "error",
    "server_restart",
]
TurnRole = Literal["caller", "agent"]
TurnKind = Literal["speech", "dtmf"]


@dataclass(frozen=True, slots=True)
class SendTwilio:
    text: str


@dataclass(frozen=True, slots=True)
class SendOpenAI:
    text: str


@dataclass(frozen=True, slots=True)
class TurnRecord:
    position: int
    role: TurnRole
    text: str
    item_id: str
    started_ms: int | None
    ended_ms: int | None
    interrupted: bool = False
    heard_ms: int | None = None
    kind: TurnKind = "speech"
    latency_ms: int | None = None  # agent turns: caller's end of speech -> first audio sent


@dataclass(frozen=True, slots=True)
class SaveTurn:
    turn: TurnRecord


@dataclass(frozen=True, slots=True)
class ToolCallRecord:
    position: int
    name: str
    call_id: str
    arguments: str
    result: Any = None
    error: str = ""
    duration_ms: int | None = None


@dataclass(frozen=True, slots=True)
class SaveToolCall:
    record: ToolCallRecord


@dataclass(frozen=True, slots=True)
class RunTool:
    """Run a registered function tool off the audio loop; report with ``on_tool_result``."""

    call_id: str
    name: str
    arguments: str
    position: int


@dataclass(frozen=True, slots=True)
class Transfer:
    """Redirect the live call to ``<Dial>number</Dial>``; report with ``on_transfer_result``."""

    number: str


@dataclass(frozen=True, slots=True)
class AgentAudio:
    """Agent audio sent to Twilio, for the recording: ``starts`` is when it should begin
    playing (monotonic seconds)."""

    payload: str
    starts: float


@dataclass(frozen=True, slots=True)
class AgentCut:
    """A barge-in cleared Twilio's buffer: agent audio planned after ``at`` was not heard."""

    at: float


@dataclass(frozen=True, slots=True)
class RecycleSession:
    """Replace the OpenAI session now (a quiet moment before its 60-minute limit)."""


@dataclass(frozen=True, slots=True)
class RecordError:
    message: str


@dataclass(frozen=True, slots=True)
class EndCall:
    reason: EndReason
    error: str = ""
    hang_up: bool = False  # also complete the call through Twilio's REST API


Action = (
    SendTwilio
    | AgentAudio
    | AgentCut
    | SendOpenAI
    | SaveTurn
    | SaveToolCall
    | RunTool
    | Transfer
    | RecycleSession
    | RecordError
    | EndCall
)


@dataclass(frozen=True)
class CallSummary:
    """What the call record keeps of a finished call."""

    reason: EndReason
    error: str = ""
    usage: dict[str, Any] = field(default_factory=dict)
    transferred_to: str = ""
    reconnects: int = 0
    interruptions: int = 0
    first_audio_ms: int | None = None
    latencies_ms: tuple[int, ...] = ()
