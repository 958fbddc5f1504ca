"""End to end: single hostile frames found by tests/test_e2e_fuzz.py that used to break a call
(an uncaught parser error, a timestamp that made the recorder allocate gigabytes, a negative
time base) and the caller's last words lost on a quick hang-up. Each is now a regression test."""

from __future__ import annotations

import json
import time

import pytest

from calls.fakes.openai_realtime import Reply, Script
from calls.models import Call, EndedReason, Role
from tests.test_e2e_bridge import caller_for, dial, hang_up_and_wait, speak
from tests.test_twilio_media_hostile import CRASHING_FRAMES
from tests.waiting import wait_until, wait_until_async

pytestmark = pytest.mark.e2e

ANSWER = Reply(transcript="Still here.")
QUESTION = "Are you still there?"


def turns(call_sid: str) -> list[tuple[str, str]]:
    return list(Call.objects.get(call_sid=call_sid).turns.order_by("position").values_list("role", "text"))


def wait_for_turns(call_sid: str, count: int, timeout: float = 5) -> list[tuple[str, str]]:
    return wait_until(
        lambda: len(found := turns(call_sid)) >= count and found, timeout, f"{count} turns stored"
    )


def call_goes_on_after(live, loop, fake_openai, frame: str, *, first: bool = False):
    """Send ``frame`` (before any other media if ``first``), then talk: the caller must hear
    the answer, the conversation be stored, and the call end normally. Frames that crash the
    consumer get a server of their own (``start_server``): the tasks they orphan stay there."""
    fake_openai.set_script(Script(replies=[ANSWER], caller_transcripts=[QUESTION]))
    sessions_before = len(fake_openai.sessions)
    start = len(live.log())

    async def scenario():
        caller = caller_for(live)
        try:
            await dial(caller)
            session = await fake_openai.wait_for_session(sessions_before)
            await caller.send_raw(frame.replace("<sid>", caller.stream_sid))
            if not first:
                # Every frame here is one the server drops, and says so: then it has been read.
                dropped = f"call {caller.call_sid}: dropped a Twilio frame"
                await wait_until_async(
                    lambda: dropped in live.log()[start:], 5, "the server dropping the frame"
                )
            assert caller.closed_by_server is None, f"the server closed the socket ({caller.close_code})"
            await caller.send_audio(speak())
            await caller.wait_heard(len(ANSWER.render_audio()))
            await session.wait_for_sent("conversation.item.input_audio_transcription.completed")
        except BaseException:
            await caller.aclose()
            raise
        return caller

    caller = loop.run(scenario())
    try:
        assert wait_for_turns(caller.call_sid, 2) == [
            (Role.CALLER, QUESTION),
            (Role.AGENT, ANSWER.transcript),
        ]
        started = time.monotonic()
        assert loop.run(hang_up_and_wait(caller)) == 1000
        assert time.monotonic() - started < 3, "finalising the call stalled"
    finally:
        loop.run(caller.aclose())
    assert Call.objects.get(call_sid=caller.call_sid).ended_reason == EndedReason.CALLER_HUNG_UP
    assert "Traceback" not in live.log()[start:]


@pytest.mark.parametrize("name", ["mediaFormat is a string", "deeply nested JSON"])
def test_a_frame_the_parser_chokes_on_is_dropped_and_the_call_goes_on(
    live, loop, start_server, fake_openai, name
):
    frame = CRASHING_FRAMES[name].replace("MZ" + "0" * 32, "<sid>")
    call_goes_on_after(start_server(), loop, fake_openai, frame)


def test_far_future_media_timestamp_does_not_break_the_call(live, loop, start_server, fake_openai):
    frame = {
        "event": "media",
        "streamSid": "<sid>",
        "media": {"payload": "//////////8=", "timestamp": 10**20},
    }
    call_goes_on_after(start_server(), loop, fake_openai, json.dumps(frame))


def test_negative_media_timestamp_keeps_the_transcript(live, loop, fake_openai):
    frame = {"event": "media", "streamSid": "<sid>", "media": {"payload": "//////////8=", "timestamp": -5000}}
    call_goes_on_after(live, loop, fake_openai, json.dumps(frame), first=True)


def test_the_callers_last_words_are_kept_when_they_hang_up_right_away(live, loop, fake_openai):
    fake_openai.set_script(
        Script(
            replies=[Reply(transcript="Goodbye!")],
            caller_transcripts=["Thanks, bye."],
            transcription_delay=0.5,
        )
    )
    sessions_before = len(fake_openai.sessions)

    async def scenario():
        caller = caller_for(live)
        await dial(caller)
        session = await fake_openai.wait_for_session(sessions_before)
        await caller.send_audio(speak(600, 500))
        await session.wait_for_sent("input_audio_buffer.committed")
        await hang_up_and_wait(caller)  # the caller is gone before the transcript is
        return caller

    caller = loop.run(scenario())
    assert (Role.CALLER, "Thanks, bye.") in turns(caller.call_sid)
