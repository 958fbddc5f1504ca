"""The sans-IO core: the call bridge between Twilio Media Streams and OpenAI Realtime.

No sockets, no ORM, no clock, no asyncio (tests/test_bridge_purity.py checks it): events go
in, actions come out, and ``calls.consumers`` performs them.

- ``core``: ``CallBridge``, audio both ways, barge-in, transcripts, the OpenAI session's life;
- ``control``: ``CallControl``, what the agent does to the call (tools, transfer, ending,
  limits, keys, replacing the session before its time is up);
- ``conversation``: the items, the pending actions and the active response both share;
- ``playback``: what the caller has heard of what we sent (Twilio's buffer, modelled);
- ``replay``: the conversation as text for a session that replaces a lost one;
- ``actions``: what the bridge asks the outside world to do.
"""

from __future__ import annotations

from calls.bridge.actions import (
    Action,
    AgentAudio,
    AgentCut,
    CallSummary,
    EndCall,
    EndReason,
    RecordError,
    RecycleSession,
    RunTool,
    SaveToolCall,
    SaveTurn,
    SendOpenAI,
    SendTwilio,
    ToolCallRecord,
    Transfer,
    TurnRecord,
)
from calls.bridge.conversation import Item
from calls.bridge.core import CHUNK_CHARS, MAX_EARLY_FRAMES, PREFIX_FRAMES, REPLAY_PREFIX, CallBridge

__all__ = [
    "CHUNK_CHARS",
    "MAX_EARLY_FRAMES",
    "PREFIX_FRAMES",
    "REPLAY_PREFIX",
    "Action",
    "AgentAudio",
    "AgentCut",
    "CallBridge",
    "CallSummary",
    "EndCall",
    "EndReason",
    "Item",
    "RecordError",
    "RecycleSession",
    "RunTool",
    "SaveToolCall",
    "SaveTurn",
    "SendOpenAI",
    "SendTwilio",
    "ToolCallRecord",
    "Transfer",
    "TurnRecord",
]
