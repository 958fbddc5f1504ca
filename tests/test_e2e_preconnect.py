"""Faster first words, end to end: the webhook opens the call's OpenAI session, the media
socket claims it. Real daphne, real database, fake OpenAI and a simulated Twilio caller."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.parse
import urllib.request

import pytest

from calls import twiml
from calls.fakes.openai_realtime import FakeRealtimeServer, Reply, Script
from calls.fakes.twilio_caller import SimulatedCaller
from calls.models import Agent, Call, EndedReason, Role
from tests.conftest import AUTH_TOKEN, twilio_sign
from tests.test_e2e_bridge import caller_for, hang_up_and_wait, sent_audio, speak

pytestmark = pytest.mark.e2e

GREETING = "Hello, thanks for calling Luigi's."


@pytest.fixture
def agent(transactional_db, fake_openai: FakeRealtimeServer) -> Agent:
    """The default agent, with a greeting so the first words are the agent's."""
    agent, _ = Agent.objects.update_or_create(
        phone_number="",
        defaults={
            "name": "Default agent",
            "instructions": "Be brief.",
            "greeting": GREETING,
            "vad_silence_ms": 400,
            "idle_timeout_seconds": 0,
        },
    )
    fake_openai.set_script(None)
    return agent


@pytest.mark.parametrize("route", ["", "w2"])
def test_stream_claims_the_session_the_webhook_opened(agent, start_server, loop, fake_openai, route):
    """With WORKER_ROUTE set (several workers behind a proxy), the Stream URL names the worker
    that answered the webhook, so the proxy can bring the media socket back to it."""
    server = start_server(OPENAI_PRECONNECT="true", WORKER_ROUTE=route)
    greeting = Reply(transcript=GREETING)
    answer = Reply(transcript="We open at nine every morning.")
    fake_openai.set_script(Script(replies=[greeting, answer], caller_transcripts=["When do you open?"]))
    before, attempts = len(fake_openai.sessions), fake_openai.connection_attempts

    async def scenario():
        caller = caller_for(server)
        assert (await caller.post_webhook()).status == 200
        assert caller.webhook.stream_url.endswith(f"/media-stream/{route}" if route else "/media-stream")
        # Open and configured while Twilio has not even opened the media socket.
        session = await fake_openai.wait_for_session(before)
        await session.wait_for_event("session.update")
        await caller.connect_stream()
        await caller.wait_heard(len(greeting.render_audio()))
        await caller.send_audio(speak())
        await caller.wait_heard(len(greeting.render_audio()) + len(answer.render_audio()))
        await session.wait_for_sent("conversation.item.input_audio_transcription.completed")
        return caller, session, await hang_up_and_wait(caller)

    caller, session, code = loop.run(scenario())
    assert code == 1000
    assert session.opened_at < caller.stream_started_at
    assert fake_openai.connection_attempts == attempts + 1 and len(fake_openai.sessions) == before + 1
    assert len(session.events_of("session.update")) == 1
    assert bytes(caller.heard) == greeting.render_audio() + answer.render_audio()
    assert bytes(session.input_audio) == sent_audio(caller)
    call = Call.objects.get()
    assert call.ended_reason == EndedReason.CALLER_HUNG_UP
    assert [(t.role, t.text) for t in call.turns.order_by("position")] == [
        (Role.AGENT, GREETING),
        (Role.CALLER, "When do you open?"),
        (Role.AGENT, "We open at nine every morning."),
    ]
    assert "claimed the pre-connected OpenAI session" in server.log()


def test_retried_webhook_opens_no_second_session(agent, start_server, loop, fake_openai):
    server = start_server(OPENAI_PRECONNECT="true")
    greeting = Reply(transcript=GREETING)
    fake_openai.set_script(Script(replies=[greeting]))
    before, attempts = len(fake_openai.sessions), fake_openai.connection_attempts

    async def scenario():
        caller = caller_for(server)
        assert (await caller.post_webhook()).status == 200
        assert (await caller.post_webhook()).status == 200  # Twilio retried: the newest token counts
        session = await fake_openai.wait_for_session(before)
        await caller.connect_stream()
        await caller.wait_heard(len(greeting.render_audio()))
        await hang_up_and_wait(caller)
        await session.wait_closed()
        return session

    session = loop.run(scenario())
    assert fake_openai.connection_attempts == attempts + 1
    assert len(session.events_of("session.update")) == 1
    assert Call.objects.get().ended_reason == EndedReason.CALLER_HUNG_UP
    assert "already pre-connecting" in server.log()


def test_with_preconnect_off_the_session_opens_at_start_as_before(agent, start_server, loop, fake_openai):
    server = start_server(OPENAI_PRECONNECT="false")
    greeting = Reply(transcript=GREETING)
    fake_openai.set_script(Script(replies=[greeting]))
    before, attempts = len(fake_openai.sessions), fake_openai.connection_attempts

    async def scenario():
        caller = caller_for(server)
        assert (await caller.post_webhook()).status == 200
        await caller.connect_stream()
        await caller.wait_heard(len(greeting.render_audio()))
        return caller, await hang_up_and_wait(caller)

    caller, code = loop.run(scenario())
    assert code == 1000
    [session] = fake_openai.sessions[before:]
    assert session.opened_at > caller.stream_started_at
    assert fake_openai.connection_attempts == attempts + 1
    assert len(session.events_of("session.update")) == 1
    assert bytes(caller.heard) == greeting.render_audio()
    assert "pre-connect" not in server.log()


def test_unclaimed_session_closes_at_its_ttl_and_a_late_stream_connects_afresh(
    agent, start_server, loop, fake_openai
):
    server = start_server(OPENAI_PRECONNECT="true", OPENAI_PRECONNECT_TTL="0.5")
    greeting = Reply(transcript=GREETING)
    fake_openai.set_script(lambda: Script(replies=[Reply(transcript=GREETING)]))
    before, attempts = len(fake_openai.sessions), fake_openai.connection_attempts

    async def scenario():
        caller = caller_for(server)
        assert (await caller.post_webhook()).status == 200
        unclaimed = await fake_openai.wait_for_session(before)
        await unclaimed.wait_for_event("session.update")
        await unclaimed.wait_closed(timeout=10)
        # The stream token outlives the pre-connect: a stream this late still works.
        await caller.connect_stream()
        await caller.wait_heard(len(greeting.render_audio()))
        await hang_up_and_wait(caller)
        return unclaimed, caller

    unclaimed, caller = loop.run(scenario())
    assert unclaimed.close_code == 1000
    assert unclaimed.events_of("response.create") == [] and unclaimed.append_count == 0
    assert fake_openai.connection_attempts == attempts + 2
    fresh = fake_openai.sessions[before + 1]
    assert fresh.opened_at > caller.stream_started_at
    assert bytes(caller.heard) == greeting.render_audio()
    assert "not claimed within 0.5 s" in server.log()


def test_a_dropped_preconnected_session_is_replaced_by_a_fresh_configured_one(
    agent, start_server, loop, fake_openai
):
    server = start_server(OPENAI_PRECONNECT="true")
    greeting = Reply(transcript=GREETING)
    answer = Reply(transcript="We are open until ten tonight.")
    scripts = iter(
        [
            Script(replies=[greeting], close_after_first_delta=1011),
            Script(replies=[answer], caller_transcripts=["How late are you open?"]),
        ]
    )
    fake_openai.set_script(lambda: next(scripts))
    before, attempts = len(fake_openai.sessions), fake_openai.connection_attempts

    async def scenario():
        caller = caller_for(server)
        assert (await caller.post_webhook()).status == 200
        first = await fake_openai.wait_for_session(before)
        await first.wait_for_event("session.update")
        await caller.connect_stream()
        second = await fake_openai.wait_for_session(before + 1, timeout=10)
        await second.wait_for_event("session.update")  # the reconnect configures its own session
        await caller.send_audio(speak())
        await caller.wait_for(lambda: answer.render_audio() in bytes(caller.heard), timeout=15)
        await hang_up_and_wait(caller)
        return caller, first, second

    caller, first, second = loop.run(scenario())
    assert first.opened_at < caller.stream_started_at < second.opened_at
    assert len(first.events_of("session.update")) == 1 == len(second.events_of("session.update"))
    assert fake_openai.connection_attempts == attempts + 2
    assert Call.objects.get().ended_reason == EndedReason.CALLER_HUNG_UP


# --- a pre-connected session the call will not use is closed at once (issue 12, defect 5) -----

# Far beyond every wait below: a session closed within them was not closed by its TTL.
LONG_TTL = "120"


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, body, headers, method="POST"), timeout=15) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


async def post_call_status(server, caller: SimulatedCaller, status: str, *, token: str = AUTH_TOKEN) -> int:
    """Twilio's call status callback for ``caller``'s call, signed as Twilio signs it (with
    another ``token``: forged)."""
    params = caller.webhook_params() | {"CallStatus": status, "SequenceNumber": "1"}
    body = urllib.parse.urlencode(params).encode()
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Twilio-Signature": twilio_sign(server.url + "/call-status", params, token),
    }
    return await asyncio.to_thread(_post, server.url + "/call-status", body, headers)


@pytest.mark.parametrize("refusal", ["wrong token", "superseded token", "unexpected stream"])
def test_refused_stream_closes_the_session_its_webhook_opened(
    agent, start_server, loop, fake_openai, refusal
):
    server = start_server(OPENAI_PRECONNECT="true", OPENAI_PRECONNECT_TTL=LONG_TTL)
    before = len(fake_openai.sessions)

    async def scenario():
        caller = caller_for(
            server, stream_sid="MZ-not-a-stream-sid" if refusal == "unexpected stream" else None
        )
        first = await caller.post_webhook()
        assert first.status == 200
        parameters = dict(first.stream_parameters)
        if refusal == "wrong token":
            parameters[twiml.PARAM_TOKEN] = "not-the-token-of-this-call"
        elif refusal == "superseded token":  # Twilio retried the webhook: only the newest token counts
            assert (await caller.post_webhook()).status == 200
        session = await fake_openai.wait_for_session(before)
        await session.wait_for_event("session.update")
        await caller.connect_stream(parameters=parameters)
        code = await caller.wait_closed_by_server()
        await caller.aclose()
        await session.wait_closed(timeout=5)
        return caller, session, code

    caller, session, code = loop.run(scenario())
    assert code == (4400 if refusal == "unexpected stream" else 4403)
    assert session.close_code == 1000
    assert session.events_of("response.create") == [] and session.append_count == 0
    assert len(fake_openai.sessions) == before + 1
    log = server.log()
    assert (
        f"call {caller.call_sid}: closing its pre-connected OpenAI session: its media socket was refused"
        in log
    )
    assert "not claimed within" not in log


def test_start_naming_another_call_in_its_parameters_does_not_close_that_session(
    agent, start_server, loop, fake_openai
):
    """A start that contradicts itself proves nothing about either call: a forged one must not
    cost the real call its pre-connected session, which its real stream then claims."""
    server = start_server(OPENAI_PRECONNECT="true", OPENAI_PRECONNECT_TTL=LONG_TTL)
    greeting = Reply(transcript=GREETING)
    fake_openai.set_script(Script(replies=[greeting]))
    before, attempts = len(fake_openai.sessions), fake_openai.connection_attempts

    async def scenario():
        caller = caller_for(server)
        assert (await caller.post_webhook()).status == 200
        session = await fake_openai.wait_for_session(before)
        await session.wait_for_event("session.update")
        forger = caller_for(server, call_sid=caller.call_sid)
        assert caller.webhook is not None and caller.webhook.stream_url is not None
        forged = caller.webhook.stream_parameters | {twiml.PARAM_CALL_SID: "CA" + "f" * 32}
        await forger.connect_stream(stream_url=caller.webhook.stream_url, parameters=forged)
        forged_code = await forger.wait_closed_by_server()
        await forger.aclose()
        await caller.connect_stream()
        await caller.wait_heard(len(greeting.render_audio()))
        return session, forged_code, await hang_up_and_wait(caller)

    session, forged_code, code = loop.run(scenario())
    assert (forged_code, code) == (4403, 1000)
    assert fake_openai.connection_attempts == attempts + 1
    assert len(session.events_of("response.create")) == 1  # the greeting, on the pre-connected session
    log = server.log()
    assert "start parameters are not for this call" in log
    assert "claimed the pre-connected OpenAI session" in log
    assert "closing its pre-connected" not in log


@pytest.mark.parametrize("status", ["completed", "canceled", "no-answer"])
def test_call_that_ended_before_its_stream_closes_its_session(agent, start_server, loop, fake_openai, status):
    server = start_server(OPENAI_PRECONNECT="true", OPENAI_PRECONNECT_TTL=LONG_TTL)
    before = len(fake_openai.sessions)

    async def scenario():
        caller = caller_for(server)
        assert (await caller.post_webhook()).status == 200
        session = await fake_openai.wait_for_session(before)
        await session.wait_for_event("session.update")
        assert await post_call_status(server, caller, status) == 200
        await session.wait_closed(timeout=5)
        return caller, session

    caller, session = loop.run(scenario())
    assert session.close_code == 1000
    assert session.events_of("response.create") == [] and session.append_count == 0
    assert (
        f"call {caller.call_sid}: closing its pre-connected OpenAI session: Twilio reports the call {status}"
        in (server.log())
    )
    assert Call.objects.get(call_sid=caller.call_sid).status == status


def test_call_still_going_keeps_its_session_and_a_replayed_start_cannot_close_it(
    agent, start_server, loop, fake_openai
):
    """Status callbacks that are not final, or not Twilio's, leave the session for the stream;
    once claimed, a replay of the stream's start (same token, already spent) is refused and
    the call goes on."""
    server = start_server(OPENAI_PRECONNECT="true", OPENAI_PRECONNECT_TTL=LONG_TTL)
    greeting = Reply(transcript=GREETING)
    answer = Reply(transcript="We open at nine every morning.")
    fake_openai.set_script(Script(replies=[greeting, answer], caller_transcripts=["When do you open?"]))
    before, attempts = len(fake_openai.sessions), fake_openai.connection_attempts

    async def scenario():
        caller = caller_for(server)
        assert (await caller.post_webhook()).status == 200
        session = await fake_openai.wait_for_session(before)
        await session.wait_for_event("session.update")
        assert await post_call_status(server, caller, "in-progress") == 200
        assert await post_call_status(server, caller, "completed", token="not-our-auth-token") == 403
        await caller.connect_stream()
        await caller.wait_heard(len(greeting.render_audio()))
        replay = caller_for(server, call_sid=caller.call_sid)
        assert caller.webhook is not None and caller.webhook.stream_url is not None
        await replay.connect_stream(
            stream_url=caller.webhook.stream_url, parameters=caller.webhook.stream_parameters
        )
        replay_code = await replay.wait_closed_by_server()
        await replay.aclose()
        await caller.send_audio(speak())
        await caller.wait_heard(len(greeting.render_audio()) + len(answer.render_audio()))
        assert not session.closed.is_set()
        code = await hang_up_and_wait(caller)
        await session.wait_closed()
        return caller, session, replay_code, code

    caller, session, replay_code, code = loop.run(scenario())
    assert (replay_code, code) == (4403, 1000)
    assert fake_openai.connection_attempts == attempts + 1
    assert bytes(caller.heard) == greeting.render_audio() + answer.render_audio()
    assert bytes(session.input_audio) == sent_audio(caller)
    assert Call.objects.get().ended_reason == EndedReason.CALLER_HUNG_UP
    log = server.log()
    assert "already used stream token" in log
    assert "claimed the pre-connected OpenAI session" in log
    assert "closing its pre-connected" not in log
