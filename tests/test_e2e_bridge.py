"""End to end over real sockets: simulated Twilio caller -> daphne running our ASGI app ->
fake OpenAI Realtime server, with the real database in between."""

from __future__ import annotations

import asyncio
import base64
import json

import pytest

from calls.fakes.openai_realtime import FakeRealtimeServer, Reply, Script
from calls.fakes.twilio_caller import (
    CallerConfig,
    SimulatedCaller,
    StreamRejected,
    mulaw_silence,
    mulaw_tone,
)
from calls.models import Agent, Call, EndedReason, Role
from tests.conftest import AUTH_TOKEN, OPENAI_KEY

pytestmark = pytest.mark.e2e


def caller_for(live, **config) -> SimulatedCaller:
    return SimulatedCaller(
        CallerConfig(base_url=live.url, public_base_url=live.url, auth_token=AUTH_TOKEN, **config)
    )


async def dial(caller: SimulatedCaller) -> None:
    webhook = await caller.post_webhook()
    assert webhook.status == 200, webhook.body
    await caller.connect_stream()


async def hang_up_and_wait(caller: SimulatedCaller) -> int | None:
    """Send Twilio's ``stop`` and wait for the server to finish the call and close."""
    stop = {
        "event": "stop",
        "sequenceNumber": "9999",
        "stop": {"accountSid": caller.config.account_sid, "callSid": caller.call_sid},
        "streamSid": caller.stream_sid,
    }
    await caller.send_raw(json.dumps(stop))
    code = await caller.wait_closed_by_server(timeout=15)
    await caller.aclose()
    return code


def sent_audio(caller: SimulatedCaller) -> bytes:
    return b"".join(
        base64.b64decode(m["media"]["payload"]) for m in caller.sent_messages if m.get("event") == "media"
    )


def speak(ms: int = 600, silence_ms: int = 700) -> bytes:
    """A burst of 'speech' (a tone the fake's VAD hears) followed by the silence that ends a turn."""
    return mulaw_tone(ms, freq=300, amplitude=9000) + mulaw_silence(silence_ms)


def test_greeting_is_heard_byte_for_byte_and_stored(live, loop, fake_openai: FakeRealtimeServer):
    Agent.objects.update(greeting="Hello, thanks for calling Luigi's.")
    greeting = Reply(transcript="Hello, thanks for calling Luigi's.")
    fake_openai.set_script(Script(replies=[greeting]))
    sessions_before = len(fake_openai.sessions)

    async def scenario():
        caller = caller_for(live)
        await dial(caller)
        await caller.wait_heard(len(greeting.render_audio()))
        return caller, await hang_up_and_wait(caller)

    caller, code = loop.run(scenario())
    assert bytes(caller.heard) == greeting.render_audio()
    assert caller.protocol_errors == []
    session = fake_openai.sessions[sessions_before]
    assert session.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert "openai-beta" not in session.headers
    assert session.model == "gpt-realtime-2.1"
    call = Call.objects.get()
    assert call.ended_reason == EndedReason.CALLER_HUNG_UP and call.ended_at is not None
    assert call.stream_sid == caller.stream_sid
    assert call.usage["output_tokens"] > 0
    [turn] = call.turns.all()
    assert (turn.role, turn.text, turn.interrupted) == (
        Role.AGENT,
        "Hello, thanks for calling Luigi's.",
        False,
    )
    assert code == 1000


def test_question_and_answer_pass_audio_unchanged_both_ways(live, loop, fake_openai):
    answer = Reply(transcript="We open at nine every morning.")
    fake_openai.set_script(Script(replies=[answer], caller_transcripts=["When do you open?"]))
    sessions_before = len(fake_openai.sessions)

    async def scenario():
        caller = caller_for(live)
        await dial(caller)
        await caller.send_audio(speak())
        await caller.wait_heard(len(answer.render_audio()))
        session = fake_openai.sessions[sessions_before]
        # Transcription is asynchronous: it may land after the answer was heard.
        await session.wait_for_sent("conversation.item.input_audio_transcription.completed")
        return caller, await hang_up_and_wait(caller)

    caller, _ = loop.run(scenario())
    session = fake_openai.sessions[sessions_before]
    assert bytes(session.input_audio) == sent_audio(caller)
    assert bytes(caller.heard) == answer.render_audio()
    call = Call.objects.get()
    turns = list(call.turns.order_by("position"))
    assert [(t.role, t.text) for t in turns] == [
        (Role.CALLER, "When do you open?"),
        (Role.AGENT, "We open at nine every morning."),
    ]
    assert turns[0].started_ms is not None and turns[0].ended_ms > turns[0].started_ms
    assert turns[1].started_ms > turns[0].started_ms


@pytest.mark.parametrize(
    ("condition", "link_delay", "pace"),
    [("ideal network", 0.0, 0.0), ("model slower than real time", 0.0, 0.15), ("40 ms link", 0.04, 0.0)],
)
def test_barge_in_truncates_at_what_the_caller_heard(live, loop, fake_openai, condition, link_delay, pace):
    Agent.objects.update(greeting="Let me tell you about all of our specials today.")
    long_answer = Reply(transcript="Let me tell you about all of our specials today. " * 2, pace=pace)
    fake_openai.set_script(Script(replies=[long_answer, Reply(transcript="Of course.")]))
    sessions_before = len(fake_openai.sessions)

    async def scenario():
        caller = caller_for(live, link_delay=link_delay)
        await dial(caller)
        await caller.wait_heard(8000)  # one second of the greeting
        await caller.send_audio(speak(400, 200))
        session = fake_openai.sessions[sessions_before]
        truncate = await session.wait_for_event("conversation.item.truncate")
        return caller, truncate, await hang_up_and_wait(caller)

    caller, truncate, _ = loop.run(scenario())
    heard_ms = len(caller.heard) / 8
    assert len(caller.heard) < len(long_answer.render_audio())  # it really was cut off
    assert abs(truncate["audio_end_ms"] - heard_ms) <= 20, (condition, truncate, heard_ms)
    if pace == 0.0:  # audio was still buffered at Twilio: it had to be cleared
        assert caller.clears
    session = fake_openai.sessions[sessions_before]
    assert not [e for e in session.sent_of("error") if "shorter" in json.dumps(e)]
    [agent_turn] = Call.objects.get().turns.filter(role=Role.AGENT, interrupted=True)
    assert agent_turn.heard_ms == truncate["audio_end_ms"]


def only_preconnected_sessions(fake_openai, before: tuple[int, int], webhooks: int) -> bool:
    """The signed webhooks may each open a session ahead of time (pre-connect); a refused media
    socket adds none and uses none of them: nothing but ``session.update`` reaches OpenAI.
    ``before``: (connection attempts, sessions) when the test started."""
    attempts, sessions = before
    new = fake_openai.sessions[sessions:]
    return fake_openai.connection_attempts - attempts <= webhooks and all(
        {event.get("type") for event in session.received} <= {"session.update"} for session in new
    )


def test_bad_signature_is_refused_and_no_openai_session_is_used(live, loop, fake_openai):
    before = (fake_openai.connection_attempts, len(fake_openai.sessions))

    async def scenario():
        caller = caller_for(live)
        assert (await caller.post_webhook()).status == 200
        with pytest.raises(StreamRejected) as rejected:
            await caller.connect_stream(signature="bm90IHRoZSBzaWduYXR1cmU=")
        await caller.aclose()
        return rejected.value.status

    assert loop.run(scenario()) == 403
    assert only_preconnected_sessions(fake_openai, before, webhooks=1)


@pytest.mark.parametrize("tamper", ["missing token", "wrong token", "token of another call"])
def test_bad_token_closes_with_4403_and_no_openai_session_is_used(live, loop, fake_openai, tamper):
    before = (fake_openai.connection_attempts, len(fake_openai.sessions))

    async def scenario():
        other = caller_for(live)
        await other.post_webhook()
        caller = caller_for(live)
        webhook = await caller.post_webhook()
        parameters = dict(webhook.stream_parameters)
        if tamper == "missing token":
            del parameters["token"]
        elif tamper == "wrong token":
            parameters["token"] = "x" * 32
        else:
            parameters["token"] = other.webhook.stream_parameters["token"]
        await caller.connect_stream(parameters=parameters)
        code = await caller.wait_closed_by_server(timeout=10)
        await caller.aclose()
        await other.aclose()
        return code

    assert loop.run(scenario()) == 4403
    assert only_preconnected_sessions(fake_openai, before, webhooks=2)


def test_replayed_token_is_refused(live, loop, fake_openai):
    fake_openai.set_script(Script(replies=[]))
    sessions_before = len(fake_openai.sessions)

    async def scenario():
        first = caller_for(live)
        await dial(first)
        await fake_openai.wait_for_session(sessions_before)
        attempts = fake_openai.connection_attempts
        replay = caller_for(live, call_sid=first.call_sid)
        await replay.connect_stream(
            stream_url=first.webhook.stream_url, parameters=first.webhook.stream_parameters
        )
        code = await replay.wait_closed_by_server(timeout=10)
        await replay.aclose()
        await hang_up_and_wait(first)
        return code, attempts

    code, attempts = loop.run(scenario())
    assert code == 4403
    assert fake_openai.connection_attempts == attempts


def test_openai_rejecting_the_session_ends_the_call_with_the_error(live, loop, fake_openai):
    fake_openai.set_script(
        Script(
            reject_session_update={
                "type": "invalid_request_error",
                "code": "unknown_parameter",
                "message": "Unknown parameter: 'session.temperature'.",
                "param": "session.temperature",
            }
        )
    )

    async def scenario():
        caller = caller_for(live)
        await dial(caller)
        code = await caller.wait_closed_by_server(timeout=10)
        await caller.aclose()
        return code

    assert loop.run(scenario()) == 4500
    call = Call.objects.get()
    assert call.ended_reason == EndedReason.ERROR
    assert "unknown_parameter" in call.error
    assert call.ended_at is not None
    # The OpenAI session does not linger.
    loop.run(fake_openai.sessions[-1].wait_closed())


def test_twenty_concurrent_calls_hear_only_their_own_agent(live, loop, fake_openai):
    count = 20
    Agent.objects.update(greeting="Hello!")
    replies: dict[int, Reply] = {}

    def script() -> Script:
        n = len(replies)
        replies[n] = Reply(transcript=f"Hello caller number {n}, welcome.")
        return Script(replies=[replies[n]])

    fake_openai.set_script(script)
    sessions_before = len(fake_openai.sessions)

    async def one_call(n: int):
        caller = caller_for(live)
        await dial(caller)
        await caller.wait_for(lambda: len(caller.heard) >= 4000, timeout=30)
        await caller.wait_for(lambda: not caller.buffered_bytes and len(caller.heard) > 0, timeout=30)
        # Then each caller says something only it says, so its session can be found. (Said
        # before the greeting, it could interrupt it: the session is ready at once now.)
        await caller.send_audio(mulaw_tone(200, freq=200 + 37 * n, amplitude=3000), realtime=False)
        return caller

    async def scenario():
        callers = await asyncio.gather(*(one_call(n) for n in range(count)))
        for caller in callers:
            await caller.wait_for(lambda c=caller: len(c.heard) >= len(c.received_media), timeout=30)
        sessions = fake_openai.sessions[sessions_before:]
        await asyncio.gather(*(s.wait_for_input_audio(1600, timeout=30) for s in sessions))
        await asyncio.gather(*(hang_up_and_wait(c) for c in callers))
        await asyncio.gather(*(s.wait_closed(timeout=10) for s in sessions))
        return callers, sessions

    callers, sessions = loop.run(scenario(), timeout=120)
    assert len(sessions) == count
    served = {}
    for caller in callers:
        mine = sent_audio(caller)
        [session] = [s for s in sessions if bytes(s.input_audio) == mine]
        [item_audio] = [bytes(a) for a in session.output_audio.values()]
        assert bytes(caller.heard) == item_audio
        served[caller.call_sid] = session
    assert len({id(s) for s in served.values()}) == count
    assert Call.objects.filter(ended_reason=EndedReason.CALLER_HUNG_UP).count() == count
    # Nothing lingers on our side of the test either.
    pending = loop.run(_caller_tasks())
    assert pending == []


async def _caller_tasks() -> list[str]:
    return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("SimulatedCaller")]


def test_caller_audio_sent_while_openai_connects_is_not_lost(live, loop, fake_openai):
    fake_openai.set_script(Script(connect_delay=0.5, caller_transcripts=["Hi, is this Luigi's?"]))
    sessions_before = len(fake_openai.sessions)

    async def scenario():
        caller = caller_for(live)
        await dial(caller)
        await caller.send_audio(speak(300, 600), realtime=False)  # before OpenAI is ready
        session = await fake_openai.wait_for_session(sessions_before)
        await session.wait_for_sent("input_audio_buffer.committed", timeout=10)
        await hang_up_and_wait(caller)
        return caller, session

    caller, session = loop.run(scenario())
    assert bytes(session.input_audio).startswith(sent_audio(caller))


def test_malformed_frames_are_skipped_and_the_call_goes_on(live, loop, fake_openai):
    answer = Reply(transcript="Still here.")
    fake_openai.set_script(Script(replies=[answer]))

    async def scenario():
        caller = caller_for(live)
        await dial(caller)
        for frame in (
            "not json",
            b"\x00\x01binary",
            json.dumps(
                {"event": "media", "media": {"payload": "***not base64***"}, "streamSid": caller.stream_sid}
            ),
            json.dumps({"event": "media", "streamSid": caller.stream_sid}),
            json.dumps({"event": "teleport", "streamSid": caller.stream_sid}),
            json.dumps({"event": "mark", "mark": {"name": "never-sent"}, "streamSid": caller.stream_sid}),
            json.dumps({"event": "media", "media": {"payload": "AAAA"}, "streamSid": "MZ" + "0" * 32}),
            json.dumps([1, 2, 3]),
        ):
            await caller.send_raw(frame)
        await caller.send_audio(speak())
        await caller.wait_heard(len(answer.render_audio()))
        return caller, await hang_up_and_wait(caller)

    caller, code = loop.run(scenario())
    assert bytes(caller.heard) == answer.render_audio()
    assert code == 1000
    assert "dropped a Twilio frame" in live.log()
    assert Call.objects.get().ended_reason == EndedReason.CALLER_HUNG_UP
