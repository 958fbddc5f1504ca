"""Holds one agent test's conversation with a Realtime model, in text (issue 17).

The session is the phone call's (``realtime.session_update``: the agent's instructions, tools
and model) answering in text to typed caller turns: cheap and fast against the real API, and
deterministic against the offline stand-in, a ``FakeRealtimeServer`` scripted with the test's
replies. The agent's tools run for real (``calls.tools.run_tool``) unless the test fixes their
result; ``end_call`` and ``transfer_call`` follow the bridge's rules. What comes back is a
``Transcript`` for ``agent_tests.check``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from calls import realtime
from calls.agent_tests import ENDING_TOOLS, Line, Spec, ToolUse, Transcript, standin_replies
from calls.realtime import AgentConfig

# A model that calls tools this many times in a row without answering the caller is stuck.
MAX_RESPONSES_PER_TURN = 8
RESPONSE_TIMEOUT = 60.0

RunTool = Callable[[str, str], Awaitable[tuple[Any, str]]]  # (name, arguments) -> (output, error)
# A simulated caller: the conversation so far -> what the caller says next, and whether the
# call is over for them after it.
NextTurn = Callable[[Transcript], Awaitable[tuple[str, bool]]]


class ConversationFailed(Exception):
    """The conversation could not be held (the model refused the session, a timeout...)."""


@dataclass
class Conversation:
    transcript: Transcript
    usage: dict[str, Any] = field(default_factory=dict)
    model: str = ""


def add_usage(total: dict[str, Any], usage: Any) -> None:
    """Sum ``response.done`` usages field by field, nested details included (the shape
    ``pricing.estimate_cost`` reads, as for a call)."""
    if not isinstance(usage, dict):
        return
    for key, value in usage.items():
        if isinstance(value, dict):
            add_usage(total.setdefault(key, {}), value)
        elif isinstance(value, int) and not isinstance(value, bool):
            total[key] = total.get(key, 0) + value


class _Session:
    """The socket, read one response at a time."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws

    async def send(self, message: str) -> None:
        await self.ws.send(message)

    async def configured(self, agent: AgentConfig) -> None:
        await self.send(realtime.dumps(realtime.session_update(agent, text_only=True)))
        event = await self._until("session.updated")
        session = event.get("session")
        modalities = session.get("output_modalities") if isinstance(session, dict) else None
        if modalities != ["text"]:
            raise ConversationFailed(f"the session answers in {modalities}, not text")

    async def respond(self, message: str) -> realtime.ResponseOutput:
        await self.send(message)
        event = await self._until("response.done")
        return realtime.response_output(event.get("response") or {})

    async def _until(self, wanted: str) -> dict[str, Any]:
        async with asyncio.timeout(RESPONSE_TIMEOUT):
            while True:
                raw = await self.ws.recv()
                try:
                    event = json.loads(raw)
                except ValueError as exc:
                    raise ConversationFailed("the model sent a frame that is not JSON") from exc
                if not isinstance(event, dict):
                    continue
                if event.get("type") == "error":
                    error = event.get("error") or {}
                    message = error.get("message") if isinstance(error, dict) else error
                    raise ConversationFailed(f"the model refused: {message}")
                if event.get("type") == wanted:
                    return event


@dataclass
class _Holder:
    """The conversation so far and how it ended."""

    spec: Spec
    agent: AgentConfig
    run_tool: RunTool
    lines: list[Line] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    ended: bool = False

    async def tool(self, session: _Session, call_id: str, name: str, arguments: str) -> None:
        try:
            parsed = realtime.json_object(arguments)
        except ValueError:
            parsed = {}
        output: Any = None
        error = ""
        fixed = False
        if name == "end_call":
            output, self.ended = {"ok": True}, True
        elif name == "transfer_call":
            output, error = self._transfer(parsed)
        elif name not in self.agent.tool_names:
            error = f"unknown tool {name!r}"
        elif name in self.spec.tool_results:
            output, fixed = self.spec.tool_results[name], True
        else:
            output, error = await self.run_tool(name, arguments)
        self.lines.append(Line("tool", tool=ToolUse(name, parsed, output, error, fixed)))
        body = realtime.dumps({"error": error} if error else output)
        await session.send(realtime.function_output(call_id, body))

    def _transfer(self, arguments: dict[str, Any]) -> tuple[Any, str]:
        destinations = self.agent.transfer_destinations
        requested = str(arguments.get("destination") or "")
        if not destinations:
            return None, "no transfer number is configured for this agent"
        if requested and requested not in destinations:
            return None, f"{requested!r} is not an allowed destination"
        self.ended = True
        return {"transferring_to": requested or destinations[0]}, ""

    async def answer(self, session: _Session, first: str = '{"type":"response.create"}') -> None:
        """Responses until the model stops calling tools; after an ending tool, one goodbye
        if the response that called it said nothing (as the bridge asks for one)."""
        request = first
        for _ in range(MAX_RESPONSES_PER_TURN):
            result = await session.respond(request)
            add_usage(self.usage, result.usage)
            if result.status not in ("completed", ""):
                raise ConversationFailed(f"a response ended {result.status!r}")
            self.lines.extend(Line("agent", text) for text in result.texts)
            for call_id, name, arguments in result.calls:
                await self.tool(session, call_id, name, arguments)
            if self.ended:
                if not result.texts:
                    goodbye = await session.respond(realtime.response_create(tools=False))
                    add_usage(self.usage, goodbye.usage)
                    self.lines.extend(Line("agent", text) for text in goodbye.texts)
                return
            if not result.calls:
                return
            request = realtime.response_create()
        raise ConversationFailed(f"the agent called tools {MAX_RESPONSES_PER_TURN} times without answering")


class LiveConversation:
    """One conversation, a caller turn at a time: the runner's, and the pytest helper's
    (``calls.testing``). ``open`` connects and configures the session (and lets the agent
    greet first when it has a greeting); ``say`` sends a caller turn and waits until the agent
    has answered, tools included."""

    def __init__(self, spec: Spec, agent: AgentConfig, *, run_tool: RunTool) -> None:
        self.agent = agent
        self._holder = _Holder(spec, agent, run_tool)
        self._ws: ClientConnection | None = None
        self._session: _Session | None = None

    @property
    def transcript(self) -> Transcript:
        return Transcript(tuple(self._holder.lines))

    @property
    def usage(self) -> dict[str, Any]:
        return self._holder.usage

    @property
    def ended(self) -> bool:
        return self._holder.ended

    async def open(self, url: str, api_key: str) -> None:
        try:
            self._ws = await websockets.connect(
                realtime.connect_url(url, self.agent.model),
                additional_headers=realtime.connect_headers(api_key),
                open_timeout=15,
                max_size=16 * 1024 * 1024,
                close_timeout=2,
            )
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            raise ConversationFailed(f"cannot reach the Realtime API: {type(exc).__name__}: {exc}") from exc
        self._session = _Session(self._ws)
        await self._guarded(self._session.configured(self.agent))
        if self.agent.greeting:
            greet = realtime.response_create(realtime.greeting_instructions(self.agent.greeting))
            await self._guarded(self._holder.answer(self._session, greet))

    async def say(self, text: str) -> list[str]:
        """The caller says ``text``; returns what the agent said in answer."""
        if self._session is None:
            raise ConversationFailed("the conversation is not open")
        if self._holder.ended:
            raise ConversationFailed("the agent has already ended the call")
        before = len(self._holder.lines)
        self._holder.lines.append(Line("caller", text))
        await self._guarded(self._session.send(realtime.text_item(text)))
        await self._guarded(self._holder.answer(self._session))
        return [line.text for line in self._holder.lines[before:] if line.speaker == "agent"]

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
            self._ws = None

    async def _guarded(self, step: Awaitable[Any]) -> Any:
        try:
            return await step
        except websockets.ConnectionClosed as exc:
            raise ConversationFailed(f"the Realtime API closed the session ({exc})") from exc
        except TimeoutError as exc:
            raise ConversationFailed(f"no answer within {RESPONSE_TIMEOUT:g} s") from exc


async def converse(
    spec: Spec,
    agent: AgentConfig,
    *,
    url: str,
    api_key: str,
    run_tool: RunTool,
    caller: NextTurn | None = None,
) -> Conversation:
    """The test's caller turns, one by one, each answered; or, for an open-ended test, what
    the simulated ``caller`` says, up to ``spec.max_turns`` turns. Stops early once the agent
    ends or transfers the call, or the simulated caller is done."""
    live = LiveConversation(spec, agent, run_tool=run_tool)
    try:
        await live.open(url, api_key)
        if caller is None:
            for turn in spec.caller_turns:
                if live.ended:
                    break
                await live.say(turn)
        else:
            for _ in range(spec.max_turns):
                if live.ended:
                    break
                text, done = await caller(live.transcript)
                if text:
                    await live.say(text)
                if done:
                    break
    finally:
        await live.close()
    return Conversation(live.transcript, live.usage, agent.model)


def standin_script(spec: Spec, instructions: str) -> Any:
    """The offline stand-in's script for this test (``agent_tests.standin_replies``)."""
    from calls.fakes.openai_realtime import Reply, Script

    replies = []
    for item in standin_replies(spec, instructions):
        if isinstance(item, str):
            replies.append(Reply(transcript=item))
            continue
        call = item.get("function_call")
        function_call = (str(call["name"]), dict(call.get("arguments") or {})) if call else None
        replies.append(Reply(transcript=str(item.get("transcript") or ""), function_call=function_call))
    return Script(replies=replies)


STANDIN_KEY = "sk-agent-tests"  # not a secret: the stand-in listens on this machine only


@contextlib.asynccontextmanager
async def standin(spec: Spec, instructions: str) -> AsyncIterator[str]:
    """A fake Realtime server of this process, on a port of its own, answering with the
    test's scripted replies; yields its URL. A protocol error of the fake fails the test."""
    from calls.fakes.openai_realtime import FakeRealtimeServer

    server = FakeRealtimeServer(standin_script(spec, instructions), api_key=STANDIN_KEY)
    await server.start()
    try:
        yield server.url
    finally:
        await server.stop()
    if problems := server.invalid_sent:
        raise ConversationFailed("the stand-in sent invalid events: " + "; ".join(problems[:3]))


async def converse_offline(
    spec: Spec, agent: AgentConfig, *, run_tool: RunTool, caller: NextTurn | None = None
) -> Conversation:
    """The conversation against the stand-in."""
    async with standin(spec, agent.instructions) as url:
        return await converse(spec, agent, url=url, api_key=STANDIN_KEY, run_tool=run_tool, caller=caller)


def scripted_caller(lines: list[str]) -> NextTurn:
    """Offline, a simulated caller says the stand-in's ``caller`` lines, then is done."""
    remaining = list(lines)

    async def next_turn(transcript: Transcript) -> tuple[str, bool]:
        return (remaining.pop(0) if remaining else ""), len(remaining) == 0

    return next_turn


__all__ = [
    "ENDING_TOOLS",
    "Conversation",
    "ConversationFailed",
    "NextTurn",
    "converse",
    "converse_offline",
    "scripted_caller",
]
