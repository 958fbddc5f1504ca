"""The OpenAI session runner: its retry policy (pure, no sockets), and the runner itself
against the fake Realtime server (a real socket speaking the real protocol)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calls import realtime
from calls.bridge.actions import EndCall
from calls.models import EndedReason
from calls.openai_link import (
    RECONNECT_DELAYS,
    STABLE_SESSION_SECONDS,
    OpenAISessionRunner,
    Reconnect,
    reconnect_delay,
)
from calls.realtime import AgentConfig

SHORT = 1.0  # a session that failed soon after it opened
failures_so_far = st.integers(min_value=0, max_value=len(RECONNECT_DELAYS) + 3)
lifetimes = st.floats(min_value=0.0, max_value=4 * 3600.0, allow_nan=False)
short_lives = st.floats(min_value=0.0, max_value=STABLE_SESSION_SECONDS, allow_nan=False)
stable_lives = st.floats(min_value=STABLE_SESSION_SECONDS, max_value=4 * 3600.0, exclude_min=True)


def test_quick_failures_back_off_then_the_call_ends():
    failures, waits = 0, []
    while not (decision := reconnect_delay(failures, SHORT, fatal=False)).gives_up:
        assert decision.delay is not None
        waits.append(decision.delay)
        failures = decision.failures
    assert waits == list(RECONNECT_DELAYS)
    assert sum(waits) <= 2.0  # the call is back, or over, within about 2 s


@given(failures=failures_so_far, lived=lifetimes)
def test_a_refusal_retrying_cannot_fix_ends_the_call_at_once(failures, lived):
    assert reconnect_delay(failures, lived, fatal=True).gives_up


@given(failures=failures_so_far, lived=stable_lives)
def test_a_session_that_lived_long_was_healthy_so_its_drop_is_a_first_failure(failures, lived):
    assert reconnect_delay(failures, lived, fatal=False) == Reconnect(RECONNECT_DELAYS[0], 1)


@given(failures=failures_so_far, lived=short_lives)
def test_a_short_session_counts_on_from_the_failures_before_it(failures, lived):
    decision = reconnect_delay(failures, lived, fatal=False)
    if failures < len(RECONNECT_DELAYS):
        assert decision == Reconnect(RECONNECT_DELAYS[failures], failures + 1)
    else:
        assert decision.gives_up


def test_living_exactly_the_stable_time_is_not_yet_healthy():
    last = len(RECONNECT_DELAYS)
    assert reconnect_delay(last, STABLE_SESSION_SECONDS, fatal=False).gives_up
    assert not reconnect_delay(last, STABLE_SESSION_SECONDS + 0.001, fatal=False).gives_up


@given(sessions=st.lists(st.tuples(lifetimes, st.booleans()), min_size=1, max_size=30))
def test_a_call_ends_only_on_a_fatal_refusal_or_too_many_quick_failures_in_a_row(sessions):
    """Against a model of the rule: count the failures since the last healthy session."""
    failures, in_a_row = 0, 0
    for lived, fatal in sessions:
        decision = reconnect_delay(failures, lived, fatal)
        in_a_row = 1 if lived > STABLE_SESSION_SECONDS else in_a_row + 1
        assert decision.gives_up == (fatal or in_a_row > len(RECONNECT_DELAYS))
        if decision.gives_up:
            return
        assert decision.delay in RECONNECT_DELAYS
        assert decision.delay == max(RECONNECT_DELAYS[:in_a_row])  # backoff never shortens
        failures = decision.failures


AGENT = AgentConfig(instructions="Be brief.", model="gpt-realtime")


class Consumer:
    """What a consumer gives the runner: it notes what it is told, and ends when asked."""

    def __init__(self) -> None:
        self.told: list[tuple[Any, ...]] = []
        self.events: list[realtime.ServerEvent] = []
        self.ended: list[EndCall] = []
        self._changed = asyncio.Event()

    def runner(self) -> OpenAISessionRunner:
        return OpenAISessionRunner(
            "CA" + "7" * 32,
            on_connected=self.on_connected,
            on_event=self.on_event,
            on_lost=self.on_lost,
            request_end=self.request_end,
            ending=lambda: bool(self.ended),
        )

    def _note(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def on_connected(self, configured: bool) -> None:
        self.told.append(("connected", configured))
        self._note()

    async def on_event(self, event: realtime.ServerEvent) -> None:
        self.events.append(event)
        self._note()

    async def on_lost(self, detail: str, planned: bool) -> None:
        self.told.append(("lost", detail, planned))
        self._note()

    def request_end(self, end: EndCall) -> None:
        self.ended.append(end)
        self._note()

    async def until(self, condition: Any, timeout: float = 5) -> None:
        async with asyncio.timeout(timeout):
            while not condition():
                await self._changed.wait()


@pytest.fixture
def openai_at_fake(settings, fake_openai):
    from tests.conftest import OPENAI_KEY

    fake_openai.set_script(None)
    settings.OPENAI_API_KEY = OPENAI_KEY
    settings.OPENAI_REALTIME_URL = fake_openai.url
    return fake_openai


def test_a_dropped_session_is_reported_then_replaced(loop, openai_at_fake):
    fake = openai_at_fake
    first = len(fake.sessions)

    async def scenario() -> Consumer:
        consumer = Consumer()
        runner = consumer.runner()
        runner.start(AGENT)
        await consumer.until(lambda: realtime.Unknown("session.created") in consumer.events)
        assert runner.connected
        await (await fake.wait_for_session(first)).drop("1011")
        await consumer.until(lambda: len(consumer.told) == 3)
        replacement = await fake.wait_for_session(first + 1)
        await runner.close()
        assert not runner.connected
        await replacement.wait_closed()
        assert replacement.close_code == 1000  # closed by us, not left to linger
        return consumer

    consumer = loop.run(scenario())
    connected, (lost, detail, planned), reconnected = consumer.told
    assert connected == reconnected == ("connected", False)
    assert (lost, planned) == ("lost", False)
    assert detail.startswith("OpenAI closed the session (1011")  # its close code, read from the socket
    assert consumer.ended == []


def test_a_close_that_retrying_cannot_fix_ends_the_call_without_reconnecting(loop, openai_at_fake):
    # 4000: the service refuses the beta shape. websockets raises on any close but
    # 1000/1001, which once hid this code and had the call retry three times.
    fake = openai_at_fake
    first = len(fake.sessions)

    async def scenario() -> Consumer:
        consumer = Consumer()
        runner = consumer.runner()
        runner.start(AGENT)
        await consumer.until(lambda: realtime.Unknown("session.created") in consumer.events)
        await (await fake.wait_for_session(first)).drop("4000")
        await consumer.until(lambda: bool(consumer.ended))
        await runner.close()
        return consumer

    consumer = loop.run(scenario())
    assert consumer.told == [("connected", False)]  # never reported lost, never reconnected
    [end] = consumer.ended
    assert end.reason == "error" and end.error.startswith("OpenAI closed the session (4000")
    assert len(fake.sessions) == first + 1


def test_a_recycled_session_is_replaced_at_once_as_planned(loop, openai_at_fake):
    fake = openai_at_fake
    first = len(fake.sessions)

    async def scenario() -> Consumer:
        consumer = Consumer()
        runner = consumer.runner()
        runner.start(AGENT)
        await consumer.until(lambda: consumer.told == [("connected", False)])
        await runner.recycle()
        await consumer.until(lambda: len(consumer.told) == 3)
        await fake.wait_for_session(first + 1)
        await runner.close()
        return consumer

    consumer = loop.run(scenario())
    assert consumer.told == [("connected", False), ("lost", "recycled", True), ("connected", False)]
    assert consumer.ended == []


def test_an_unreachable_api_is_retried_with_backoff_then_the_call_ends(loop, settings):
    settings.OPENAI_API_KEY = "sk-test-unreachable"
    settings.OPENAI_REALTIME_URL = "ws://127.0.0.1:9/v1/realtime"  # nothing listens

    async def scenario() -> tuple[Consumer, float]:
        consumer = Consumer()
        runner = consumer.runner()
        started = loop.loop.time()
        runner.start(AGENT)
        await consumer.until(lambda: bool(consumer.ended))
        waited = loop.loop.time() - started
        await runner.close()
        return consumer, waited

    consumer, waited = loop.run(scenario())
    refused = "cannot reach the OpenAI API: 127.0.0.1:9 refused the connection"
    assert consumer.told == [("lost", refused, False)] * len(RECONNECT_DELAYS)
    assert consumer.ended == [EndCall(EndedReason.ERROR, refused)]
    assert sum(RECONNECT_DELAYS) <= waited < sum(RECONNECT_DELAYS) + 2
