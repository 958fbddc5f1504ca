"""End to end: what a call leaves behind for review — recording, latency, interruptions, cost."""

from __future__ import annotations

import struct
import warnings
import wave

import pytest

from calls.fakes.openai_realtime import Reply, Script
from calls.models import Agent, Call, Role
from tests.test_e2e_bridge import caller_for, dial, hang_up_and_wait, sent_audio, speak
from tests.waiting import wait_until

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

pytestmark = pytest.mark.e2e


def read_recording(call: Call) -> tuple[list[int], list[int], float]:
    with call.recording.open("rb") as handle, wave.open(handle) as reader:
        assert (reader.getnchannels(), reader.getframerate(), reader.getsampwidth()) == (2, 8000, 2)
        frames = reader.readframes(reader.getnframes())
        seconds = reader.getnframes() / 8000
    samples = struct.unpack(f"<{len(frames) // 2}h", frames)
    return list(samples[0::2]), list(samples[1::2]), seconds


def pcm(mulaw: bytes) -> list[int]:
    data = audioop.ulaw2lin(mulaw, 2)
    return list(struct.unpack(f"<{len(data) // 2}h", data))


def loud(samples: list[int]) -> list[int]:
    return [i for i, value in enumerate(samples) if abs(value) > 200]


def test_recording_is_aligned_to_what_the_caller_heard_through_a_barge_in(live, loop, fake_openai):
    Agent.objects.update(greeting="Let me tell you about our specials.")
    long_answer = Reply(transcript="Let me tell you about our specials. " * 3)
    fake_openai.set_script(Script(replies=[long_answer, Reply(transcript="Sure.")]))

    async def scenario():
        caller = caller_for(live)
        await dial(caller)
        await caller.wait_heard(8000)
        spoke_at = caller.stream_started_at
        await caller.send_audio(speak(400, 200))
        await caller.wait_for(lambda: caller.clears, timeout=10)
        await hang_up_and_wait(caller)
        return caller, spoke_at

    caller, _ = loop.run(scenario())
    call = Call.objects.get()
    assert call.recording.name.endswith(".wav")
    left, right, seconds = read_recording(call)
    # The agent channel holds what the caller heard of the greeting (cut where the caller
    # barged in, within one 20 ms frame), starting when the caller started hearing it.
    heard = pcm(bytes(caller.heard_segments[0].audio))
    agent_samples = loud(right)
    first = agent_samples[0] - loud(heard)[0]  # the tone starts at a zero crossing
    greeting_end = max(i for i in agent_samples if i < first + len(heard) + 800)
    assert abs((greeting_end - first + 1) - len(heard)) <= 160
    assert right[first : first + 4000] == heard[:4000]
    started_hearing = caller.heard_segments[0].start - caller.stream_started_at
    assert abs(first / 8000 - started_hearing) < 0.1
    # The caller channel holds what the caller said, where they said it.
    said = pcm(sent_audio(caller))
    caller_loud = loud(left)
    assert len(caller_loud) >= len(loud(said)) - 160
    assert abs(seconds - (call.ended_at - call.started_at).total_seconds()) < 1.0
    assert call.interruptions == 1


def test_recording_survives_an_abrupt_disconnect(live, loop, fake_openai):
    Agent.objects.update(greeting="Hello!")
    fake_openai.set_script(Script(replies=[Reply(transcript="Hello!")]))

    async def scenario():
        caller = caller_for(live)
        await dial(caller)
        await caller.wait_heard(800)
        await caller.aclose()  # the line drops: no stop message

    loop.run(scenario())
    # The server finalises on its own; wait for it through the database's eyes.
    call = _wait_for_end()
    _, right, seconds = read_recording(call)
    assert seconds > 0 and loud(right)


def _wait_for_end() -> Call:
    """The disconnect gives the test nothing to wait on but the call record itself."""
    return wait_until(
        lambda: (call := Call.objects.get()).ended_at is not None and call.recording and call,
        10,
        "the call finalised with its recording after the disconnect",
    )


def test_latency_and_cost_are_recorded(live, loop, fake_openai):
    Agent.objects.update(greeting="Hi, Luigi's.")
    greeting, answer = Reply(transcript="Hi, Luigi's."), Reply(transcript="We open at noon.")
    fake_openai.set_script(Script(replies=[greeting, answer], caller_transcripts=["When do you open?"]))

    async def scenario():
        caller = caller_for(live)
        await dial(caller)
        await caller.wait_heard(len(greeting.render_audio()))
        await caller.send_audio(speak())
        await caller.wait_heard(len(greeting.render_audio()) + len(answer.render_audio()))
        await hang_up_and_wait(caller)

    loop.run(scenario())
    call = Call.objects.get()
    greeting_turn, caller_turn, answer_turn = call.turns.order_by("position")
    assert (greeting_turn.role, caller_turn.role, answer_turn.role) == (Role.AGENT, Role.CALLER, Role.AGENT)
    assert greeting_turn.latency_ms is None  # nobody spoke before the greeting
    assert answer_turn.latency_ms is not None and 0 <= answer_turn.latency_ms < 2000
    assert call.latency_p50_ms == call.latency_p95_ms == answer_turn.latency_ms
    assert call.first_audio_ms is not None and call.first_audio_ms < 2000
    assert call.interruptions == 0
    assert call.cost_usd is not None and call.cost_usd > 0
    assert call.usage["output_token_details"]["audio_tokens"] > 0


def test_recording_can_be_switched_off(live, loop, fake_openai):
    Agent.objects.update(record_calls=False, greeting="Hello!")
    fake_openai.set_script(Script(replies=[Reply(transcript="Hello!")]))

    async def scenario():
        caller = caller_for(live)
        await dial(caller)
        await caller.wait_heard(800)
        await hang_up_and_wait(caller)

    loop.run(scenario())
    assert not Call.objects.get().recording
