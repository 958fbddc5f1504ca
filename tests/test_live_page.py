"""The staff live page and its socket, driven through the real ASGI application."""

from __future__ import annotations

import json
from typing import Any

import pytest
from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.utils import timezone

from calls import live
from calls.models import Agent, Call, Role, Turn
from voiceagent.asgi import application

pytestmark = pytest.mark.django_db(transaction=True)  # the consumer closes its connections

SID = "CA" + "a" * 32
ORIGIN = b"http://localhost:8000"


@pytest.fixture
def active_call() -> Call:
    call = Call.objects.create(
        call_sid=SID,
        from_number="+15550001111",
        to_number="+15552223333",
        agent=Agent.objects.get_or_create(name="Default agent", defaults={"instructions": "Be brief."})[0],
        started_at=timezone.now(),
    )
    Turn.objects.create(call=call, position=0, role=Role.AGENT, text="Hello, Luigi's.", started_ms=0)
    return call


def socket(client=None, *, origin: bytes = ORIGIN) -> WebsocketCommunicator:
    headers = [(b"origin", origin)]
    if client is not None and "sessionid" in client.cookies:
        headers.append((b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()))
    return WebsocketCommunicator(application, "/ws/live", headers=headers)


def run(scenario) -> Any:
    return async_to_sync(scenario)()


def test_staff_get_the_active_calls_then_live_events(staff_client, active_call):
    Call.objects.create(call_sid="CA" + "b" * 32)  # never streamed: not a live call
    Call.objects.create(call_sid="CA" + "c" * 32, started_at=timezone.now(), ended_at=timezone.now())

    async def scenario():
        communicator = socket(staff_client)
        connected, _ = await communicator.connect()
        assert connected
        snapshot = await communicator.receive_json_from()
        await live.publish({"kind": "turn", "call_sid": SID, "position": 1, "role": "caller", "text": "Hi"})
        event = await communicator.receive_json_from()
        await communicator.disconnect()
        return snapshot, event

    snapshot, event = run(scenario)
    assert snapshot["kind"] == "snapshot"
    [call] = snapshot["calls"]
    assert (call["call_sid"], call["from"], call["agent"]) == (SID, "+15550001111", "Default agent")
    assert [t["text"] for t in call["turns"]] == ["Hello, Luigi's."]
    assert event == {"kind": "turn", "call_sid": SID, "position": 1, "role": "caller", "text": "Hi"}


def test_hang_up_goes_to_the_calls_group_with_the_staff_username(staff_client, active_call):
    async def scenario():
        layer = get_channel_layer()
        call_process = await layer.new_channel()  # stands in for the media consumer holding the call
        await layer.group_add(live.call_group(SID), call_process)
        communicator = socket(staff_client)
        await communicator.connect()
        await communicator.receive_json_from()  # snapshot
        await communicator.send_json_to({"action": "hang_up", "call_sid": SID})
        reply = await communicator.receive_json_from()
        command = await layer.receive(call_process)
        await communicator.disconnect()
        await layer.group_discard(live.call_group(SID), call_process)
        return reply, command

    reply, command = run(scenario)
    assert reply == {"kind": "hang_up_requested", "call_sid": SID}
    assert command == {"type": "call.hangup", "by": "ops"}


@pytest.mark.parametrize(
    "request_",
    [
        {"action": "hang_up", "call_sid": "CA" + "f" * 32},  # no such call
        {"action": "hang_up", "call_sid": "CA" + "c" * 32},  # already ended
        {"action": "explode", "call_sid": SID},
        {"action": "hang_up", "call_sid": ["not", "a", "sid"]},
        "not an object",
    ],
)
def test_bad_or_stale_hang_up_requests_are_answered_with_an_error(staff_client, active_call, request_):
    Call.objects.create(call_sid="CA" + "c" * 32, started_at=timezone.now(), ended_at=timezone.now())

    async def scenario():
        communicator = socket(staff_client)
        await communicator.connect()
        await communicator.receive_json_from()
        await communicator.send_to(text_data=json.dumps(request_))
        reply = await communicator.receive_json_from()
        await communicator.send_to(text_data="{not json")
        second = await communicator.receive_json_from()
        await communicator.disconnect()
        return reply, second

    reply, second = run(scenario)
    assert reply["kind"] == "error" and second["kind"] == "error"


@pytest.mark.parametrize("who", ["anonymous", "not staff", "staff without access to calls"])
def test_socket_closes_4403_for_anyone_but_staff_who_see_calls(client, active_call, who):
    if who != "anonymous":
        user = get_user_model().objects.create_user(
            "someone", password="pw-123456", is_staff=who != "not staff"
        )
        client.force_login(user)

    async def scenario():
        communicator = socket(client)
        connected, _ = await communicator.connect()
        closed = await communicator.receive_output()
        await communicator.wait()
        return connected, closed

    connected, closed = run(scenario)
    assert connected
    assert closed == {"type": "websocket.close", "code": 4403}


def test_staff_with_view_permission_only_may_monitor(client, active_call):
    user = get_user_model().objects.create_user("viewer", password="pw-123456", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_call"))
    client.force_login(user)

    async def scenario():
        communicator = socket(client)
        await communicator.connect()
        first = await communicator.receive_json_from()
        await communicator.disconnect()
        return first

    assert run(scenario)["kind"] == "snapshot"
    assert client.get("/admin/live/").status_code == 200


def test_another_site_cannot_open_the_socket_with_a_staff_cookie(staff_client):
    async def scenario():
        communicator = socket(staff_client, origin=b"https://evil.example")
        connected, _ = await communicator.connect()
        return connected

    assert run(scenario) is False


def test_numbers_are_masked_on_the_live_page_with_mask_phone_numbers(staff_client, active_call, settings):
    settings.MASK_PHONE_NUMBERS = True

    async def scenario():
        communicator = socket(staff_client)
        await communicator.connect()
        snapshot = await communicator.receive_json_from()
        await live.publish({"kind": "call_started", "call_sid": "CA1", "from": "+15557770000", "to": "+1555"})
        started = await communicator.receive_json_from()
        await communicator.disconnect()
        return snapshot, started

    snapshot, started = run(scenario)
    assert snapshot["calls"][0]["from"] == "+1555•••1111"
    assert (started["from"], started["to"]) == ("+1555•••0000", "•••55")
    body = staff_client.get("/admin/live/").content.decode()
    assert "+15550001111" not in body


def test_media_stream_route_has_no_session_authentication():
    from calls.consumers import MediaStreamConsumer
    from calls.routing import websocket_urlpatterns

    [media] = [p for p in websocket_urlpatterns if p.pattern.match("media-stream")]
    assert media.callback.consumer_class is MediaStreamConsumer


def test_live_page_lists_active_calls_with_their_transcript_escaped(staff_client, active_call):
    Turn.objects.create(call=active_call, position=1, role=Role.CALLER, text="</script><b>hi</b>")
    Call.objects.create(call_sid="CA" + "c" * 32, started_at=timezone.now(), ended_at=timezone.now())
    response = staff_client.get("/admin/live/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "</script><b>" not in body  # json_script escapes <, > and &
    state = response.context["live_state"]
    assert [c["call_sid"] for c in state["calls"]] == [SID]
    assert [t["text"] for t in state["calls"][0]["turns"]] == ["Hello, Luigi's.", "</script><b>hi</b>"]
    assert state["reasons"]["operator_hung_up"] == "Hung up by an operator"
    assert 'src="/static/calls/live.js"' in body


def test_live_page_is_staff_only(client):
    response = client.get("/admin/live/")
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    client.force_login(get_user_model().objects.create_user("caller", password="pw-123456"))
    assert client.get("/admin/live/").status_code == 302


def test_admin_index_and_call_list_link_to_the_live_page(staff_client):
    assert 'href="/admin/live/"' in staff_client.get("/admin/").content.decode()
    assert 'href="/admin/live/"' in staff_client.get("/admin/calls/call/").content.decode()
