"""Our Realtime client events and the server events we handle, against the official SDK.

Why (issue 12): ``calls/realtime.py`` and the fake were both written from our own notes, so a
mistake in the notes would pass every other test. Here the ``openai`` SDK's GA types, generated
from OpenAI's spec, are the judge. The validator itself is tested first, with events the
service is known to refuse, so that "valid" below means something.
"""

from __future__ import annotations

import json
import typing
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types import realtime as r
from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent

from calls import realtime, tools
from calls.fakes import realtime_schema
from calls.models import Eagerness, NoiseReduction, TurnDetection, Voice
from calls.realtime import AgentConfig


def union_types(union: Any) -> set[str]:
    """The ``type`` literal of every member of one of the SDK's event unions."""
    members = typing.get_args(typing.get_args(union)[0])
    assert len(members) > 10, "not the SDK's Annotated[Union[...]] event union any more"
    found: set[str] = set()
    for member in members:
        found.update(typing.get_args(member.model_fields["type"].annotation))
    return found


def problem(event: dict[str, Any] | str) -> realtime_schema.Problem | None:
    raw = event if isinstance(event, str) else json.dumps(event)
    return realtime_schema.client_event_problem(json.loads(raw).get("type"), raw)


# -- the validator refuses what the service refuses ------------------------------------------


def test_validation_is_on_in_tests() -> None:
    assert realtime_schema.ENABLED


@pytest.mark.parametrize(
    ("event", "code", "param"),
    [
        # unknown event type (the docs' own example)
        ({"type": "scooby.dooby.doo"}, "invalid_value", "type"),
        # GA requires session.type on every update
        (
            {"type": "session.update", "session": {"instructions": "x"}},
            "missing_required_parameter",
            "session.type",
        ),
        # beta-era flat fields the GA session does not have
        (
            {"type": "session.update", "session": {"type": "realtime", "voice": "marin"}},
            "unknown_parameter",
            "session.voice",
        ),
        (
            {"type": "session.update", "session": {"type": "realtime", "input_audio_format": "g711_ulaw"}},
            "unknown_parameter",
            "session.input_audio_format",
        ),
        # an unknown key deep inside: the SDK models allow extras, we do not
        (
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"format": {"type": "audio/pcmu"}, "rate": 8000}},
                },
            },
            "unknown_parameter",
            "session.audio.input.rate",
        ),
        # beta format name
        (
            {
                "type": "session.update",
                "session": {"type": "realtime", "audio": {"input": {"format": "g711_ulaw"}}},
            },
            "invalid_type",
            "session.audio.input.format",
        ),
        ({"type": "response.create", "bogus": 1}, "unknown_parameter", "bogus"),
        # strict: no "1500" for 1500
        (
            {
                "type": "conversation.item.truncate",
                "item_id": "i",
                "content_index": 0,
                "audio_end_ms": "1500",
            },
            "invalid_type",
            "audio_end_ms",
        ),
        (
            {"type": "conversation.item.truncate", "item_id": "i", "content_index": 0},
            "missing_required_parameter",
            "audio_end_ms",
        ),
        # the assistant's words are output_text; a system message takes input_text only
        (
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "system",
                    "content": [{"type": "output_text", "text": "x"}],
                },
            },
            "invalid_value",
            "item.content[0].type",
        ),
        # beta content type name
        (
            {
                "type": "conversation.item.create",
                "item": {"type": "message", "role": "assistant", "content": [{"type": "text", "text": "x"}]},
            },
            "invalid_value",
            "item.content[0].type",
        ),
        ({"type": "input_audio_buffer.append", "audio": 5}, "invalid_type", "audio"),
        ({"type": "input_audio_buffer.append", "audio": "AAAA", "event_id": 7}, "invalid_type", "event_id"),
        ({"type": "input_audio_buffer.append", "audio": "AAAA", "x": None}, "unknown_parameter", "x"),
    ],
)
def test_validator_refuses_malformed_client_events(event: dict[str, Any], code: str, param: str) -> None:
    found = problem(event)
    assert found is not None, "accepted"
    assert (found.code, found.param) == (code, param), found.message


def test_validator_refuses_fake_server_events_with_unknown_or_mistyped_fields() -> None:
    good = {
        "type": "conversation.item.truncated",
        "event_id": "e",
        "item_id": "i",
        "content_index": 0,
        "audio_end_ms": 5,
    }
    assert realtime_schema.server_event_problem(good["type"], json.dumps(good)) is None
    bad = [
        {**good, "audio_end_ms": 5.5},
        {**good, "extra": True},
        {k: v for k, v in good.items() if k != "event_id"},
        {**good, "type": "conversation.item.truncate"},
    ]
    for event in bad:
        assert realtime_schema.server_event_problem(event["type"], json.dumps(event)) is not None, event


# -- the bridge's server events -------------------------------------------------------------


def test_every_server_event_the_bridge_handles_is_a_ga_server_event() -> None:
    ga = union_types(RealtimeServerEvent)
    handled = realtime.HANDLED_EVENT_TYPES
    assert not handled - ga, f"not GA server events: {sorted(handled - ga)}"


# Events as the official SDK's types build them: the parser reads the fields they define.
SDK_EVENTS = [
    (
        r.ResponseAudioDeltaEvent(
            type="response.output_audio.delta",
            event_id="e1",
            response_id="resp_1",
            item_id="item_1",
            output_index=0,
            content_index=0,
            delta="//8=",
        ),
        realtime.AudioDelta("resp_1", "item_1", "//8="),
    ),
    (
        r.InputAudioBufferSpeechStartedEvent(
            type="input_audio_buffer.speech_started", event_id="e2", item_id="item_2", audio_start_ms=480
        ),
        realtime.SpeechStarted("item_2", 480),
    ),
    (
        r.ResponseFunctionCallArgumentsDoneEvent(
            type="response.function_call_arguments.done",
            event_id="e3",
            response_id="resp_3",
            item_id="item_3",
            output_index=0,
            call_id="call_3",
            name="lookup_order",
            arguments='{"order": "42"}',
        ),
        realtime.FunctionCall("resp_3", "item_3", "call_3", "lookup_order", '{"order": "42"}'),
    ),
    (
        r.ConversationItemInputAudioTranscriptionCompletedEvent(
            type="conversation.item.input_audio_transcription.completed",
            event_id="e4",
            item_id="item_4",
            content_index=0,
            transcript=" Table for two. ",
            usage={"type": "duration", "seconds": 1.5},
        ),
        realtime.TranscriptionCompleted("item_4", "Table for two.", {"type": "duration", "seconds": 1.5}),
    ),
    (
        r.RealtimeErrorEvent(
            type="error",
            event_id="e5",
            error={"type": "invalid_request_error", "code": "bad", "message": "No.", "param": "audio_end_ms"},
        ),
        realtime.ServerError("bad", "No.", "audio_end_ms"),
    ),
]


@pytest.mark.parametrize(("sdk_event", "parsed"), SDK_EVENTS, ids=lambda v: getattr(v, "type", ""))
def test_server_events_built_by_the_sdk_parse_to_their_typed_values(sdk_event: Any, parsed: Any) -> None:
    assert realtime.parse_server_event(sdk_event.model_dump_json(exclude_none=True)) == parsed


@pytest.mark.parametrize(
    ("message", "parsed"),
    [
        (b"\xff\xfe", realtime.Malformed("", "not JSON")),
        ("{", realtime.Malformed("", "not JSON")),
        ("[1, 2]", realtime.Malformed("", "not a JSON object")),
        ('{"type": 7}', realtime.Malformed("", "no event type")),
        ('{"type": "rate_limits.updated", "rate_limits": []}', realtime.Unknown("rate_limits.updated")),
        (
            '{"type": "response.output_audio.delta", "item_id": "i", "delta": 5}',
            realtime.Malformed("response.output_audio.delta", "delta is not a string"),
        ),
        (
            '{"type": "response.output_audio.delta", "item_id": "i"}',
            realtime.Malformed("response.output_audio.delta", "no delta"),
        ),
        (
            '{"type": "response.function_call_arguments.done", "name": "x"}',
            realtime.Malformed("response.function_call_arguments.done", "no call_id"),
        ),
    ],
)
def test_what_is_not_a_well_formed_event_is_a_value_not_an_exception(message: Any, parsed: Any) -> None:
    assert realtime.parse_server_event(message) == parsed


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    )
)
def test_parsing_never_raises(value: Any) -> None:
    event = realtime.server_event(value)
    assert isinstance(event, typing.get_args(realtime.ServerEvent))


@given(
    st.sampled_from(sorted(realtime.HANDLED_EVENT_TYPES)),
    st.dictionaries(
        st.sampled_from(
            [
                "item_id",
                "response_id",
                "delta",
                "call_id",
                "item",
                "response",
                "error",
                "session",
                "transcript",
                "usage",
            ]
        ),
        st.none()
        | st.integers()
        | st.text()
        | st.lists(st.integers())
        | st.dictionaries(st.text(), st.text()),
    ),
)
def test_a_handled_event_with_fields_of_any_type_never_raises(kind: str, fields: dict[str, Any]) -> None:
    event = realtime.server_event({"type": kind, **fields})
    assert isinstance(event, typing.get_args(realtime.ServerEvent))


def test_our_client_event_types_are_the_sdk_union() -> None:
    assert set(realtime_schema.CLIENT_EVENTS) == union_types(RealtimeClientEvent)
    assert set(realtime_schema.SERVER_EVENTS) == union_types(RealtimeServerEvent)


# -- every client event builder -------------------------------------------------------------

TOOLS = tools.definitions(
    ["end_call", "transfer_call"], transfer_destinations=["+15551230000", "+15551230001"]
)


def agents() -> list[AgentConfig]:
    """A typical agent, then every choice an Agent row can hold."""
    typical = AgentConfig(
        instructions="You answer the phone for Luigi's.",
        model="gpt-realtime",
        greeting="Hi, Luigi's here.",
        transcription_model="gpt-realtime-whisper",
        transcription_language="en",
        idle_timeout_seconds=8,
        tools=TOOLS,
        transfer_destinations=["+15551230000"],
    )
    variants = [typical, AgentConfig(instructions="", model="gpt-realtime-mini")]
    variants += [AgentConfig(instructions="x", model="gpt-realtime", voice=v) for v in Voice.values]
    variants += [AgentConfig(instructions="x", model="m", noise_reduction=n) for n in NoiseReduction.values]
    variants += [
        AgentConfig(instructions="x", model="m", turn_detection=t, vad_eagerness=e)
        for t in TurnDetection.values
        for e in Eagerness.values
    ]
    return variants


@pytest.mark.parametrize(
    "agent",
    agents(),
    ids=lambda a: f"{a.voice}-{a.turn_detection}-{a.vad_eagerness}-{a.noise_reduction or 'off'}",
)
def test_session_update_is_a_valid_ga_event(agent: AgentConfig) -> None:
    assert problem(realtime.session_update(agent)) is None


@pytest.mark.parametrize(
    "raw",
    [
        realtime.audio_append("f/9/f38="),
        realtime.response_create(),
        realtime.response_create("Greet the caller."),
        realtime.response_create(metadata={"purpose": "silence_prompt"}),
        realtime.response_create(realtime.greeting_instructions("Hi."), {"purpose": "greeting"}),
        realtime.response_cancel(),
        realtime.response_cancel("resp_C9G8p7IH2WxLbkgPNouYL"),
        realtime.truncate("item_C9G8p7IH2WxLbkgPNouYL", 1500),
        realtime.truncate("item_C9G8p7IH2WxLbkgPNouYL", 0),
        realtime.text_item("When do you open?"),
        realtime.text_item("When do you open?", role="user", item_id="replay_1"),
        realtime.text_item("We open at nine.", role="assistant", item_id="replay_2"),
        realtime.text_item("The transfer failed.", role="system"),
        realtime.function_output("call_sHlR7iaFwQ2YQOqm", '{"ok": true}'),
    ],
)
def test_client_event_builders_make_valid_ga_events(raw: str) -> None:
    assert problem(raw) is None
