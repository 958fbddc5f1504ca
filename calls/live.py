"""Live call events and controls over the Channels layer.

Every media consumer joins the group of its call, so a control message reaches the call
whichever worker process holds it (with ``REDIS_URL`` set, across machines), and publishes
what happens on the call to one group that the staff live page listens to.

Messages (Channels event dicts):

* ``LIVE_GROUP`` receives ``{"type": "live.event", "event": {...}}`` where ``event`` is
  ``{"kind": "call_started", "call_sid", "from", "to", "agent", "direction", "started_at"}``,
  ``{"kind": "turn", "call_sid", "position", "role", "kind_of_turn", "text", "started_ms",
  "interrupted", "heard_ms"}`` or ``{"kind": "call_ended", "call_sid", "reason", "error"}``.
* ``call_group(sid)`` receives ``{"type": "call.hangup", "by": "<staff username>"}``: the
  consumer ends the call (ended reason "operator_hung_up").
"""

from __future__ import annotations

import logging
import re
from typing import Any

from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

LIVE_GROUP = "calls.live"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def call_group(call_sid: str) -> str:
    """Group names allow only ASCII letters, digits, hyphens, underscores and periods."""
    return "call." + _UNSAFE.sub("_", call_sid)[:80]


def turn_event(turn: Any, call_sid: str) -> dict[str, Any]:
    """A ``turn`` event from a stored ``Turn`` or the bridge's ``TurnRecord`` (same fields)."""
    return {
        "kind": "turn",
        "call_sid": call_sid,
        "position": turn.position,
        "role": turn.role,
        "kind_of_turn": turn.kind,
        "text": turn.text,
        "started_ms": turn.started_ms,
        "interrupted": turn.interrupted,
        "heard_ms": turn.heard_ms,
        "latency_ms": turn.latency_ms,
    }


async def publish(event: dict[str, Any]) -> None:
    """Best effort: the live page is a view on the call, never a reason for it to fail."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        await layer.group_send(LIVE_GROUP, {"type": "live.event", "event": event})
    except Exception:  # a layer outage (Redis down) must not touch the audio path
        logger.warning("call %s: could not publish a live event", event.get("call_sid"), exc_info=True)


async def request_hang_up(call_sid: str, *, by: str) -> None:
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer is configured")
    await layer.group_send(call_group(call_sid), {"type": "call.hangup", "by": by})
