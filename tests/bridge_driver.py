"""The bridge as its tests drive it: what each call returns is kept until ``drain()``.

``CallBridge``'s methods return the actions they decide; the consumer carries out each
batch at once. Tests often feed several events and then look at everything decided, so
this wrapper collects the batches, in order. OpenAI events may be given as the JSON
objects the service sends: they go through ``realtime.server_event``, the parser the
consumer uses, so a test also exercises how the event is read.
"""

from __future__ import annotations

from typing import Any

from calls import realtime
from calls.bridge import Action, CallBridge
from calls.realtime import AgentConfig

_RETURNS_ACTIONS = frozenset(
    {
        "on_twilio",
        "on_openai",
        "on_openai_connected",
        "on_openai_lost",
        "on_tick",
        "on_tool_result",
        "on_transfer_result",
        "on_stream_closed",
        "finish",
    }
)


class DrivenBridge:
    def __init__(
        self, agent: AgentConfig, *, stream_sid: str, call_sid: str, now: float, frames_per_append: int = 1
    ) -> None:
        bridge = CallBridge(
            agent, stream_sid=stream_sid, call_sid=call_sid, now=now, frames_per_append=frames_per_append
        )
        object.__setattr__(self, "bridge", bridge)
        object.__setattr__(self, "_actions", list(bridge.start(now)))

    def drain(self) -> list[Action]:
        actions: list[Action] = self._actions
        object.__setattr__(self, "_actions", [])
        return actions

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.bridge, name)
        if name not in _RETURNS_ACTIONS:
            return value

        def collecting(*args: Any, **kwargs: Any) -> list[Action]:
            if name == "on_openai" and isinstance(args[0], dict):
                args = (realtime.server_event(args[0]), *args[1:])
            actions: list[Action] = value(*args, **kwargs)
            self._actions.extend(actions)
            return actions

        return collecting

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.bridge, name, value)
