from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model

from calls.models import Agent, Call, Role, Turn

pytestmark = pytest.mark.django_db


@pytest.fixture
def call_with_transcript() -> Call:
    call = Call.objects.create(
        call_sid="CA" + "5" * 32,
        from_number="+15550001111",
        to_number="+15552223333",
        agent=Agent.objects.get(),
        duration_seconds=61,
    )
    Turn.objects.create(call=call, position=0, role=Role.AGENT, text="Hello! How can I help?", started_ms=0)
    Turn.objects.create(
        call=call,
        position=1,
        role=Role.CALLER,
        text="<script>alert(1)</script> a table for two",
        started_ms=2100,
    )
    Turn.objects.create(
        call=call,
        position=2,
        role=Role.AGENT,
        text="Sure, for what time",
        started_ms=4000,
        interrupted=True,
        heard_ms=1250,
    )
    return call


def test_call_list_shows_calls_with_turn_counts(staff_client, call_with_transcript):
    response = staff_client.get("/admin/calls/call/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "+15550001111" in body and "Default agent" in body
    assert response.context["cl"].result_list[0].turn_count == 3


def test_call_list_searches_transcript_text(staff_client, call_with_transcript):
    Call.objects.create(call_sid="CA" + "6" * 32, from_number="+15557770000")
    response = staff_client.get("/admin/calls/call/", {"q": "table for two"})
    assert [c.call_sid for c in response.context["cl"].result_list] == [call_with_transcript.call_sid]


def test_call_list_filters_by_status_and_agent(staff_client, call_with_transcript):
    agent = Agent.objects.get()
    response = staff_client.get(
        "/admin/calls/call/", {"status__exact": "ringing", "agent__id__exact": agent.pk}
    )
    assert response.status_code == 200
    assert len(response.context["cl"].result_list) == 1
    response = staff_client.get("/admin/calls/call/", {"status__exact": "completed"})
    assert len(response.context["cl"].result_list) == 0


def test_call_page_renders_conversation_in_order_and_escaped(staff_client, call_with_transcript):
    response = staff_client.get(f"/admin/calls/call/{call_with_transcript.pk}/change/")
    assert response.status_code == 200
    body = response.content.decode()
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;alert(1)&lt;/script&gt; a table for two" in body
    assert (
        body.index("Hello! How can I help?")
        < body.index("a table for two")
        < body.index("Sure, for what time")
    )
    assert "va-caller" in body and "va-agent" in body
    assert "interrupted, caller heard 1.2 s" in body


def test_call_page_without_turns_has_empty_state(staff_client):
    call = Call.objects.create(call_sid="CA" + "7" * 32)
    body = staff_client.get(f"/admin/calls/call/{call.pk}/change/").content.decode()
    assert "No conversation recorded for this call yet." in body


def test_calls_are_read_only(staff_client, call_with_transcript):
    assert staff_client.get("/admin/calls/call/add/").status_code == 403
    response = staff_client.post(
        f"/admin/calls/call/{call_with_transcript.pk}/change/", {"from_number": "+1"}
    )
    assert response.status_code == 403
    call_with_transcript.refresh_from_db()
    assert call_with_transcript.from_number == "+15550001111"


def test_agents_are_editable(staff_client):
    agent = Agent.objects.get()
    response = staff_client.get(f"/admin/calls/agent/{agent.pk}/change/")
    assert response.status_code == 200
    assert staff_client.get("/admin/calls/agent/add/").status_code == 200


@pytest.mark.parametrize("path", ["/admin/calls/call/", "/admin/calls/agent/", "/admin/"])
def test_anonymous_users_are_sent_to_login(client, path):
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/admin/login/")


def test_non_staff_users_are_sent_to_login(client):
    user = get_user_model().objects.create_user("caller", password="pw-123456")
    client.force_login(user)
    response = client.get("/admin/calls/call/")
    assert response.status_code == 302


def test_tool_calls_appear_inline_in_the_conversation(staff_client, call_with_transcript):
    from calls.models import ToolCall

    ToolCall.objects.create(
        call=call_with_transcript,
        position=1,
        name="book_table",
        arguments={"party_size": 2},
        result={"booked": True, "reference": "R-1"},
        duration_ms=42,
    )
    ToolCall.objects.create(call=call_with_transcript, position=2, name="lookup", error="<b>timeout</b>")
    body = staff_client.get(f"/admin/calls/call/{call_with_transcript.pk}/change/").content.decode()
    assert body.index("a table for two") < body.index("book_table") < body.index("Sure, for what time")
    assert "&quot;reference&quot;: &quot;R-1&quot;" in body and "42 ms" in body
    assert "&lt;b&gt;timeout&lt;/b&gt;" in body


def test_agent_form_offers_registered_tools(staff_client):
    agent = Agent.objects.get()
    body = staff_client.get(f"/admin/calls/agent/{agent.pk}/change/").content.decode()
    for name in ("end_call", "transfer_call", "book_table", "opening_hours"):
        assert f'value="{name}"' in body


def test_place_call_action_asks_for_a_number(staff_client):
    agent = Agent.objects.get()
    response = staff_client.post(
        "/admin/calls/agent/", {"action": "place_call", "_selected_action": [agent.pk]}
    )
    assert response.status_code == 200
    assert "Number to call" in response.content.decode()
    response = staff_client.post(
        "/admin/calls/agent/",
        {"action": "place_call", "_selected_action": [agent.pk], "to": "+15553334444"},
        follow=True,
    )
    # The default agent has no number to call from: a clear message, no call.
    assert "has no phone number to call from" in response.content.decode()
    assert not Call.objects.exists()
