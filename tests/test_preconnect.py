"""The pre-connect registry against the fake OpenAI server, over real sockets.

No sleeps for synchronisation: every wait is on an event of the fake or a task, bounded.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from calls import preconnect, realtime
from calls.fakes.openai_realtime import FakeRealtimeServer
from calls.preconnect import Registry
from calls.realtime import AgentConfig
from calls.simulation import free_port

KEY = "sk-test-preconnect-0123456789"
AGENT = AgentConfig(instructions="Be brief.", model="gpt-realtime-2.1", greeting="Hello!")
SID = "CA" + "1" * 32


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    """Run one scenario and fail if it leaves a task behind (a socket nobody closes)."""

    async def main() -> Any:
        result = await test()
        me = asyncio.current_task()
        leftover = [t for t in asyncio.all_tasks() if t is not me]
        if leftover:  # let already-cancelled library tasks take their last step
            await asyncio.wait(leftover, timeout=2)
        assert not [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        return result

    return asyncio.run(main())


def start(registry: Registry, server: FakeRealtimeServer, call_sid: str = SID, agent: AgentConfig = AGENT):
    url = realtime.connect_url(server.url, agent.model)
    return registry.start(call_sid, agent, url=url, api_key=KEY)


def test_claimed_session_is_open_configured_and_single_use():
    async def scenario() -> None:
        async with FakeRealtimeServer(api_key=KEY) as server:
            registry = Registry(ttl=30, max_pending=10)
            pending = start(registry, server)
            assert pending is not None and SID in registry
            assert registry.claim(SID) is pending
            assert registry.claim(SID) is None and len(registry) == 0
            ws = await pending.connection(AGENT, timeout=5)
            assert ws is not None
            fake = await server.wait_for_session(0)
            update = await fake.wait_for_event("session.update")
            assert update["session"] == realtime.session_update(AGENT)["session"]
            # What OpenAI sent while nobody read is still there, in order, for the bridge.
            assert json.loads(await ws.recv())["type"] == "session.created"
            assert json.loads(await ws.recv())["type"] == "session.updated"
            await ws.close()
            await fake.wait_closed()
            assert len(fake.events_of("session.update")) == 1
            assert server.connection_attempts == 1

    run(scenario)


def test_unclaimed_session_is_closed_with_1000_after_its_ttl():
    async def scenario() -> float:
        async with FakeRealtimeServer(api_key=KEY) as server:
            registry = Registry(ttl=0.3, max_pending=10)
            began = asyncio.get_running_loop().time()
            start(registry, server)
            fake = await server.wait_for_session(0)
            await fake.wait_for_event("session.update")
            await fake.wait_closed(timeout=5)
            assert fake.close_code == 1000
            assert SID not in registry and registry.claim(SID) is None
            return asyncio.get_running_loop().time() - began

    assert run(scenario) >= 0.3


def test_session_still_connecting_at_its_ttl_is_abandoned():
    async def scenario() -> None:
        # The fake's stop waits out the handshake it is holding: keep it short.
        async with FakeRealtimeServer(api_key=KEY, handshake_delay=1) as server:
            registry = Registry(ttl=0.2, max_pending=10)
            pending = start(registry, server)
            assert pending is not None
            await asyncio.gather(pending.task, return_exceptions=True)
            assert pending.task.cancelled()
            assert SID not in registry and server.sessions == []

    run(scenario)


def test_retried_webhook_keeps_the_one_pending_session():
    async def scenario() -> None:
        async with FakeRealtimeServer(api_key=KEY) as server:
            registry = Registry(ttl=30, max_pending=10)
            first = start(registry, server)
            assert start(registry, server) is None
            assert registry.claim(SID) is first and len(registry) == 0
            assert first is not None
            ws = await first.connection(AGENT, timeout=5)
            assert ws is not None
            await ws.close()
            assert server.connection_attempts == 1

    run(scenario)


def test_registry_refuses_beyond_its_cap_until_a_slot_frees():
    async def scenario() -> None:
        async with FakeRealtimeServer(api_key=KEY) as server:
            registry = Registry(ttl=30, max_pending=2)
            a, b = start(registry, server, "CA" + "a" * 32), start(registry, server, "CA" + "b" * 32)
            assert a is not None and b is not None
            assert start(registry, server, "CA" + "c" * 32) is None
            assert len(registry) == 2
            assert registry.claim(a.call_sid) is a
            c = start(registry, server, "CA" + "c" * 32)
            assert c is not None and len(registry) == 2
            for pending in (a, b, c):
                registry.claim(pending.call_sid)
                await pending.discard()

    run(scenario)


def test_failed_preconnect_is_forgotten_and_logged_without_the_key(caplog):
    caplog.set_level(logging.INFO, logger="calls.preconnect")

    async def scenario() -> None:
        async with FakeRealtimeServer(api_key=KEY) as server:
            registry = Registry(ttl=30, max_pending=10)
            pending = registry.start(SID, AGENT, url=server.url.replace("/v1/realtime", "/nope"), api_key=KEY)
            assert pending is not None
            await asyncio.gather(pending.task, return_exceptions=True)
            assert SID not in registry and registry.claim(SID) is None
            assert server.connection_attempts == 1

    run(scenario)
    assert f"call {SID}: could not pre-connect to OpenAI" in caplog.text
    assert "404" in caplog.text
    assert KEY not in caplog.text and "Bearer" not in caplog.text


def test_claimed_session_that_fails_to_connect_gives_none():
    async def scenario() -> None:
        registry = Registry(ttl=30, max_pending=10)
        url = f"ws://127.0.0.1:{free_port()}/v1/realtime"  # nobody listens
        pending = registry.start(SID, AGENT, url=url, api_key=KEY)
        assert registry.claim(SID) is pending and pending is not None
        assert await pending.connection(AGENT, timeout=5) is None

    run(scenario)


def test_session_configured_for_another_agent_is_closed_not_used():
    async def scenario() -> None:
        async with FakeRealtimeServer(api_key=KEY) as server:
            registry = Registry(ttl=30, max_pending=10)
            pending = start(registry, server)
            assert registry.claim(SID) is pending and pending is not None
            edited = AgentConfig(instructions="Be very brief.", model=AGENT.model, greeting=AGENT.greeting)
            assert await pending.connection(edited, timeout=5) is None
            fake = await server.wait_for_session(0)
            await fake.wait_closed()
            assert fake.close_code == 1000

    run(scenario)


def test_giving_up_on_a_connecting_session_stops_its_connect():
    async def scenario() -> None:
        async with FakeRealtimeServer(api_key=KEY, handshake_delay=5) as server:
            registry = Registry(ttl=30, max_pending=10)
            pending = start(registry, server)
            assert registry.claim(SID) is pending and pending is not None
            waiter = asyncio.create_task(pending.connection(AGENT, timeout=5))
            await asyncio.sleep(0)  # let it start waiting (ordering, not timing)
            waiter.cancel()
            await asyncio.gather(waiter, return_exceptions=True)
            await asyncio.gather(pending.task, return_exceptions=True)
            assert pending.task.cancelled()

    run(scenario)


def test_module_registry_uses_the_settings(settings):
    settings.OPENAI_PRECONNECT_TTL = 2.5
    settings.MAX_CONCURRENT_CALLS = 7
    preconnect._registry = None
    try:
        registry = preconnect.registry()
        assert (registry.ttl, registry.max_pending) == (2.5, 7)
        settings.MAX_CONCURRENT_CALLS = 0
        preconnect._registry = None
        assert preconnect.registry().max_pending == preconnect.DEFAULT_MAX_PENDING
    finally:
        preconnect._registry = None


def test_claim_without_a_pending_session_is_none():
    async def scenario() -> None:
        assert Registry(ttl=1, max_pending=1).claim(SID) is None

    run(scenario)


# --- discarding: the call will not use its session (issue 12, defect 5) ----------------------


def test_discarded_session_is_closed_with_1000_at_once_and_logged(caplog):
    caplog.set_level(logging.INFO, logger="calls.preconnect")

    async def scenario() -> None:
        async with FakeRealtimeServer(api_key=KEY) as server:
            registry = Registry(ttl=30, max_pending=10)
            pending = start(registry, server)
            assert pending is not None
            fake = await server.wait_for_session(0)
            await fake.wait_for_event("session.update")
            assert registry.discard(SID, "Twilio reports the call completed") is True
            assert SID not in registry and registry.claim(SID) is None
            assert pending.expiry is not None and pending.expiry.cancelled()  # no second close at the TTL
            await fake.wait_closed(timeout=5)  # the TTL is 30 s
            assert fake.close_code == 1000

    run(scenario)
    lines = [r.getMessage() for r in caplog.records if "closing its pre-connected" in r.getMessage()]
    assert lines == [
        f"call {SID}: closing its pre-connected OpenAI session: Twilio reports the call completed"
    ]


def test_discarding_a_session_still_connecting_stops_its_connect():
    async def scenario() -> None:
        async with FakeRealtimeServer(api_key=KEY, handshake_delay=1) as server:
            registry = Registry(ttl=30, max_pending=10)
            pending = start(registry, server)
            assert pending is not None
            assert registry.discard(SID, "its media socket was refused") is True
            await asyncio.gather(pending.task, return_exceptions=True)
            assert pending.task.cancelled()
            assert server.sessions == [] and len(registry) == 0

    run(scenario)


def test_discard_leaves_other_calls_and_claimed_sessions_alone(caplog):
    caplog.set_level(logging.INFO, logger="calls.preconnect")
    other = "CA" + "2" * 32

    async def scenario() -> None:
        async with FakeRealtimeServer(api_key=KEY) as server:
            registry = Registry(ttl=30, max_pending=10)
            claimed = start(registry, server)
            used = await server.wait_for_session(0)  # this call's socket is the fake's first
            waiting = start(registry, server, other)
            assert claimed is not None and waiting is not None
            assert registry.claim(SID) is claimed
            ws = await claimed.connection(AGENT, timeout=5)
            assert ws is not None
            # A refused stream replaying this call's token comes after its real stream claimed.
            assert registry.discard(SID, "its media socket was refused") is False
            assert registry.discard("CA" + "3" * 32, "Twilio reports the call completed") is False
            assert other in registry
            # The claimed socket is still open and usable.
            await ws.send(realtime.dumps({"type": "response.create"}))
            await used.wait_for_event("response.create")
            assert not used.closed.is_set()
            await ws.close()
            assert registry.claim(other) is waiting
            await waiting.discard()

    run(scenario)
    assert "closing its pre-connected" not in caplog.text


def test_module_discard_uses_the_process_registry(settings):
    settings.OPENAI_PRECONNECT_TTL = 30
    preconnect._registry = None

    async def scenario() -> None:
        async with FakeRealtimeServer(api_key=KEY) as server:
            settings.OPENAI_REALTIME_URL = server.url
            settings.OPENAI_API_KEY = KEY
            pending = preconnect.start(SID, AGENT)
            assert pending is not None
            fake = await server.wait_for_session(0)
            assert preconnect.discard(SID, "the call ended") is True
            assert preconnect.discard(SID, "the call ended") is False
            await fake.wait_closed(timeout=5)

    try:
        run(scenario)
    finally:
        preconnect._registry = None
