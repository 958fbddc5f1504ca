"""Agent tests in your own test suite (issue 17): hold a conversation with an agent in a few
lines, then assert on its tool calls and replies, or have a model judge it.

    from calls.testing import agent_conversation

    def test_books_a_table(db):
        agent = Agent.objects.get(name="Restaurant")
        replies = [{"transcript": "Booking it.", "function_call": {"name": "book_table", "arguments": {...}}},
                   "You're booked."]
        with agent_conversation(agent, replies=replies) as talk:
            talk.say("A table for two tonight at eight, under Rossi.")
            talk.assert_called("book_table", party_size=2)
            talk.assert_said("booked")

Offline (the default) the model is the stand-in answering with ``replies`` in order: what
runs for real is the agent's configuration, its tools and your assertions. ``real=True``
talks to the Realtime API in text (OPENAI_API_KEY), and ``replies`` is ignored. Tools run in
the test's own thread and database transaction, so a tool sees the rows the test made.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable, Coroutine, Iterator, Mapping
from typing import Any, TypeVar

from django.conf import settings

from calls import agent_testing
from calls.agent_test_runner import STANDIN_KEY, LiveConversation, standin
from calls.agent_tests import ExpectedTool, Spec, ToolUse, Transcript, check, describe, says, value_matches
from calls.models import Agent
from calls.services import agent_settings

T = TypeVar("T")


class AgentConversation:
    """A conversation in progress; every ``say`` waits for the agent's whole answer."""

    def __init__(self, live: LiveConversation, loop: _LoopThread, *, real: bool) -> None:
        self._live = live
        self._loop = loop
        self._real = real

    def say(self, text: str) -> str:
        """The caller says ``text``; returns what the agent answered (its turns joined)."""
        return " ".join(self._loop.run(self._live.say(text)))

    @property
    def transcript(self) -> Transcript:
        return self._live.transcript

    @property
    def tool_calls(self) -> list[ToolUse]:
        return self.transcript.tools

    @property
    def ended(self) -> str:
        """How the call stands: "agent_ended", "transferred" or "open"."""
        return self.transcript.ending

    def assert_called(self, tool_name: str, /, **arguments: Any) -> ToolUse:
        """The tool was called with (at least) these arguments; returns the first such call."""
        expected = ExpectedTool(tool_name, arguments)
        self._expect(Spec(caller_turns=("-",), expect_tools=(expected,)))
        return next(
            use
            for use in self.tool_calls
            if use.name == tool_name and value_matches(dict(arguments), dict(use.arguments))
        )

    def assert_not_called(self, name: str) -> None:
        self._expect(Spec(caller_turns=("-",), forbid_tools=(name,)))

    def assert_said(self, phrase: str) -> None:
        self._expect(Spec(caller_turns=("-",), must_say=(phrase,)))

    def assert_not_said(self, phrase: str) -> None:
        self._expect(Spec(caller_turns=("-",), must_not_say=(phrase,)))

    def said(self, phrase: str) -> bool:
        return says(self.transcript.agent_text, phrase)

    def judge(self, rubric: str) -> tuple[bool, str]:
        """The rubric judged by the analysis model (offline: the fake Responses API)."""
        outcome, _, _ = agent_testing.judge(rubric, self.transcript, real=self._real)
        return outcome.passed, outcome.message

    def assert_judged(self, rubric: str) -> None:
        passed, reason = self.judge(rubric)
        if not passed:
            raise AssertionError(f"the judge failed {rubric!r}: {reason}\n{describe(self.transcript.lines)}")

    def _expect(self, spec: Spec) -> None:
        for outcome in check(spec, self.transcript):
            if not outcome.passed:
                raise AssertionError(f"{outcome.message}\n{describe(self.transcript.lines)}")


class _LoopThread:
    """The conversation's event loop, in a thread of its own, while the test's thread waits
    in ``run``; a tool the model calls is handed back to the test's thread and run there, on
    the test's database connection and in its transaction (Django refuses the ORM inside a
    running event loop, and another thread would not see the test's uncommitted rows)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="agent-conversation", daemon=True)
        self._thread.start()
        self._work: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )

    def run(self, step: Coroutine[Any, Any, T]) -> T:
        """Run ``step`` on the loop; meanwhile, run here what it hands to this thread."""
        done = asyncio.run_coroutine_threadsafe(step, self.loop)
        done.add_done_callback(lambda _: self._work.put(None))
        while (job := self._work.get()) is not None:
            work, reply = job
            try:
                result: Any = (work(), None)
            except BaseException as exc:  # handed back to the loop, which re-raises it
                result = (None, exc)
            self.loop.call_soon_threadsafe(_settle, reply, *result)
        return done.result()

    async def in_caller_thread(self, work: Callable[[], Any]) -> Any:
        reply: asyncio.Future[Any] = self.loop.create_future()
        self._work.put((work, reply))
        return await reply

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


def _settle(reply: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if reply.done():
        return
    if error is not None:
        reply.set_exception(error)
    else:
        reply.set_result(value)


@contextlib.contextmanager
def agent_conversation(
    agent: Agent | str,
    *,
    replies: list[Any] | None = None,
    tool_results: Mapping[str, Any] | None = None,
    real: bool = False,
) -> Iterator[AgentConversation]:
    """A conversation with ``agent`` (an Agent or its name), closed on leaving the block.
    ``tool_results``: tools not to run, with the result the model gets instead."""
    if isinstance(agent, str):
        agent = Agent.objects.get(name=agent)
    if real and not settings.OPENAI_API_KEY:
        raise RuntimeError("real=True needs OPENAI_API_KEY")
    spec = Spec(
        caller_turns=("-",), tool_results=dict(tool_results or {}), standin={"replies": replies or []}
    )
    config = agent_settings(agent)
    loop = _LoopThread()
    # Tools run in the test's own thread (its connection and transaction), not a worker's.
    run_tool = agent_testing.tool_runner(agent, "agent-test", run_sync=loop.in_caller_thread)
    live = LiveConversation(spec, config, run_tool=run_tool)
    try:
        with contextlib.ExitStack() as stack:
            if real:
                url, key = settings.OPENAI_REALTIME_URL, settings.OPENAI_API_KEY
            else:
                server = standin(spec, config.instructions)
                url, key = loop.run(server.__aenter__()), STANDIN_KEY
                stack.callback(lambda: loop.run(server.__aexit__(None, None, None)))
            loop.run(live.open(url, key))
            stack.callback(lambda: loop.run(live.close()))
            yield AgentConversation(live, loop, real=real)
    finally:
        loop.stop()
