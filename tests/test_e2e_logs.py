"""End to end: a whole call through the real server leaves no secret and no audio in its log."""

from __future__ import annotations

import base64
import json
import re

import pytest

from calls.fakes.openai_realtime import Reply, Script
from calls.fakes.twilio_caller import twilio_signature
from calls.models import Agent, Call, EndedReason, Role, TurnKind
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, OPENAI_KEY
from tests.test_e2e_bridge import caller_for, dial, sent_audio, speak

pytestmark = pytest.mark.e2e

# Base64 this long is audio (a 20 ms frame is 216 characters), never an id: stream tokens
# are 32 characters, and Twilio SIDs (which REST URLs string together) are taken out first.
BASE64_RUN = re.compile(r"[A-Za-z0-9+/]{48,}={0,2}")
TWILIO_SID = re.compile(r"[A-Z]{2}[0-9a-f]{32}")

GREETING = Reply(transcript="Hello, thanks for calling Luigi's.")
MENU = Reply(transcript="Option forty-two: our opening hours.")
GOODBYE = Reply(transcript="Thank you, goodbye!", function_call=("end_call", {"reason": "done"}))


def whole_call(server, loop, fake_openai, fake_twilio_rest):
    """Greeting, key presses, a question, hostile frames, the agent hanging up over REST."""
    Agent.objects.update(greeting=GREETING.transcript, tools=["end_call"])
    fake_openai.set_script(Script(replies=[GREETING, MENU, GOODBYE], caller_transcripts=["Bye now."]))
    sessions_before = len(fake_openai.sessions)

    async def scenario():
        caller = caller_for(server)
        fake_twilio_rest.add_live_call(caller.call_sid)
        await dial(caller)
        await caller.wait_heard(len(GREETING.render_audio()))
        for digit in "42#":
            await caller.press(digit)
        await caller.wait_heard(len(GREETING.render_audio() + MENU.render_audio()), timeout=15)
        payload = base64.b64encode(bytes(range(256)) * 2).decode()
        for frame in (
            f"not json {payload}",
            json.dumps(
                {"event": "media", "media": {"payload": payload + "!"}, "streamSid": caller.stream_sid}
            ),
            json.dumps({"event": "media", "media": {"payload": payload}, "streamSid": "MZ" + "0" * 32}),
            json.dumps({"event": payload, "streamSid": caller.stream_sid}),
        ):
            await caller.send_raw(frame)
        await caller.send_audio(speak())
        await fake_twilio_rest.await_request(lambda r: r.is_update(caller.call_sid), timeout=15)
        await caller.wait_closed_by_server(timeout=10)
        await caller.aclose()
        session = fake_openai.sessions[sessions_before]
        await session.wait_closed(timeout=10)
        return caller

    return loop.run(scenario(), timeout=90)


def secrets_of(caller) -> dict[str, str]:
    stream_url = caller.webhook.stream_url
    return {
        "OpenAI API key": OPENAI_KEY,
        "Twilio auth token": AUTH_TOKEN,
        "Twilio REST credentials": base64.b64encode(f"{ACCOUNT_SID}:{AUTH_TOKEN}".encode()).decode(),
        "stream token": caller.webhook.stream_parameters["token"],
        "webhook signature": caller.webhook.signature,
        "media socket signature": twilio_signature(AUTH_TOKEN, stream_url, {}),
    }


def audio_payloads(caller) -> list[str]:
    sent = [m["media"]["payload"] for m in caller.sent_messages if m.get("event") == "media"]
    received = [
        m["media"]["payload"] for _, m in caller.received if isinstance(m, dict) and m.get("event") == "media"
    ]
    assert sent and received
    return sent + received


def assert_clean(log: str, caller) -> None:
    for name, secret in secrets_of(caller).items():
        assert secret and secret not in log, f"the {name} is in the server log"
    for payload in audio_payloads(caller):
        # Any 40 characters of a payload would do to recognise it.
        assert payload[:40] not in log and payload[-40:] not in log, "caller or agent audio in the log"
    runs = BASE64_RUN.findall(TWILIO_SID.sub("<sid>", log))
    assert runs == [], f"base64 runs in the server log: {[r[:60] for r in runs]}"


def check_the_call_really_happened(caller) -> None:
    call = Call.objects.get(call_sid=caller.call_sid)
    assert call.ended_reason == EndedReason.AGENT_ENDED
    turns = list(call.turns.order_by("position").values_list("role", "kind", "text"))
    assert (Role.AGENT, TurnKind.SPEECH, GREETING.transcript) in turns
    assert (Role.CALLER, TurnKind.DTMF, "Pressed 42#") in turns
    assert (Role.AGENT, TurnKind.SPEECH, MENU.transcript) in turns
    assert bytes(caller.heard).startswith(GREETING.render_audio() + MENU.render_audio())
    assert sent_audio(caller)


def test_no_secret_or_audio_reaches_the_log(live, loop, fake_openai, fake_twilio_rest):
    start = len(live.log())
    caller = whole_call(live, loop, fake_openai, fake_twilio_rest)
    check_the_call_really_happened(caller)
    log = live.log()[start:]
    assert f"call {caller.call_sid}" in log and "dropped a Twilio frame" in log  # we read the right log
    assert_clean(log, caller)


def test_no_secret_or_audio_reaches_the_log_at_debug_level(
    live, loop, start_server, fake_openai, fake_twilio_rest
):
    server = start_server(LOG_LEVEL="DEBUG")
    caller = whole_call(server, loop, fake_openai, fake_twilio_rest)
    check_the_call_really_happened(caller)
    log = server.log()
    assert " DEBUG calls." in log
    assert_clean(log, caller)
