"""The bridge's call control, sans-IO: tools, hang-up, transfer, key presses, limits, silence."""

from __future__ import annotations

import json

from calls import twilio_media
from calls.bridge.actions import EndCall, RunTool, SaveToolCall, SaveTurn, ToolCallRecord, Transfer
from calls.realtime import AgentConfig
from tests.bridge_driver import DrivenBridge
from tests.test_bridge import STREAM, delta, openai_sent, start_response, twilio_sent

TOOLS = [
    {"type": "function", "name": name, "description": "", "parameters": {"type": "object"}}
    for name in ("lookup_order", "end_call", "transfer_call")
]


def agent(**overrides) -> AgentConfig:
    options = {"instructions": "x", "model": "m", "tools": TOOLS, "transfer_destinations": ["+15550009999"]}
    options.update(overrides)
    return AgentConfig(**options)


def live(config: AgentConfig | None = None, now: float = 0.0) -> DrivenBridge:
    bridge = DrivenBridge(config or agent(), stream_sid=STREAM, call_sid="CA" + "1" * 32, now=now)
    bridge.on_openai_connected()
    bridge.on_openai(
        {
            "type": "session.updated",
            "session": {
                "type": "realtime",
                "audio": {
                    "input": {"format": {"type": "audio/pcmu"}},
                    "output": {"format": {"type": "audio/pcmu"}},
                },
            },
        },
        now,
    )
    bridge.drain()
    return bridge


def function_call(bridge, name, arguments, *, call_id="call_1", response="resp_1", now=0.0):
    bridge.on_openai(
        {
            "type": "response.output_item.added",
            "response_id": response,
            "item": {"id": f"item_{call_id}", "type": "function_call", "call_id": call_id, "name": name},
        },
        now,
    )
    bridge.on_openai(
        {
            "type": "response.function_call_arguments.done",
            "response_id": response,
            "item_id": f"item_{call_id}",
            "call_id": call_id,
            "name": name,
            "arguments": json.dumps(arguments),
        },
        now,
    )


def response_done(bridge, response="resp_1", now=0.0, **extra):
    bridge.on_openai({"type": "response.done", "response": {"id": response, "output": [], **extra}}, now)


def echo_all_marks(bridge, actions, now):
    for message in twilio_sent(actions):
        if message["event"] == "mark":
            bridge.on_twilio(twilio_media.Mark(message["mark"]["name"], STREAM), now)


def test_tool_round_trip_waits_for_the_response_to_finish():
    bridge = live()
    bridge.on_openai({"type": "response.created", "response": {"id": "resp_1"}}, 0)
    function_call(bridge, "lookup_order", {"order_id": "A17"})
    [run] = [a for a in bridge.drain() if isinstance(a, RunTool)]
    assert (run.name, run.call_id, json.loads(run.arguments)) == (
        "lookup_order",
        "call_1",
        {"order_id": "A17"},
    )
    record = ToolCallRecord(run.position, run.name, run.call_id, run.arguments, {"status": "shipped"}, "", 12)
    bridge.on_tool_result("call_1", '{"status":"shipped"}', record, 0.1)
    actions = bridge.drain()
    sent = openai_sent(actions)
    assert sent == [
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "call_1", "output": '{"status":"shipped"}'},
        }
    ]
    assert [a.record for a in actions if isinstance(a, SaveToolCall)] == [record]
    # One response at a time: the follow-up is asked for once the function-call response is done.
    response_done(bridge, now=0.2)
    assert [e["type"] for e in openai_sent(bridge.drain())] == ["response.create"]


def test_tool_not_enabled_for_the_agent_gets_an_error_output():
    bridge = live(agent(tools=[]))
    bridge.on_openai({"type": "response.created", "response": {"id": "resp_1"}}, 0)
    function_call(bridge, "lookup_order", {"order_id": "A17"})
    actions = bridge.drain()
    assert not [a for a in actions if isinstance(a, RunTool)]
    [output] = openai_sent(actions)
    assert json.loads(output["item"]["output"]) == {"error": "unknown tool 'lookup_order'"}


def test_end_call_waits_for_the_goodbye_to_finish_playing():
    bridge = live()
    bridge.playback.rtt = 0.0
    start_response(bridge, "item_bye")
    bridge.on_openai(delta("item_bye", b"\x55" * 1920), now=0.0)  # the goodbye: 240 ms
    goodbye = bridge.drain()
    function_call(bridge, "end_call", {"reason": "caller is done"})
    response_done(bridge, now=0.05)
    actions = bridge.drain()
    assert not [a for a in actions if isinstance(a, EndCall)]  # still playing
    assert [a.record.name for a in actions if isinstance(a, SaveToolCall)] == ["end_call"]
    echo_all_marks(bridge, goodbye, now=0.3)
    assert [a for a in bridge.drain() if isinstance(a, EndCall)] == [EndCall("agent_ended", "", True)]


def test_transfer_goes_to_the_default_number_after_the_notice_and_stop_is_not_a_hang_up():
    bridge = live()
    bridge.playback.rtt = 0.0
    start_response(bridge, "item_notice")
    bridge.on_openai(delta("item_notice", b"\x55" * 800), now=0.0)  # "Putting you through."
    notice = bridge.drain()
    function_call(bridge, "transfer_call", {"reason": "wants a manager"})
    assert not [a for a in bridge.drain() if isinstance(a, Transfer)]
    response_done(bridge, now=0.05)
    assert not [a for a in bridge.drain() if isinstance(a, Transfer)]  # the notice is playing
    echo_all_marks(bridge, notice, now=0.1)
    assert [a for a in bridge.drain() if isinstance(a, Transfer)] == [Transfer("+15550009999")]
    bridge.on_transfer_result(True, "", 0.2)
    bridge.on_twilio(twilio_media.Stop(STREAM), 0.3)
    assert [a for a in bridge.drain() if isinstance(a, EndCall)] == [EndCall("transferred")]


def test_transfer_to_a_number_not_allowed_is_refused():
    bridge = live()
    bridge.on_openai({"type": "response.created", "response": {"id": "resp_1"}}, 0)
    function_call(bridge, "transfer_call", {"destination": "+19999999999"})
    [output] = [e for e in openai_sent(bridge.drain()) if e["type"] == "conversation.item.create"]
    assert "not an allowed destination" in output["item"]["output"]
    response_done(bridge, now=0.1)
    actions = bridge.drain()
    assert not [a for a in actions if isinstance(a, Transfer)]
    assert [e["type"] for e in openai_sent(actions)] == ["response.create"]


def test_failed_transfer_keeps_the_caller_with_the_agent():
    bridge = live()
    function_call(bridge, "transfer_call", {})
    bridge.drain()
    bridge.on_transfer_result(False, "HTTP 400: invalid number", 0.1)
    sent = openai_sent(bridge.drain())
    assert [e["type"] for e in sent] == ["conversation.item.create", "response.create"]
    bridge.on_twilio(twilio_media.Stop(STREAM), 0.2)
    assert [a for a in bridge.drain() if isinstance(a, EndCall)] == [EndCall("caller_hung_up")]


def test_key_presses_are_gathered_then_given_to_the_model_and_stored():
    bridge = live()
    for digit, at in (("1", 0.0), ("2", 0.3), ("3", 0.6)):
        bridge.on_twilio(twilio_media.Dtmf(digit, STREAM), at)
    bridge.on_tick(1.0)
    assert bridge.drain() == []  # still typing
    bridge.on_tick(2.2)
    actions = bridge.drain()
    [turn] = [a.turn for a in actions if isinstance(a, SaveTurn)]
    assert (turn.role, turn.kind, turn.text) == ("caller", "dtmf", "Pressed 123")
    item, create = openai_sent(actions)
    assert "pressed the keys 123" in item["item"]["content"][0]["text"]
    assert create["type"] == "response.create"


def test_hash_key_sends_at_once():
    bridge = live()
    bridge.on_twilio(twilio_media.Dtmf("4", STREAM), 0.0)
    bridge.on_twilio(twilio_media.Dtmf("#", STREAM), 0.1)
    [turn] = [a.turn for a in bridge.drain() if isinstance(a, SaveTurn)]
    assert turn.text == "Pressed 4#"


def test_time_limit_wraps_up_then_hangs_up():
    bridge = live(agent(max_call_seconds=60))
    bridge.on_tick(44.0)
    assert bridge.drain() == []
    bridge.on_tick(45.0)  # 15 s before the limit
    wrap_up, create = openai_sent(bridge.drain())
    assert "time limit" in wrap_up["item"]["content"][0]["text"]
    assert create["response"]["metadata"] == {"voiceagent_closing": "time_limit"}
    bridge.on_openai(
        {
            "type": "response.created",
            "response": {"id": "resp_bye", "metadata": create["response"]["metadata"]},
        },
        45.1,
    )
    start_response(bridge, "item_bye", response="resp_bye", now=45.1)
    response_done(bridge, "resp_bye", now=46.0)
    assert [a for a in bridge.drain() if isinstance(a, EndCall)] == [EndCall("time_limit", "", True)]


def test_hard_time_limit_ends_even_a_call_that_never_wraps_up():
    bridge = live(agent(max_call_seconds=60))
    bridge.on_openai({"type": "response.created", "response": {"id": "resp_long"}}, 10)
    bridge.on_tick(69.9)
    assert not [a for a in bridge.drain() if isinstance(a, EndCall)]
    bridge.on_tick(70.1)
    assert [a for a in bridge.drain() if isinstance(a, EndCall)] == [EndCall("time_limit", "", True)]


def test_repeated_silence_ends_the_call_after_a_goodbye():
    bridge = live(agent(max_silence_prompts=2, idle_timeout_seconds=8))
    for n in range(2):  # the service prompts the caller itself
        bridge.on_openai({"type": "input_audio_buffer.timeout_triggered", "item_id": f"u{n}"}, 10.0 * n)
        assert bridge.drain() == []
    bridge.on_openai({"type": "response.created", "response": {"id": "resp_prompt"}}, 30.0)
    bridge.on_openai({"type": "input_audio_buffer.timeout_triggered", "item_id": "u3"}, 30.0)
    goodbye_item = openai_sent(bridge.drain())
    assert [e["type"] for e in goodbye_item] == ["conversation.item.create"]
    response_done(bridge, "resp_prompt", now=31.0)
    [create] = openai_sent(bridge.drain())
    assert create["response"]["metadata"] == {"voiceagent_closing": "silence"}
    bridge.on_openai(
        {
            "type": "response.created",
            "response": {"id": "resp_bye", "metadata": create["response"]["metadata"]},
        },
        31.1,
    )
    response_done(bridge, "resp_bye", now=32.0)
    assert [a for a in bridge.drain() if isinstance(a, EndCall)] == [EndCall("silence", "", True)]


def test_caller_speaking_again_cancels_the_silence_goodbye():
    bridge = live(agent(max_silence_prompts=0))
    bridge.on_openai({"type": "input_audio_buffer.timeout_triggered", "item_id": "u1"}, 10.0)
    bridge.drain()
    bridge.on_openai({"type": "input_audio_buffer.speech_started", "item_id": "u2"}, 10.5)
    bridge.on_tick(40.0)
    assert not [a for a in bridge.drain() if isinstance(a, EndCall)]


def output_item(bridge, item, response, now):
    bridge.on_openai(
        {
            "type": "response.output_item.added",
            "response_id": response,
            "item": {"id": item, "type": "message", "role": "assistant"},
        },
        now,
    )


def goodbye_asked(actions) -> dict:
    """The tagged response.create of a goodbye the bridge asked for (after its system note)."""
    sent = openai_sent(actions)
    [create] = [e for e in sent if e["type"] == "response.create"]
    assert sent[-2]["type"] == "conversation.item.create" and sent[-2]["item"]["role"] == "system"
    assert create["response"]["tool_choice"] == "none"  # the goodbye cannot end in another tool call
    return create


def say_goodbye(bridge, create, now):
    """The model answers the request: a short goodbye, streamed; returns its actions."""
    response = {"id": "resp_bye", "metadata": create["response"]["metadata"]}
    bridge.on_openai({"type": "response.created", "response": response}, now)
    output_item(bridge, "item_bye", "resp_bye", now)
    bridge.on_openai(delta("item_bye", b"\x55" * 1600, response="resp_bye"), now=now)
    actions = bridge.drain()
    response_done(bridge, "resp_bye", now=now + 0.05)
    return actions + bridge.drain()


def test_end_call_with_nothing_said_asks_for_a_goodbye_and_hangs_up_once_it_is_heard():
    bridge = live()
    bridge.playback.rtt = 0.0
    bridge.on_openai({"type": "response.created", "response": {"id": "resp_1"}}, 0)
    function_call(bridge, "end_call", {"reason": "caller is done"})  # no audio in this response
    response_done(bridge, now=0.05)
    actions = bridge.drain()
    assert not [a for a in actions if isinstance(a, EndCall)]  # not in silence
    create = goodbye_asked(actions)
    assert create["response"]["metadata"] == {"voiceagent_closing": "agent_ended"}
    goodbye = say_goodbye(bridge, create, now=0.1)
    assert not [a for a in goodbye if isinstance(a, EndCall)]  # 200 ms still playing
    echo_all_marks(bridge, goodbye, now=0.35)
    assert [a for a in bridge.drain() if isinstance(a, EndCall)] == [EndCall("agent_ended", "", True)]


def test_transfer_with_nothing_said_tells_the_caller_before_the_redirect():
    bridge = live()
    bridge.playback.rtt = 0.0
    bridge.on_openai({"type": "response.created", "response": {"id": "resp_1"}}, 0)
    function_call(bridge, "transfer_call", {})
    response_done(bridge, now=0.1)
    actions = bridge.drain()
    assert not [a for a in actions if isinstance(a, Transfer)]
    create = goodbye_asked(actions)
    assert "transferring" in openai_sent(actions)[-2]["item"]["content"][0]["text"]
    notice = say_goodbye(bridge, create, now=0.2)
    assert not [a for a in notice if isinstance(a, Transfer)]
    echo_all_marks(bridge, notice, now=0.45)
    assert [a for a in bridge.drain() if isinstance(a, Transfer)] == [Transfer("+15550009999")]


def test_end_call_during_a_time_limit_goodbye_still_waits_for_it():
    bridge = live(agent(max_call_seconds=60))
    bridge.playback.rtt = 0.0
    bridge.on_tick(45.0)
    create = goodbye_asked(bridge.drain())
    response = {"id": "resp_bye", "metadata": create["response"]["metadata"]}
    bridge.on_openai({"type": "response.created", "response": response}, 45.1)
    function_call(bridge, "end_call", {}, response="resp_bye", now=45.1)
    assert not [a for a in bridge.drain() if isinstance(a, EndCall)]
    output_item(bridge, "item_bye", "resp_bye", 45.2)
    bridge.on_openai(delta("item_bye", b"\x55" * 1600, response="resp_bye"), now=45.2)
    goodbye = bridge.drain()
    response_done(bridge, "resp_bye", now=45.3)
    assert not [a for a in bridge.drain() if isinstance(a, EndCall)]
    echo_all_marks(bridge, goodbye, now=45.5)
    assert [a.reason for a in bridge.drain() if isinstance(a, EndCall)] == ["time_limit"]


def test_every_end_reason_the_bridge_can_give_is_a_stored_ended_reason():
    # The core names reasons as literals (it imports no Django); the call record stores them.
    from typing import get_args

    from calls.bridge.actions import EndReason
    from calls.models import EndedReason

    assert set(get_args(EndReason)) <= set(EndedReason.values)
