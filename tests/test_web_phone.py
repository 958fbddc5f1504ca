"""The web phone's page, its service and its socket, driven through the real ASGI application
(the page's JavaScript runs in Chromium in test_web_phone_browser.py)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from calls import live, preconnect, services, web_phone
from calls.fakes import mulaw
from calls.fakes.openai_realtime import Reply, Script
from calls.models import Agent, Call, CallDirection, CallStatus, EndedReason, Role
from calls.realtime import AgentConfig
from tests.conftest import OPENAI_KEY
from tests.servers import free_port
from voiceagent.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)  # the consumer writes from other threads

ORIGIN = b"http://localhost:8000"


@pytest.fixture
def agent() -> Agent:
    return Agent.objects.update_or_create(
        phone_number="",
        defaults={
            "name": "Default agent",
            "instructions": "Be brief.",
            "greeting": "",
            "vad_silence_ms": 400,
            "idle_timeout_seconds": 0,
            "record_calls": False,
        },
    )[0]


@pytest.fixture
def openai(settings, fake_openai, fake_twilio_rest):
    """The consumer runs in this process: point it at the fakes."""
    settings.OPENAI_REALTIME_URL = fake_openai.url
    settings.OPENAI_API_KEY = OPENAI_KEY
    settings.TWILIO_API_BASE_URL = fake_twilio_rest.url
    fake_openai.set_script(None)
    fake_twilio_rest.clear()
    return fake_openai


def socket(client=None, *, origin: bytes = ORIGIN) -> WebsocketCommunicator:
    headers = [(b"origin", origin)]
    if client is not None and "sessionid" in client.cookies:
        headers.append((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))
    return WebsocketCommunicator(application, "/ws/phone", headers=headers)


def run(scenario) -> Any:
    return async_to_sync(scenario)()


def start_message(assigned: dict[str, str], agent_id: object, **changes: str) -> str:
    start = {
        "accountSid": "",
        "streamSid": assigned["streamSid"],
        "callSid": assigned["callSid"],
        "tracks": ["inbound"],
        "customParameters": {"agent": agent_id},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    }
    start.update(changes)
    return json.dumps(
        {"event": "start", "sequenceNumber": "1", "start": start, "streamSid": start["streamSid"]}
    )


def media_messages(stream_sid: str, audio: bytes) -> list[str]:
    return [
        json.dumps(
            {
                "event": "media",
                "sequenceNumber": str(2 + n),
                "media": {
                    "track": "inbound",
                    "chunk": str(1 + n),
                    "timestamp": str(20 * n),
                    "payload": base64.b64encode(audio[i : i + 160]).decode(),
                },
                "streamSid": stream_sid,
            }
        )
        for n, i in enumerate(range(0, len(audio), 160))
    ]


# --- the page ------------------------------------------------------------------------------


def test_page_offers_the_enabled_agents_to_staff(staff_client, agent):
    Agent.objects.create(name="Sales", phone_number="+15552220000", instructions="-")
    Agent.objects.create(name="Retired", phone_number="+15552221111", instructions="-", enabled=False)
    response = staff_client.get("/admin/phone/")
    assert response.status_code == 200
    assert [a.name for a in response.context["agents"]] == ["Default agent", "Sales"]
    body = response.content.decode()
    assert 'src="/static/calls/phone.js"' in body
    assert 'data-worklet="/static/calls/phone-worklet.js"' in body
    assert "Sales (+15552220000)" in body and "Retired" not in body


def test_page_is_for_staff_who_may_view_calls(client):
    response = client.get("/admin/phone/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    user = get_user_model().objects.create_user("helper", password="pw-123456", is_staff=True)
    client.force_login(user)
    assert client.get("/admin/phone/").status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_call"))
    assert client.get("/admin/phone/").status_code == 200


def test_admin_index_links_to_the_web_phone(staff_client):
    assert 'href="/admin/phone/"' in staff_client.get("/admin/").content.decode()


# --- the service ---------------------------------------------------------------------------


def test_web_call_is_stored_from_the_staff_member_to_the_agent(agent):
    sales = Agent.objects.create(name="Sales", phone_number="+15552220000", instructions="-", voice="cedar")
    call = services.call_start_web(call_sid="WEB" + "a" * 32, username="ops", agent_id=str(sales.pk))
    assert (call.direction, call.from_number, call.to_number) == (CallDirection.WEB, "ops", "+15552220000")
    assert (call.agent, call.voice, call.status) == (sales, "cedar", CallStatus.RINGING)
    default = services.call_start_web(call_sid="WEB" + "b" * 32, username="ops", agent_id=str(agent.pk))
    assert default.to_number == "Default agent"  # no number: its name


@pytest.mark.parametrize("agent_id", ["disabled", "999999", "", "1; DROP", "٣", "9" * 40])
def test_web_call_needs_an_enabled_agent(agent, agent_id):
    disabled = Agent.objects.create(name="Off", phone_number="+15550000000", instructions="-", enabled=False)
    agent_id = str(disabled.pk) if agent_id == "disabled" else agent_id
    with pytest.raises(ValueError, match="does not exist or is disabled"):
        services.call_start_web(call_sid="WEB" + "c" * 32, username="ops", agent_id=agent_id)
    assert not Call.objects.exists()


def test_web_call_counts_against_the_concurrency_cap(agent, settings):
    settings.MAX_CONCURRENT_CALLS = 1
    Call.objects.create(call_sid="CA" + "1" * 32, started_at=timezone.now())
    with pytest.raises(ValueError, match="lines are busy"):
        services.call_start_web(call_sid="WEB" + "d" * 32, username="ops", agent_id=str(agent.pk))


# --- the socket ----------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["anonymous", "not staff", "staff without access to calls"])
def test_socket_is_refused_to_anyone_but_staff_who_see_calls(client, agent, who):
    if who != "anonymous":
        user = get_user_model().objects.create_user(
            "someone", password="pw-123456", is_staff=who != "not staff"
        )
        client.force_login(user)

    async def scenario():
        communicator = socket(client)
        connected, _ = await communicator.connect()
        return connected

    assert run(scenario) is False


def test_another_site_cannot_open_the_socket_with_a_staff_cookie(staff_client):
    async def scenario():
        communicator = socket(staff_client, origin=b"https://evil.example")
        connected, _ = await communicator.connect()
        return connected

    assert run(scenario) is False


def test_each_socket_is_assigned_fresh_sids(staff_client):
    async def scenario():
        assigned = []
        for _ in range(2):
            communicator = socket(staff_client)
            connected, _ = await communicator.connect()
            assert connected
            assigned.append(await communicator.receive_json_from())
            await communicator.disconnect()
        return assigned

    first, second = run(scenario)
    assert first["event"] == "assigned"
    assert first["callSid"].startswith("WEB") and len(first["callSid"]) == 35
    assert first["streamSid"].startswith("MZ") and len(first["streamSid"]) == 34
    assert first["callSid"] != second["callSid"] and first["streamSid"] != second["streamSid"]


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"callSid": "WEB" + "0" * 32}, 4403),  # someone else's call
        ({"streamSid": "MZ" + "0" * 32}, 4403),
        ({"customParameters": {"agent": "999999"}}, web_phone.CLOSE_AGENT_UNAVAILABLE),
    ],
)
def test_start_must_use_the_assigned_sids_and_an_enabled_agent(staff_client, agent, change, code):
    Call.objects.create(call_sid="WEB" + "0" * 32, direction=CallDirection.WEB)

    async def scenario():
        communicator = socket(staff_client)
        await communicator.connect()
        assigned = await communicator.receive_json_from()
        await communicator.send_to(text_data=json.dumps({"event": "connected", "protocol": "Call"}))
        await communicator.send_to(text_data=start_message(assigned, str(agent.pk), **change))
        closed = await communicator.receive_output()
        await communicator.wait()
        return closed

    assert run(scenario) == {"type": "websocket.close", "code": code}
    assert Call.objects.count() == 1 and Call.objects.get().started_at is None


def test_a_web_phone_start_cannot_close_a_phone_calls_preconnected_session(staff_client, agent, openai):
    """A refused phone stream closes its call's pre-connected session (issue 12, defect 5); a
    browser naming a phone call in a refused start must not reach that session."""
    phone_sid = "CA" + "5" * 32
    preconnect._registry = None

    async def scenario():
        pending = preconnect.start(phone_sid, AgentConfig(instructions="Be brief.", model="gpt-realtime"))
        assert pending is not None
        communicator = socket(staff_client)
        await communicator.connect()
        assigned = await communicator.receive_json_from()
        media_format = {"encoding": "audio/l16", "sampleRate": 8000, "channels": 1}
        forged = {
            "callSid": phone_sid,
            "customParameters": {"call_sid": phone_sid},
            "mediaFormat": media_format,
        }
        await communicator.send_to(text_data=start_message(assigned, str(agent.pk), **forged))
        closed = await communicator.receive_output()
        await communicator.wait()
        still_pending = phone_sid in preconnect.registry()
        assert preconnect.claim(phone_sid) is pending
        await pending.discard()
        return closed, still_pending

    try:
        closed, still_pending = run(scenario)
    finally:
        preconnect._registry = None
    assert closed == {"type": "websocket.close", "code": 4400}
    assert still_pending


def test_a_web_call_is_bridged_and_stored_like_a_phone_call(staff_client, agent, openai, loop):
    openai.set_script(Script(replies=[Reply(transcript="We open at nine.")], caller_transcripts=["Hours?"]))
    sessions_before = len(openai.sessions)
    speech = mulaw.tone(800, seed=5) + mulaw.silence(600)

    async def scenario():
        communicator = socket(staff_client)
        await communicator.connect()
        assigned = await communicator.receive_json_from()
        await communicator.send_to(text_data=json.dumps({"event": "connected", "protocol": "Call"}))
        await communicator.send_to(text_data=start_message(assigned, str(agent.pk)))
        for message in media_messages(assigned["streamSid"], speech):
            await communicator.send_to(text_data=message)
        heard, marks = bytearray(), 0
        while len(heard) < len(Reply(transcript="We open at nine.").render_audio()):
            message = await communicator.receive_json_from(timeout=10)
            assert message["streamSid"] == assigned["streamSid"]
            if message["event"] == "media":
                heard += base64.b64decode(message["media"]["payload"])
            elif message["event"] == "mark":  # played at once: echo, as the page does
                marks += 1
                await communicator.send_to(text_data=json.dumps(message))
        stop = {"event": "stop", "sequenceNumber": "999", "streamSid": assigned["streamSid"], "stop": {}}
        await communicator.send_to(text_data=json.dumps(stop))
        while (output := await communicator.receive_output(timeout=10))["type"] != "websocket.close":
            if '"mark"' in output.get("text", ""):
                await communicator.send_to(text_data=output["text"])
        return assigned, bytes(heard), output

    assigned, heard, closed = run(scenario)
    session = loop.run(openai.wait_for_session(sessions_before))
    assert bytes(session.input_audio).startswith(speech[:4000])
    assert heard == Reply(transcript="We open at nine.").render_audio()
    assert closed == {"type": "websocket.close", "code": 1000}
    call = Call.objects.get(call_sid=assigned["callSid"])
    assert (call.direction, call.from_number, call.stream_sid) == ("web", "ops", assigned["streamSid"])
    assert call.ended_reason == EndedReason.CALLER_HUNG_UP and call.status == CallStatus.COMPLETED
    assert [(t.role, t.text) for t in call.turns.all()] == [
        (Role.CALLER, "Hours?"),
        (Role.AGENT, "We open at nine."),
    ]
    assert call.usage


def test_operator_hang_up_ends_a_web_call_without_twilio(staff_client, agent, openai, fake_twilio_rest):
    async def scenario():
        communicator = socket(staff_client)
        await communicator.connect()
        assigned = await communicator.receive_json_from()
        await communicator.send_to(text_data=start_message(assigned, str(agent.pk)))
        await communicator.receive_json_from(timeout=5)  # the bridge's first mark: it is live
        await live.request_hang_up(assigned["callSid"], by="supervisor")
        while (output := await communicator.receive_output(timeout=10))["type"] != "websocket.close":
            pass
        return assigned, output

    assigned, closed = run(scenario)
    assert closed == {"type": "websocket.close", "code": 1000}
    assert Call.objects.get(call_sid=assigned["callSid"]).ended_reason == EndedReason.OPERATOR
    assert fake_twilio_rest.requests == []


def test_a_web_call_that_cannot_reach_openai_is_failed_and_says_why(staff_client, agent, settings):
    port = free_port()  # nothing listens there
    settings.OPENAI_REALTIME_URL = f"ws://127.0.0.1:{port}/v1/realtime"
    settings.OPENAI_API_KEY = OPENAI_KEY

    async def scenario():
        communicator = socket(staff_client)
        await communicator.connect()
        assigned = await communicator.receive_json_from()
        await communicator.send_to(text_data=start_message(assigned, str(agent.pk)))
        said = []
        while (output := await communicator.receive_output(timeout=10))["type"] != "websocket.close":
            said.append(json.loads(output["text"]))
        return assigned, said, output

    assigned, said, closed = run(scenario)
    error = f"cannot reach the OpenAI API: 127.0.0.1:{port} refused the connection"
    assert said[-1] == {"event": "ended", "reason": EndedReason.ERROR, "error": error}
    assert closed == {"type": "websocket.close", "code": 4500}
    call = Call.objects.get(call_sid=assigned["callSid"])
    assert (call.status, call.ended_reason, call.error) == (CallStatus.FAILED, EndedReason.ERROR, error)
    assert OPENAI_KEY not in json.dumps(said)


def test_the_page_says_when_the_agent_is_the_local_standin(staff_client, agent, settings):
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_STANDIN = True
    body = staff_client.get("/admin/phone/").content.decode()
    assert "Local stand-in, not the real model." in body and "OPENAI_API_KEY is not set" not in body

    settings.OPENAI_STANDIN = False  # production: no fallback, and the page says calls will fail
    body = staff_client.get("/admin/phone/").content.decode()
    assert "OPENAI_API_KEY is not set:" in body and "stand-in" not in body

    settings.OPENAI_API_KEY = OPENAI_KEY
    settings.OPENAI_STANDIN = True  # a key always wins
    body = staff_client.get("/admin/phone/").content.decode()
    assert "stand-in" not in body and "OPENAI_API_KEY" not in body
