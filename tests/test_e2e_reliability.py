"""End to end: the AI side failing. The caller must never be left in silence, and nothing
already said may be lost."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from calls.bridge import replay
from calls.fakes.openai_realtime import Reply, Script
from calls.models import Agent, Call, CallStatus, EndedReason, Role
from tests.servers import free_port
from tests.test_e2e_bridge import caller_for, dial, hang_up_and_wait, sent_audio, speak

pytestmark = pytest.mark.e2e

PORT = free_port()  # nothing listens there
APOLOGY = "Sorry, our assistant is not available right now. Please call again later. Goodbye."


async def call_until_server_closes(server):
    caller = caller_for(server)
    await dial(caller)
    code = await caller.wait_closed_by_server(timeout=20)
    after = await caller.follow_connect_action()
    await caller.aclose()
    return caller, code, after


def said(twiml: str) -> list[str]:
    return [say.text or "" for say in ET.fromstring(twiml).iter("Say")]


@pytest.mark.parametrize(
    ("case", "overrides", "error"),
    [
        (
            "connection refused",
            {"OPENAI_REALTIME_URL": f"ws://127.0.0.1:{PORT}/v1/realtime"},
            f"cannot reach the OpenAI API: 127.0.0.1:{PORT} refused the connection",
        ),
        (
            "wrong API key",
            {"OPENAI_API_KEY": "sk-wrong-key-000000"},
            "OpenAI refused the session: invalid_api_key: Incorrect API key provided: sk-...0000.",
        ),
        # Production (DEBUG off) never falls back to the local stand-in (issue 13).
        ("no API key", {"OPENAI_API_KEY": "", "OPENAI_REALTIME_URL": ""}, "OPENAI_API_KEY is not set"),
    ],
)
def test_openai_unreachable_the_caller_hears_an_apology(
    live, loop, start_server, fake_openai, case, overrides, error
):
    server = start_server(**overrides)

    caller, code, after = loop.run(call_until_server_closes(server))

    assert code == 4500
    assert caller.heard == bytearray()
    assert said(after.twiml) == [APOLOGY] and "Hangup" in after.verbs
    call = Call.objects.get()
    assert (call.status, call.ended_reason, call.error) == (CallStatus.FAILED, EndedReason.ERROR, error)
    assert call.model != "stand-in"
    assert OPENAI_KEY_FRAGMENT not in call.error


OPENAI_KEY_FRAGMENT = "sk-wrong-key"


def test_rejected_session_is_an_apology_too(live, loop, fake_openai):
    fake_openai.set_script(
        Script(
            reject_session_update={"code": "beta_api_shape_disabled", "message": "The Realtime Beta API..."}
        )
    )
    _, code, after = loop.run(call_until_server_closes(live))
    assert code == 4500 and said(after.twiml) == [APOLOGY]


def test_normal_endings_hang_up_without_apology(live, loop, fake_openai, twilio):
    fake_openai.set_script(Script(replies=[]))

    async def scenario():
        caller = caller_for(live)
        await dial(caller)
        await hang_up_and_wait(caller)
        return await caller.follow_connect_action()

    after = loop.run(scenario())
    assert said(after.twiml) == [] and after.verbs == ["Hangup"]


@pytest.mark.parametrize("close_code", [1001, 1011, 1012])
def test_dropped_session_reconnects_and_the_conversation_goes_on(live, loop, fake_openai, close_code):
    Agent.objects.update(greeting="Hello, this is Luigi's, how can I help?")
    greeting = Reply(transcript="Hello, this is Luigi's, how can I help?")
    answer = Reply(transcript="We are open until ten tonight.")
    scripts = iter(
        [
            Script(replies=[greeting], close_after_first_delta=close_code),
            Script(replies=[answer], caller_transcripts=["How late are you open?"]),
        ]
    )
    fake_openai.set_script(lambda: next(scripts))
    sessions_before = len(fake_openai.sessions)

    async def scenario():
        caller = caller_for(live)
        await dial(caller)
        second = await fake_openai.wait_for_session(sessions_before + 1, timeout=10)
        await second.wait_for_event("session.update")
        await caller.send_audio(speak())
        await caller.wait_for(lambda: answer.render_audio() in bytes(caller.heard), timeout=15)
        await second.wait_for_sent("conversation.item.input_audio_transcription.completed")
        await hang_up_and_wait(caller)
        return caller, second

    caller, second = loop.run(scenario())
    # The new session was told the conversation so far (the part of the greeting it had said).
    replayed = [
        e for e in second.events_of("conversation.item.create") if e["item"]["id"].startswith("replay_")
    ]
    assert [e["item"]["role"] for e in replayed] == ["assistant"]
    assert replayed[0]["item"]["content"][0]["type"] == "output_text"
    # The greeting was cut off by the drop: the part said, marked as cut off.
    text = replayed[0]["item"]["content"][0]["text"]
    said_before_drop = text.removesuffix(" " + replay.CUT_OFF)
    assert said_before_drop != text and said_before_drop
    assert greeting.transcript.startswith(said_before_drop)
    # Everything the caller said reached the new session.
    assert bytes(second.input_audio).endswith(sent_audio(caller))
    call = Call.objects.get()
    assert call.ended_reason == EndedReason.CALLER_HUNG_UP
    assert call.openai_reconnects == 1
    assert "OpenAI session lost" in call.error
    texts = [t.text for t in call.turns.order_by("position")]
    assert texts[-2:] == ["How late are you open?", "We are open until ten tonight."]


def test_repeated_drops_end_the_call_with_an_apology(live, loop, fake_openai):
    fake_openai.set_script(lambda: Script(close_after_session_update=1011))
    sessions_before = len(fake_openai.sessions)

    _, code, after = loop.run(call_until_server_closes(live))

    assert code == 4500 and said(after.twiml) == [APOLOGY]
    assert len(fake_openai.sessions) - sessions_before == 4  # the first session and three retries
    call = Call.objects.get()
    assert call.ended_reason == EndedReason.ERROR and "1011" in call.error


def test_long_call_gets_a_fresh_session_before_the_limit(live, loop, start_server, fake_openai):
    server = start_server(OPENAI_SESSION_MAX_SECONDS="2")
    Agent.objects.update(greeting="Hi there!")
    greeting, answer = Reply(transcript="Hi there!"), Reply(transcript="Sure, a table for two at eight.")
    scripts = iter(
        [
            Script(replies=[greeting], caller_transcripts=["Hi"]),
            Script(replies=[answer], caller_transcripts=["Two at eight"]),
        ]
    )
    fake_openai.set_script(lambda: next(scripts))
    sessions_before = len(fake_openai.sessions)

    async def scenario():
        caller = caller_for(server)
        await dial(caller)
        await caller.wait_heard(len(greeting.render_audio()))
        second = await fake_openai.wait_for_session(sessions_before + 1, timeout=10)
        await second.wait_for_event("session.update")
        await caller.send_audio(speak())
        await caller.wait_for(lambda: answer.render_audio() in bytes(caller.heard), timeout=15)
        await hang_up_and_wait(caller)
        return caller, second

    caller, second = loop.run(scenario())
    first = fake_openai.sessions[sessions_before]
    assert first.close_code == 1000  # closed by us, on purpose
    assert bytes(caller.heard) == greeting.render_audio() + answer.render_audio()
    replayed = [e["item"] for e in second.events_of("conversation.item.create")]
    assert [(i["role"], i["content"][0]["text"]) for i in replayed] == [("assistant", "Hi there!")]
    call = Call.objects.get()
    assert call.openai_reconnects == 0 and call.error == ""
    assert [t.role for t in call.turns.order_by("position")] == [Role.AGENT, Role.CALLER, Role.AGENT]
