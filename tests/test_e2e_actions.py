"""End to end: tools, hang-up, transfer, key presses, limits and outbound calls, over real
sockets with the fake OpenAI server, the simulated caller and the fake Twilio REST API."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from django.core.management import call_command

from calls.fakes.openai_realtime import Reply, Script
from calls.fakes.twilio_caller import CallerConfig, SimulatedCaller
from calls.models import Agent, Call, CallDirection, EndedReason, Role, ToolCall, TurnKind
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN
from tests.test_e2e_bridge import caller_for, dial, hang_up_and_wait, speak

pytestmark = pytest.mark.e2e


def enable_tools(*names: str, **fields) -> None:
    Agent.objects.update(tools=list(names), **fields)


def output_of(session, call_id_prefix: str = "call_") -> dict:
    [created] = [
        e
        for e in session.events_of("conversation.item.create")
        if e["item"]["type"] == "function_call_output"
    ]
    assert created["item"]["call_id"].startswith(call_id_prefix)
    return json.loads(created["item"]["output"])


def ask_and_hear(live, loop, fake_openai, answer: Reply):
    """The caller asks something; the agent answers after its tool; return what happened."""
    sessions_before = len(fake_openai.sessions)

    async def scenario():
        caller = caller_for(live)
        await dial(caller)
        await caller.send_audio(speak())
        await caller.wait_heard(len(answer.render_audio()), timeout=15)
        await hang_up_and_wait(caller)
        return caller

    caller = loop.run(scenario())
    return caller, fake_openai.sessions[sessions_before]


def test_tool_round_trip_arguments_in_output_back_follow_up_played(live, loop, fake_openai):
    enable_tools("lookup_order")
    answer = Reply(transcript="Your order A17 has shipped.")
    fake_openai.set_script(
        Script(replies=[Reply(function_call=("lookup_order", {"order_id": "A17"})), answer])
    )

    caller, session = ask_and_hear(live, loop, fake_openai, answer)

    assert [t["name"] for t in session.received[0]["session"]["tools"]] == ["lookup_order"]
    assert output_of(session) == {"order_id": "A17", "status": "shipped", "caller": "+15550001111"}
    assert bytes(caller.heard) == answer.render_audio()
    [tool_call] = ToolCall.objects.all()
    assert tool_call.name == "lookup_order" and tool_call.arguments == {"order_id": "A17"}
    assert tool_call.result["status"] == "shipped" and tool_call.error == ""
    assert tool_call.duration_ms is not None
    turns = list(Call.objects.get().turns.order_by("position"))
    assert [t.role for t in turns] == [Role.CALLER, Role.AGENT]
    assert turns[0].position < tool_call.position < turns[1].position


def test_tool_that_raises_is_reported_to_the_model_and_the_call_goes_on(live, loop, fake_openai):
    enable_tools("broken_tool")
    answer = Reply(transcript="Sorry, I cannot check that right now.")
    fake_openai.set_script(Script(replies=[Reply(function_call=("broken_tool", {"order_id": "B2"})), answer]))

    caller, session = ask_and_hear(live, loop, fake_openai, answer)

    assert output_of(session) == {"error": "ConnectionError: inventory service unreachable for B2"}
    assert bytes(caller.heard) == answer.render_audio()
    assert ToolCall.objects.get().error.startswith("ConnectionError")


def test_tool_that_times_out_is_reported_to_the_model(live, loop, fake_openai):
    enable_tools("slow_tool")
    answer = Reply(transcript="That is taking too long, sorry.")
    fake_openai.set_script(Script(replies=[Reply(function_call=("slow_tool", {})), answer]))

    caller, session = ask_and_hear(live, loop, fake_openai, answer)

    assert output_of(session) == {"error": "the tool did not answer within 0.5 seconds"}
    assert bytes(caller.heard) == answer.render_audio()


def test_bad_arguments_are_reported_to_the_model(live, loop, fake_openai):
    enable_tools("lookup_order")
    answer = Reply(transcript="Which order number?")
    fake_openai.set_script(Script(replies=[Reply(function_call=("lookup_order", {"order": 5})), answer]))

    _, session = ask_and_hear(live, loop, fake_openai, answer)

    assert "invalid arguments" in output_of(session)["error"]


def test_end_call_hangs_up_only_after_the_goodbye_was_heard(live, loop, fake_openai, fake_twilio_rest):
    enable_tools("end_call")
    goodbye = Reply(transcript="Thanks for calling, goodbye!", function_call=("end_call", {"reason": "done"}))
    fake_openai.set_script(Script(replies=[goodbye]))

    async def scenario():
        caller = caller_for(live)
        fake_twilio_rest.add_live_call(caller.call_sid)
        await dial(caller)
        await caller.send_audio(speak())
        hang_up = await fake_twilio_rest.await_request(lambda r: r.is_update(caller.call_sid), timeout=15)
        code = await caller.wait_closed_by_server(timeout=10)
        await caller.aclose()
        return caller, hang_up, code

    caller, hang_up, code = loop.run(scenario())
    assert hang_up.value("Status") == "completed"
    assert bytes(caller.heard) == goodbye.render_audio()
    # The REST hang-up came after the last of the goodbye had played.
    assert hang_up.time >= caller.heard_segments[-1].end
    assert code == 1000
    call = Call.objects.get()
    assert call.ended_reason == EndedReason.AGENT_ENDED
    assert ToolCall.objects.get().name == "end_call"


@pytest.mark.parametrize("tool", ["end_call", "transfer_call"])
def test_a_silent_end_call_or_transfer_is_preceded_by_a_spoken_goodbye(
    live, loop, fake_openai, fake_twilio_rest, tool
):
    """Real models call end_call (or transfer_call) without saying a word: the caller must
    still hear a goodbye (or the transfer notice) before the line drops or moves."""
    enable_tools(tool, transfer_numbers="+15550009999")
    silent = Reply(function_call=(tool, {}))
    goodbye = Reply(transcript="Thanks for calling Luigi's, goodbye!")
    fake_openai.set_script(Script(replies=[silent, goodbye]))
    sessions_before = len(fake_openai.sessions)

    async def scenario():
        caller = caller_for(live)
        fake_twilio_rest.add_live_call(caller.call_sid)
        await dial(caller)
        await caller.send_audio(speak())
        request = await fake_twilio_rest.await_request(lambda r: r.is_update(caller.call_sid), timeout=15)
        heard_before = bytes(caller.heard)
        await hang_up_and_wait(caller)
        return caller, request, heard_before

    caller, request, heard_before = loop.run(scenario())
    assert heard_before == goodbye.render_audio()  # all of it, before the hang-up or redirect
    assert request.time >= caller.heard_segments[-1].end
    session = fake_openai.sessions[sessions_before]
    [asked] = [e for e in session.events_of("response.create") if e.get("response", {}).get("metadata")]
    assert asked["response"]["tool_choice"] == "none"
    call = Call.objects.get()
    expected = EndedReason.AGENT_ENDED if tool == "end_call" else EndedReason.TRANSFERRED
    assert call.ended_reason == expected
    assert [t.text for t in call.turns.filter(role=Role.AGENT)] == [goodbye.transcript]


def test_transfer_redirects_the_live_call_to_dial(live, loop, fake_openai, fake_twilio_rest):
    enable_tools("transfer_call", transfer_numbers="+15550009999, +15550008888")
    notice = Reply(transcript="Let me put you through to a manager.", function_call=("transfer_call", {}))
    fake_openai.set_script(Script(replies=[notice]))

    async def scenario():
        caller = caller_for(live)
        fake_twilio_rest.add_live_call(caller.call_sid)
        await dial(caller)
        await caller.send_audio(speak())
        update = await fake_twilio_rest.await_request(lambda r: r.is_update(caller.call_sid), timeout=15)
        heard_at_transfer = len(caller.heard)
        # Twilio leaves <Connect>: the stream stops. That is not a hang-up.
        await hang_up_and_wait(caller)
        return update, heard_at_transfer

    update, heard_at_transfer = loop.run(scenario())
    assert heard_at_transfer == len(notice.render_audio())
    dial_verb = ET.fromstring(update.value("Twiml")).find("Dial")
    assert dial_verb is not None and dial_verb.text == "+15550009999"
    assert dial_verb.get("answerOnBridge") == "true" and dial_verb.get("callerId") == "+15550001111"
    call = Call.objects.get()
    assert (call.ended_reason, call.transferred_to) == (EndedReason.TRANSFERRED, "+15550009999")
    assert call.error == ""


def test_key_presses_reach_the_model_and_the_transcript(live, loop, fake_openai):
    answer = Reply(transcript="You chose opening hours.")
    fake_openai.set_script(Script(replies=[answer]))
    sessions_before = len(fake_openai.sessions)

    async def scenario():
        caller = caller_for(live)
        await dial(caller)
        session = await fake_openai.wait_for_session(sessions_before)
        await caller.press("1")
        item = await session.wait_for_event("conversation.item.create", timeout=10)
        await caller.wait_heard(len(answer.render_audio()))
        await hang_up_and_wait(caller)
        return item

    item = loop.run(scenario())
    assert item["item"]["role"] == "user"
    assert "pressed the key 1" in item["item"]["content"][0]["text"]
    [turn] = Call.objects.get().turns.filter(kind=TurnKind.DTMF)
    assert (turn.role, turn.text) == (Role.CALLER, "Pressed 1")


def test_time_limit_wraps_up_politely_then_ends_the_call(live, loop, fake_openai, fake_twilio_rest):
    Agent.objects.update(max_call_seconds=3)  # below the admin's minimum, to keep the test short
    wrap_up = Reply(transcript="We are out of time, goodbye!")
    fake_openai.set_script(Script(replies=[wrap_up]))
    sessions_before = len(fake_openai.sessions)

    async def scenario():
        caller = caller_for(live)
        fake_twilio_rest.add_live_call(caller.call_sid)
        await dial(caller)
        code = await caller.wait_closed_by_server(timeout=15)
        await caller.aclose()
        return caller, code

    caller, _ = loop.run(scenario())
    session = fake_openai.sessions[sessions_before]
    [instruction] = session.events_of("conversation.item.create")
    assert "time limit" in instruction["item"]["content"][0]["text"]
    assert bytes(caller.heard) == wrap_up.render_audio()
    assert Call.objects.get().ended_reason == EndedReason.TIME_LIMIT
    assert any(
        r.is_update(caller.call_sid) and r.value("Status") == "completed" for r in fake_twilio_rest.requests
    )


def test_silent_caller_is_prompted_then_the_call_ends(live, loop, fake_openai):
    Agent.objects.update(greeting="Hello!", idle_timeout_seconds=1, max_silence_prompts=1)
    # The service prompts after each silence. Past the allowed prompts, the service's own next
    # prompt is cancelled unheard and the agent says goodbye instead.
    replies = greeting, prompt, *_ = (
        Reply(transcript="Hello!"),
        Reply(transcript="Are you still there?"),
        Reply(transcript="Hello, can you hear me?"),
        Reply(transcript="I will hang up now. Goodbye."),
    )
    fake_openai.set_script(Script(replies=list(replies)))

    async def scenario():
        caller = caller_for(live)
        await dial(caller)
        code = await caller.wait_closed_by_server(timeout=20)
        await caller.aclose()
        return caller, code

    caller, _ = loop.run(scenario())
    session = fake_openai.sessions[-1]
    # Which scripted reply the goodbye got depends on a race inside the service (its own
    # prompt, or our goodbye, first); what matters is that only the goodbye was heard.
    [goodbye_done] = [
        e
        for e in session.sent_of("response.done")
        if (e["response"].get("metadata") or {}).get("voiceagent_closing")
    ]
    [goodbye_item] = [o["id"] for o in goodbye_done["response"]["output"]]
    said_goodbye = bytes(session.output_audio[goodbye_item])
    assert bytes(caller.heard) == greeting.render_audio() + prompt.render_audio() + said_goodbye
    assert Call.objects.get().ended_reason == EndedReason.SILENCE


def test_place_call_dials_out_and_the_callee_gets_the_same_bridge(live, loop, fake_openai, fake_twilio_rest):
    Agent.objects.update(
        greeting="Hi, this is Luigi's calling about your booking.", phone_number="+15557770000"
    )
    greeting = Reply(transcript="Hi, this is Luigi's calling about your booking.")
    fake_openai.set_script(Script(replies=[greeting]))

    call_command("place_call", "--to", "+15553334444", "--agent", "Default agent")

    create = fake_twilio_rest.wait_for_request(lambda r: r.is_create)
    assert create.value("To") == "+15553334444" and create.value("From") == "+15557770000"
    assert create.value("Url") == f"{live.url}/incoming-call"
    assert create.value("StatusCallback") == f"{live.url}/call-status"
    assert create.form["StatusCallbackEvent"] == ["initiated", "ringing", "answered", "completed"]
    assert create.value("MachineDetection") is None
    [placed] = Call.objects.all()
    assert placed.direction == CallDirection.OUTBOUND_API

    # Twilio now calls our webhook for the new call, as it does for inbound calls.
    async def scenario():
        caller = SimulatedCaller(
            CallerConfig(
                base_url=live.url,
                public_base_url=live.url,
                auth_token=AUTH_TOKEN,
                account_sid=ACCOUNT_SID,
                call_sid=placed.call_sid,
                from_number="+15557770000",
                to_number="+15553334444",
                direction="outbound-api",
            )
        )
        await dial(caller)
        await caller.wait_heard(len(greeting.render_audio()))
        await hang_up_and_wait(caller)
        return caller

    caller = loop.run(scenario())
    assert bytes(caller.heard) == greeting.render_audio()
    call = Call.objects.get()
    assert call.call_sid == placed.call_sid and call.direction == CallDirection.OUTBOUND_API
    assert call.agent.name == "Default agent"


def test_answering_machine_is_hung_up_on(live, fake_twilio_rest, twilio):
    Agent.objects.update(phone_number="+15557770000", machine_policy="hang_up")
    call_command("place_call", "--to", "+15553334444", "--agent", "Default agent")
    create = fake_twilio_rest.wait_for_request(lambda r: r.is_create)
    assert create.value("MachineDetection") == "Enable" and create.value("AsyncAmd") == "true"
    assert create.value("AsyncAmdStatusCallback") == f"{live.url}/amd-status"
    call = Call.objects.get()
    fake_twilio_rest.set_call_status(call.call_sid, "in-progress")

    twilio.public_base_url = live.url
    response = twilio.post(
        "/amd-status",
        {"CallSid": call.call_sid, "AccountSid": ACCOUNT_SID, "AnsweredBy": "machine_start"},
    )

    assert response.status_code == 200
    hang_up = fake_twilio_rest.wait_for_request(lambda r: r.is_update(call.call_sid))
    assert hang_up.value("Status") == "completed"
    call.refresh_from_db()
    assert (call.answered_by, call.ended_reason) == ("machine_start", EndedReason.MACHINE)


def test_answering_machine_gets_the_voicemail_message(live, fake_twilio_rest, twilio):
    Agent.objects.update(
        phone_number="+15557770000", machine_policy="leave_message", voicemail_message="Please call us back."
    )
    call_command("place_call", "--to", "+15553334444", "--agent", "Default agent")
    create = fake_twilio_rest.wait_for_request(lambda r: r.is_create)
    assert create.value("MachineDetection") == "DetectMessageEnd"
    call = Call.objects.get()
    fake_twilio_rest.set_call_status(call.call_sid, "in-progress")
    twilio.public_base_url = live.url
    twilio.post(
        "/amd-status", {"CallSid": call.call_sid, "AccountSid": ACCOUNT_SID, "AnsweredBy": "machine_end_beep"}
    )
    update = fake_twilio_rest.wait_for_request(lambda r: r.is_update(call.call_sid))
    assert ET.fromstring(update.value("Twiml")).find("Say").text == "Please call us back."


def test_place_call_refuses_a_bad_number(live):
    Agent.objects.update(phone_number="+15557770000")
    with pytest.raises(Exception, match=r"E\.164"):
        call_command("place_call", "--to", "5553334444", "--agent", "Default agent")
