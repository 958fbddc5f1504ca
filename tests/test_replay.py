"""What a replacement OpenAI session is told after a drop: the whole conversation so far, in
order, as the caller lived it (sans-IO, no sockets)."""

from __future__ import annotations

import base64
import json

from hypothesis import given
from hypothesis import strategies as st

from calls import twilio_media
from calls.bridge import PREFIX_FRAMES, replay
from calls.bridge.actions import SaveTurn, ToolCallRecord
from tests.bridge_driver import DrivenBridge
from tests.test_bridge import STREAM, delta, media, openai_sent, session_updated, start_response, twilio_sent
from tests.test_bridge_actions import agent, function_call, live, response_done


def echo_all_marks(bridge: DrivenBridge, actions: list, now: float) -> None:
    for message in twilio_sent(actions):
        if message["event"] == "mark":
            bridge.on_twilio(twilio_media.Mark(message["mark"]["name"], STREAM), now)


def say(bridge: DrivenBridge, item: str, response: str, text: str, nbytes: int, now: float) -> list:
    """One agent answer streamed in full; returns the actions (to echo its marks)."""
    start_response(bridge, item, response, now)
    bridge.on_openai(delta(item, b"\x55" * nbytes, response), now)
    bridge.on_openai(
        {"type": "response.output_audio_transcript.done", "item_id": item, "transcript": text}, now
    )
    bridge.on_openai({"type": "response.output_audio.done", "item_id": item}, now)
    return bridge.drain()


def caller_says(bridge: DrivenBridge, item: str, text: str | None, now: float) -> None:
    bridge.on_openai({"type": "input_audio_buffer.speech_started", "item_id": item, "audio_start_ms": 0}, now)
    bridge.on_openai({"type": "input_audio_buffer.speech_stopped", "item_id": item, "audio_end_ms": 900}, now)
    bridge.on_openai({"type": "input_audio_buffer.committed", "item_id": item}, now)
    if text is not None:
        bridge.on_openai(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                "item_id": item,
                "transcript": text,
            },
            now,
        )


def reconnect(bridge: DrivenBridge, now: float) -> list[dict]:
    """Drop the session, open the next one; the replayed items it is sent."""
    bridge.on_openai_lost(now, "OpenAI closed the session (1011)")
    bridge.drain()
    bridge.on_openai_connected()
    bridge.on_openai(session_updated(), now)
    return [e["item"] for e in openai_sent(bridge.drain()) if e["type"] == "conversation.item.create"]


def shape(item: dict) -> tuple:
    if item["type"] == "message":
        return (item["role"], item["content"][0]["text"])
    if item["type"] == "function_call":
        return ("function_call", item["name"], item["arguments"], item["call_id"])
    return ("function_call_output", item["call_id"], item["output"])


def test_replay_holds_caller_and_agent_turns_and_tool_calls_in_conversation_order():
    bridge = live(agent(transcription_model="gpt-realtime-whisper"))
    bridge.playback.rtt = 0.0
    echo_all_marks(bridge, say(bridge, "item_hi", "resp_1", "Luigi's, how can I help?", 1600, 0.0), 0.3)
    response_done(bridge, "resp_1", now=0.3)
    caller_says(bridge, "item_q", "Where is my order A17?", 1.0)
    bridge.on_openai({"type": "response.created", "response": {"id": "resp_2"}}, 1.1)
    function_call(bridge, "lookup_order", {"order_id": "A17"}, call_id="call_7", response="resp_2", now=1.1)
    bridge.drain()
    record = ToolCallRecord(2, "lookup_order", "call_7", '{"order_id": "A17"}', {"status": "shipped"}, "", 5)
    bridge.on_tool_result("call_7", '{"status":"shipped"}', record, 1.2)
    response_done(bridge, "resp_2", now=1.2)
    bridge.drain()
    # The answer is cut off by the caller after 600 of its 1000 ms.
    say(bridge, "item_a", "resp_3", "It shipped yesterday and should arrive tomorrow.", 8000, 2.0)
    bridge.on_openai({"type": "input_audio_buffer.speech_started", "item_id": "item_q2"}, 2.6)
    bridge.drain()
    # The caller's second question is committed; its transcript is still on its way.
    caller_says(bridge, "item_q2", None, 3.0)

    replayed = [shape(item) for item in reconnect(bridge, 3.1)]

    assert replayed == [
        ("assistant", "Luigi's, how can I help?"),
        ("user", "Where is my order A17?"),
        ("function_call", "lookup_order", '{"order_id": "A17"}', "call_7"),
        ("function_call_output", "call_7", '{"status":"shipped"}'),
        ("assistant", "It shipped yesterday and " + replay.INTERRUPTED),
        ("user", replay.UNKNOWN_WORDS),
    ]


def test_a_second_drop_replays_the_same_conversation_plus_what_followed():
    bridge = live(agent(transcription_model="gpt-realtime-whisper"))
    bridge.playback.rtt = 0.0
    echo_all_marks(bridge, say(bridge, "item_hi", "resp_1", "Hello.", 800, 0.0), 0.2)
    response_done(bridge, "resp_1", now=0.2)
    caller_says(bridge, "item_q", "Are you open?", 1.0)
    first = reconnect(bridge, 1.5)
    echo_all_marks(bridge, say(bridge, "item_b", "resp_2", "Yes, until ten.", 800, 2.0), 2.2)
    response_done(bridge, "resp_2", now=2.2)

    second = reconnect(bridge, 3.0)

    assert [shape(i) for i in second] == [shape(i) for i in first] + [("assistant", "Yes, until ten.")]
    assert len({i["id"] for i in first + second}) == len(first) + len(second)  # ids never reused


def test_end_call_and_key_presses_are_replayed_too():
    bridge = live(agent(transcription_model="gpt-realtime-whisper"))
    bridge.on_twilio(twilio_media.Dtmf("4", STREAM), 0.0)
    bridge.on_twilio(twilio_media.Dtmf("#", STREAM), 0.1)
    bridge.drain()
    replayed = [shape(item) for item in reconnect(bridge, 0.5)]
    assert replayed == [("user", "[The caller pressed the keys 4# on their phone keypad.]")]


def test_a_caller_turn_lost_with_the_session_is_stored_and_no_longer_awaited():
    bridge = live(agent(transcription_model="gpt-realtime-whisper"))
    caller_says(bridge, "item_q", None, 1.0)
    assert bridge.awaiting_transcripts
    bridge.on_openai_lost(1.5, "dropped")
    [turn] = [a.turn for a in bridge.drain() if isinstance(a, SaveTurn)]
    assert (turn.role, turn.text, turn.item_id) == ("caller", "", "item_q")
    assert not bridge.awaiting_transcripts


@given(
    words=st.lists(st.text(alphabet="abcdefgh", min_size=1, max_size=8), min_size=1, max_size=30),
    fraction=st.floats(min_value=0, max_value=1),
)
def test_heard_text_is_a_word_prefix_and_grows_with_what_was_heard(words, fraction):
    text = " ".join(words)
    heard = replay.heard_text(text, heard_ms=int(1000 * fraction), audio_ms=1000)
    assert text.startswith(heard)
    assert heard == "" or len(heard) == len(text) or text[len(heard)] == " "
    more = replay.heard_text(text, heard_ms=min(1000, int(1000 * fraction) + 100), audio_ms=1000)
    assert more.startswith(heard)
    assert replay.heard_text(text, heard_ms=1000, audio_ms=1000) == text


def test_replayed_items_are_valid_conversation_items():
    items = replay.replay_items(
        [
            replay.Turn("caller", "hi"),
            replay.Turn("tool", call_id="c1", tool_name="f", arguments="{}", tool_output='{"ok":true}'),
        ],
        first_id=1,
    )
    assert [json.loads(i)["item"]["type"] for i in items] == [
        "message",
        "function_call",
        "function_call_output",
    ]


def test_a_sentence_cut_by_the_drop_is_heard_whole_by_the_next_session():
    bridge = live(agent(transcription_model="gpt-realtime-whisper"))
    before = [bytes([n]) * 160 for n in range(40)]  # 800 ms of the caller listening
    for n, frame in enumerate(before):
        bridge.on_twilio(media(frame, 20 * n), 0.0)
    bridge.on_openai({"type": "input_audio_buffer.speech_started", "item_id": "item_q"}, 0.8)
    words = [bytes([100 + n]) * 160 for n in range(30)]
    for n, frame in enumerate(words):
        bridge.on_twilio(media(frame, 800 + 20 * n), 0.8)
    bridge.drain()
    bridge.on_openai_lost(1.5, "dropped")
    later = bytes([200]) * 160
    bridge.on_twilio(media(later, 1400), 1.5)  # while reconnecting
    reconnect_sent = reconnect_appends(bridge, 1.6)
    # The sentence from just before it began (the service's prefix padding), then what followed.
    assert reconnect_sent == [*before[-PREFIX_FRAMES:], *words, later]


def test_after_a_committed_turn_nothing_is_sent_twice():
    bridge = live(agent(transcription_model="gpt-realtime-whisper"))
    for n in range(10):
        bridge.on_twilio(media(bytes([n]) * 160, 20 * n), 0.0)
    caller_says(bridge, "item_q", "Hello?", 0.3)
    bridge.drain()
    bridge.on_openai_lost(1.5, "dropped")
    assert reconnect_appends(bridge, 1.6) == []


def reconnect_appends(bridge: DrivenBridge, now: float) -> list[bytes]:
    bridge.drain()
    bridge.on_openai_connected()
    bridge.on_openai(session_updated(), now)
    sent = openai_sent(bridge.drain())
    return [base64.b64decode(e["audio"]) for e in sent if e["type"] == "input_audio_buffer.append"]
