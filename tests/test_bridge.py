"""The sans-IO bridge: events in, actions out, no sockets."""

from __future__ import annotations

import base64
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from calls import twilio_media
from calls.bridge import (
    CHUNK_CHARS,
    EndCall,
    RecordError,
    SaveTurn,
    SendOpenAI,
    SendTwilio,
)
from calls.realtime import AgentConfig
from tests.bridge_driver import DrivenBridge

STREAM = "MZ" + "a" * 32
AGENT = AgentConfig(
    instructions="Be brief.", model="gpt-realtime-2.1", transcription_model="gpt-realtime-whisper"
)


def make_bridge(agent: AgentConfig = AGENT, *, now: float = 0.0, frames_per_append: int = 1) -> DrivenBridge:
    bridge = DrivenBridge(
        agent, stream_sid=STREAM, call_sid="CA" + "1" * 32, now=now, frames_per_append=frames_per_append
    )
    bridge.drain()  # the round-trip probe mark
    return bridge


def live_bridge(agent: AgentConfig = AGENT, *, frames_per_append: int = 1) -> DrivenBridge:
    bridge = make_bridge(agent, frames_per_append=frames_per_append)
    bridge.on_openai_connected()
    bridge.on_openai(session_updated(), 0.0)
    bridge.drain()
    return bridge


def session_updated(fmt: str = "audio/pcmu") -> dict:
    return {
        "type": "session.updated",
        "session": {
            "type": "realtime",
            "audio": {"input": {"format": {"type": fmt}}, "output": {"format": {"type": fmt}}},
        },
    }


def openai_sent(actions) -> list[dict]:
    return [json.loads(a.text) for a in actions if isinstance(a, SendOpenAI)]


def twilio_sent(actions) -> list[dict]:
    return [json.loads(a.text) for a in actions if isinstance(a, SendTwilio)]


def saved_turns(actions):
    return [a.turn for a in actions if isinstance(a, SaveTurn)]


def media(payload: bytes, timestamp: int = 0) -> twilio_media.Media:
    return twilio_media.Media(base64.b64encode(payload).decode(), timestamp, STREAM)


def delta(item: str, audio: bytes, response: str = "resp_1") -> dict:
    return {
        "type": "response.output_audio.delta",
        "response_id": response,
        "item_id": item,
        "delta": base64.b64encode(audio).decode(),
    }


def start_response(bridge: DrivenBridge, item: str, response: str = "resp_1", now: float = 0.0) -> None:
    bridge.on_openai({"type": "response.created", "response": {"id": response}}, now)
    bridge.on_openai(
        {
            "type": "response.output_item.added",
            "response_id": response,
            "item": {"id": item, "type": "message", "role": "assistant"},
        },
        now,
    )


def test_session_update_is_ga_pcmu_both_ways():
    bridge = make_bridge()
    bridge.on_openai_connected()
    [update] = openai_sent(bridge.drain())
    session = update["session"]
    assert update["type"] == "session.update"
    assert session["type"] == "realtime"
    assert session["audio"]["input"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["format"] == {"type": "audio/pcmu"}
    assert session["audio"]["output"]["voice"] == "marin"
    assert session["audio"]["input"]["transcription"] == {"model": "gpt-realtime-whisper"}
    assert session["audio"]["input"]["turn_detection"]["interrupt_response"] is True
    for beta_field in ("modalities", "voice", "input_audio_format", "turn_detection", "temperature"):
        assert beta_field not in session


def test_session_with_other_formats_ends_the_call_loudly():
    bridge = make_bridge()
    bridge.on_openai_connected()
    bridge.on_openai(session_updated("audio/pcm"), 0.0)
    [end] = [a for a in bridge.drain() if isinstance(a, EndCall)]
    assert end.reason == "error" and "audio/pcm" in end.error


def test_refused_session_ends_the_call_with_the_error():
    bridge = make_bridge()
    bridge.on_openai_connected()
    bridge.on_openai(
        {
            "type": "error",
            "error": {"code": "missing_required_parameter", "message": "Missing 'session.type'."},
        },
        0.0,
    )
    [end] = [a for a in bridge.drain() if isinstance(a, EndCall)]
    assert "missing_required_parameter" in end.error


def test_preconfigured_session_is_not_configured_again_and_goes_live_on_its_update():
    bridge = make_bridge(AgentConfig(instructions="x", model="m", greeting="Hi, Luigi's here."))
    bridge.on_twilio(media(b"\x01" * 160), 0.0)
    bridge.on_openai_connected(configured=True)
    assert openai_sent(bridge.drain()) == []  # its session.update went out from the webhook
    # Read from the socket's buffer after the claim: what OpenAI sent while it waited.
    bridge.on_openai({"type": "session.created", "session": {"type": "realtime"}}, 0.0)
    assert openai_sent(bridge.drain()) == []
    bridge.on_openai(session_updated(), 0.0)
    sent = openai_sent(bridge.drain())
    assert [e["type"] for e in sent] == ["input_audio_buffer.append", "response.create"]
    assert bridge.session_ready and bridge.sessions == 1


def test_session_after_a_preconfigured_one_is_configured_as_usual():
    bridge = make_bridge()
    bridge.on_openai_connected(configured=True)
    bridge.on_openai(session_updated(), 0.0)
    bridge.on_openai_lost(1.0, "dropped")
    bridge.drain()
    bridge.on_openai_connected()
    [update] = openai_sent(bridge.drain())
    assert update["type"] == "session.update" and bridge.sessions == 2


def test_caller_audio_before_openai_is_ready_is_buffered_in_order():
    bridge = make_bridge()
    frames = [bytes([i]) * 160 for i in range(5)]
    for i, frame in enumerate(frames):
        bridge.on_twilio(media(frame, 20 * i), 0.0)
    assert openai_sent(bridge.drain()) == []
    bridge.on_openai_connected()
    bridge.on_openai(session_updated(), 0.0)
    appends = [e for e in openai_sent(bridge.drain()) if e["type"] == "input_audio_buffer.append"]
    assert [base64.b64decode(e["audio"]) for e in appends] == frames
    bridge.on_twilio(media(b"\x7f" * 160, 100), 0.0)
    [after] = openai_sent(bridge.drain())
    assert base64.b64decode(after["audio"]) == b"\x7f" * 160


def test_caller_frames_go_to_openai_two_per_append_when_set():
    """OPENAI_AUDIO_APPEND_MS=40: each append carries two Twilio frames, byte for byte and in
    order (their base64 strings end in padding, so they are joined as audio, not as text)."""
    bridge = live_bridge(frames_per_append=2)
    frames = [bytes([i + 1]) * 160 for i in range(5)]
    sent: list[dict] = []
    for i, frame in enumerate(frames):
        bridge.on_twilio(media(frame, 20 * i), 0.0)
        sent.append(openai_sent(bridge.drain()))
    assert [len(batch) for batch in sent] == [0, 1, 0, 1, 0]
    appends = [e for batch in sent for e in batch]
    assert [e["type"] for e in appends] == ["input_audio_buffer.append"] * 2
    assert [base64.b64decode(e["audio"]) for e in appends] == [frames[0] + frames[1], frames[2] + frames[3]]


def test_a_frame_held_for_the_next_append_is_not_sent_twice_after_a_lost_session():
    """The held frame is part of the utterance kept for a new session: the caller was speaking,
    so the new session hears it once, in the replayed audio, and never from the old batch."""
    bridge = live_bridge(frames_per_append=2)
    bridge.on_openai(
        {"type": "input_audio_buffer.speech_started", "audio_start_ms": 0, "item_id": "it1"}, 0.0
    )
    frames = [bytes([i + 1]) * 160 for i in range(3)]
    for i, frame in enumerate(frames):
        bridge.on_twilio(media(frame, 20 * i), 0.0)
    bridge.drain()
    bridge.on_openai_lost(1.0, "dropped")
    bridge.on_openai_connected()
    bridge.on_openai(session_updated(), 1.0)
    bridge.on_twilio(media(b"\x09" * 160, 60), 1.0)
    audio = b"".join(
        base64.b64decode(e["audio"])
        for e in openai_sent(bridge.drain())
        if e["type"] == "input_audio_buffer.append"
    )
    assert audio.count(frames[2]) == 1 and audio.startswith(frames[0])


def test_greeting_asks_for_a_first_response():
    bridge = make_bridge(AgentConfig(instructions="x", model="m", greeting="Hi, Luigi's here."))
    bridge.on_openai_connected()
    bridge.on_openai(session_updated(), 0.0)
    [create] = [e for e in openai_sent(bridge.drain()) if e["type"] == "response.create"]
    assert "Hi, Luigi's here." in create["response"]["instructions"]


def test_agent_audio_goes_to_twilio_unchanged_with_a_mark_per_chunk():
    bridge = live_bridge()
    start_response(bridge, "item_a")
    audio = bytes(range(256)) * 15  # 3840 bytes: four 960-byte chunks
    bridge.on_openai(delta("item_a", audio), 0.0)
    sent = twilio_sent(bridge.drain())
    medias = [m for m in sent if m["event"] == "media"]
    marks = [m for m in sent if m["event"] == "mark"]
    assert b"".join(base64.b64decode(m["media"]["payload"]) for m in medias) == audio
    assert all(len(m["media"]["payload"]) <= CHUNK_CHARS for m in medias)
    assert len(marks) == len(medias) == 4
    assert [m["event"] for m in sent] == ["media", "mark"] * 4
    assert all(m["streamSid"] == STREAM for m in sent)


def test_barge_in_clears_twilio_and_truncates_at_what_was_heard():
    bridge = live_bridge()
    bridge.playback.rtt = 0.0
    start_response(bridge, "item_a")
    bridge.on_openai(delta("item_a", b"\x55" * 8000), now=0.0)  # one second of audio
    bridge.drain()
    bridge.on_openai({"type": "input_audio_buffer.speech_started", "item_id": "item_u"}, now=0.4)
    actions = bridge.drain()
    assert twilio_sent(actions) == [{"event": "clear", "streamSid": STREAM}]
    [truncate] = [e for e in openai_sent(actions) if e["type"] == "conversation.item.truncate"]
    assert truncate["item_id"] == "item_a" and truncate["content_index"] == 0
    assert abs(truncate["audio_end_ms"] - 400) <= 1
    # The server's cancellation arrives; the interrupted turn is stored as such.
    bridge.on_openai(
        {"type": "response.output_audio_transcript.done", "item_id": "item_a", "transcript": "Sure, we open"},
        now=0.45,
    )
    [turn] = saved_turns(bridge.drain())
    assert turn.interrupted and abs(turn.heard_ms - 400) <= 1 and turn.role == "agent"


def test_speech_with_nothing_playing_sends_no_clear():
    bridge = live_bridge()
    bridge.on_openai({"type": "input_audio_buffer.speech_started", "item_id": "item_u"}, now=1.0)
    assert bridge.drain() == []


def test_audio_of_an_interrupted_response_is_dropped_and_cancelled_once():
    bridge = live_bridge()
    start_response(bridge, "item_a")
    bridge.on_openai(delta("item_a", b"\x55" * 960), now=0.0)
    bridge.on_openai({"type": "input_audio_buffer.speech_started", "item_id": "item_u"}, now=0.05)
    bridge.drain()
    bridge.on_openai(delta("item_a", b"\x55" * 960), now=0.06)
    bridge.on_openai(delta("item_a", b"\x55" * 960), now=0.07)
    actions = bridge.drain()
    assert twilio_sent(actions) == []
    assert [e["type"] for e in openai_sent(actions)] == ["response.cancel"]


def test_active_response_conflict_is_retried_after_response_done():
    bridge = live_bridge()
    bridge.on_openai(
        {"type": "error", "error": {"code": "conversation_already_has_active_response", "message": "busy"}},
        0.0,
    )
    assert [a for a in bridge.drain() if isinstance(a, EndCall | RecordError)] == []
    bridge.on_openai({"type": "response.done", "response": {"id": "resp_9", "output": []}}, 0.1)
    assert [e["type"] for e in openai_sent(bridge.drain())] == ["response.create"]


def test_truncate_error_is_logged_not_fatal():
    bridge = live_bridge()
    bridge.on_openai(
        {
            "type": "error",
            "error": {"code": None, "message": "Audio content of 300ms is already shorter than 350ms"},
        },
        0.0,
    )
    assert bridge.drain() == []
    assert bridge.ended is None


def test_agent_turn_is_saved_once_every_mark_was_echoed():
    bridge = live_bridge()
    start_response(bridge, "item_a")
    bridge.on_openai(delta("item_a", b"\x55" * 1920), now=0.0)
    marks = [m["mark"]["name"] for m in twilio_sent(bridge.drain()) if m["event"] == "mark"]
    for kind in ("response.output_audio.done",):
        bridge.on_openai({"type": kind, "item_id": "item_a"}, 0.01)
    bridge.on_openai(
        {"type": "response.output_audio_transcript.done", "item_id": "item_a", "transcript": "Hello there."},
        0.01,
    )
    assert saved_turns(bridge.drain()) == []  # still playing
    bridge.on_twilio(twilio_media.Mark(marks[0], STREAM), 0.15)
    assert saved_turns(bridge.drain()) == []
    bridge.on_twilio(twilio_media.Mark(marks[1], STREAM), 0.27)
    [turn] = saved_turns(bridge.drain())
    assert (turn.text, turn.interrupted, turn.role) == ("Hello there.", False, "agent")


def test_usage_is_summed_over_responses_and_transcriptions():
    bridge = live_bridge()
    usage = {
        "total_tokens": 10,
        "input_tokens": 6,
        "output_tokens": 4,
        "input_token_details": {"audio_tokens": 5, "text_tokens": 1, "cached_tokens": 0},
    }
    for n in range(2):
        bridge.on_openai(
            {"type": "response.done", "response": {"id": f"r{n}", "output": [], "usage": usage}}, 0
        )
    bridge.on_openai(
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "item_u",
            "transcript": "hi",
            "usage": {"type": "duration", "seconds": 1.5},
        },
        0,
    )
    assert bridge.usage["total_tokens"] == 20
    assert bridge.usage["input_token_details"]["audio_tokens"] == 10
    assert bridge.transcription_usage["seconds"] == 1.5


def test_stop_ends_the_call_as_caller_hang_up():
    bridge = live_bridge()
    bridge.on_twilio(twilio_media.Stop(STREAM), 0.0)
    assert [a for a in bridge.drain() if isinstance(a, EndCall)] == [EndCall("caller_hung_up")]


def test_finish_stores_the_turn_in_progress():
    bridge = live_bridge()
    bridge.playback.rtt = 0.0
    start_response(bridge, "item_a")
    bridge.on_openai(
        {"type": "response.output_audio_transcript.delta", "item_id": "item_a", "delta": "Our hours"}, 0.0
    )
    bridge.on_openai(delta("item_a", b"\x55" * 8000), now=0.0)
    bridge.drain()
    bridge.finish(now=0.5)
    [turn] = saved_turns(bridge.drain())
    assert turn.text == "Our hours" and turn.interrupted and abs(turn.heard_ms - 500) <= 1


def conversation_events(exchanges: int) -> list[tuple[str, dict]]:
    """A conversation of caller and agent turns as OpenAI emits them, in conversation order."""
    events = []
    for n in range(exchanges):
        user, agent = f"item_u{n}", f"item_a{n}"
        events += [
            (
                "conv",
                {"type": "input_audio_buffer.speech_started", "item_id": user, "audio_start_ms": 1000 * n},
            ),
            (
                "conv",
                {
                    "type": "input_audio_buffer.speech_stopped",
                    "item_id": user,
                    "audio_end_ms": 1000 * n + 500,
                },
            ),
            ("conv", {"type": "input_audio_buffer.committed", "item_id": user}),
            ("conv", {"type": "response.created", "response": {"id": f"resp_{n}"}}),
            (
                "conv",
                {
                    "type": "response.output_item.added",
                    "response_id": f"resp_{n}",
                    "item": {"id": agent, "type": "message", "role": "assistant"},
                },
            ),
            (
                "late",
                {
                    "type": "conversation.item.input_audio_transcription.completed",
                    "item_id": user,
                    "transcript": f"caller {n}",
                },
            ),
            (
                "conv",
                {
                    "type": "response.output_audio_transcript.done",
                    "item_id": agent,
                    "transcript": f"agent {n}",
                },
            ),
            ("conv", {"type": "response.done", "response": {"id": f"resp_{n}", "output": [{"id": agent}]}}),
        ]
    return events


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=5), st.randoms(use_true_random=False))
def test_transcript_order_is_conversation_order_whatever_the_arrival_order(exchanges, rng):
    events = conversation_events(exchanges)
    conversation = [e for kind, e in events if kind == "conv"]
    late = [e for kind, e in events if kind == "late"]
    # Transcriptions arrive late and in any order, but each after its own commit.
    arrival = list(conversation)
    rng.shuffle(late)
    for event in late:
        commit_at = next(
            i
            for i, e in enumerate(arrival)
            if e["type"] == "input_audio_buffer.committed" and e["item_id"] == event["item_id"]
        )
        arrival.insert(rng.randint(commit_at + 1, len(arrival)), event)
    bridge = live_bridge()
    for event in arrival:
        bridge.on_openai(event, 0.0)
    bridge.finish(1.0)
    turns = sorted(saved_turns(bridge.drain()), key=lambda t: t.position)
    expected = [text for n in range(exchanges) for text in (f"caller {n}", f"agent {n}")]
    assert [t.text for t in turns] == expected
    assert [t.role for t in turns] == ["caller", "agent"] * exchanges
    assert turns[0].started_ms == 0 and turns[0].ended_ms == 500
