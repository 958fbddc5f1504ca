"""End to end: the recording is the call as the caller lived it, no more and no less."""

from __future__ import annotations

import time
import wave

import pytest
from django.core.management import call_command

from calls.fakes.openai_realtime import Reply, Script
from calls.models import Agent, Call
from tests.test_e2e_bridge import caller_for, dial
from tests.test_e2e_review import loud, read_recording
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

FRAME_MS = 20


def stream_ms(caller) -> int:
    """How long the media stream ran: a phone line sends a 20 ms frame every 20 ms."""
    return sum(1 for m in caller.sent_messages if m.get("event") == "media") * FRAME_MS


def finalised(call_sid: str) -> Call:
    return wait_until(
        lambda: (c := Call.objects.get(call_sid=call_sid)).ended_at is not None and c.recording and c,
        15,
        "the call finalised with its recording",
    )


def test_a_hang_up_with_agent_audio_still_queued_records_only_what_was_heard(live, loop, fake_openai):
    """The model streams faster than real time, so seconds of the answer wait in Twilio's
    buffer; the caller hangs up half a second into it. What never played is not recorded, and
    the recording ends where the stream ended."""
    Agent.objects.update(greeting="Let me read you our whole menu.", record_calls=True)
    menu = Reply(transcript="Let me read you our whole menu. " * 4)  # ~7.7 s, sent in ~0.1 s
    fake_openai.set_script(Script(replies=[menu]))

    async def scenario():
        caller = caller_for(live, continuous=True)
        await dial(caller)
        await caller.wait_heard(4000)  # half a second heard...
        queued = caller.buffered_bytes
        await caller.hang_up()  # ...and seconds still queued
        return caller, queued

    caller, queued = loop.run(scenario())
    assert queued > 8000 * 3
    call = finalised(caller.call_sid)
    _, right, seconds = read_recording(call)
    assert abs(seconds * 1000 - stream_ms(caller)) <= FRAME_MS, (seconds, stream_ms(caller))
    heard = len(caller.heard)
    assert abs(len(loud(right)) - heard) <= 8 * FRAME_MS * 2, (len(loud(right)), heard)


def test_kill_9_leaves_a_recording_of_all_but_the_last_seconds(live, loop, start_server, fake_openai):
    """The recording is written once a second: a process killed at any moment leaves all of
    the call before the last second or two."""
    server = start_server()
    Agent.objects.update(greeting="Hello, Luigi's here.", record_calls=True)
    fake_openai.set_script(Script(replies=[Reply(transcript="Hello, Luigi's here.")]))

    async def talk():
        caller = caller_for(server, continuous=True)
        await dial(caller)
        await caller.send_silence(6000)
        return caller

    caller = loop.run(talk())
    killed_at_ms = (time.monotonic() - caller.stream_started_at) * 1000
    server.process.kill()  # SIGKILL: no cleanup of any kind
    server.process.wait()
    loop.run(caller.aclose())
    call_command("close_stale_calls", "--all")  # what `make run` does at start
    call = Call.objects.get(call_sid=caller.call_sid)
    with call.recording.open("rb") as stored, wave.open(stored) as wav:
        recorded_ms = wav.getnframes() / 8
    assert killed_at_ms - 2000 <= recorded_ms <= killed_at_ms, (recorded_ms, killed_at_ms)
