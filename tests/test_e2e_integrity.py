"""End to end: conversation integrity through dropped OpenAI sessions.

A call of several turns, with a tool call and a barge-in, loses its OpenAI session at points
chosen by a seed, in each of the ways the service loses one (close 1011, a TCP reset with no
close frame, ``session_expired`` then 1001). After every reconnect the new session must have
been told exactly the conversation so far, turn by turn; and at the end the stored transcript,
the heard milliseconds and the recording must agree with what the simulated caller heard."""

from __future__ import annotations

import asyncio
import random
import wave

import pytest

from calls.bridge import replay
from calls.fakes.openai_realtime import FakeRealtimeServer, FakeSession, Reply, Script
from calls.models import Agent, Call, EndedReason, Role
from tests.test_e2e_bridge import caller_for, dial, speak
from tests.waiting import wait_until, wait_until_async

pytestmark = pytest.mark.e2e

BYTES_PER_MS = 8
GREETING = Reply(transcript="Hello, this is Luigi's, how can I help?")
LOOKUP = Reply(function_call=("lookup_order", {"order_id": "A17"}))
# Long answers streamed at real-time pace, so there is time to interrupt them and to drop
# the session in the middle of one.
SHIPPED = Reply(
    transcript="Your order A17 shipped yesterday and it should arrive tomorrow before noon, "
    "with a text message from the courier in the morning.",
    delta_ms=100,
    pace=0.1,
)
NOTE = Reply(
    transcript="Of course, I have added a note asking the courier to ring twice and to leave "
    "the parcel with your neighbour if nobody answers the door.",
    delta_ms=100,
    pace=0.1,
)
BYE = Reply(transcript="You are welcome, goodbye!")
SAID = ["Where is my order A17?", "Can you ask them to ring twice?", "That is all, thank you."]
REPLIES = [GREETING, LOOKUP, SHIPPED, NOTE, BYE]

# Where a drop may happen; a seed picks two, each with a way of dropping.
POINTS = ("after_greeting", "mid_answer", "before_transcript", "after_answer")
HOW = ("1011", "reset", "session_expired")


def plan(seed: int) -> dict[str, str]:
    rng = random.Random(seed)
    points = sorted(rng.sample(POINTS, 2), key=POINTS.index)
    # Every way of dropping is exercised across the first seeds, whatever the points drawn.
    return {point: HOW[(seed + i) % len(HOW)] for i, point in enumerate(points)}


class Conversation:
    """Drives one call and drops the live OpenAI session where the plan says."""

    def __init__(self, fake: FakeRealtimeServer, caller, drops: dict[str, str], first_session: int) -> None:
        self.fake = fake
        self.caller = caller
        self.drops = drops
        self.index = first_session  # the live session's index in fake.sessions
        self.dropped: list[int] = []

    @property
    def session(self) -> FakeSession:
        return self.fake.sessions[self.index]

    async def maybe_drop(self, point: str) -> None:
        how = self.drops.get(point)
        if how is None:
            return
        await self.session.drop(how)
        self.dropped.append(self.index)
        self.index += 1
        session = await self.fake.wait_for_session(self.index, timeout=10)
        await session.wait_for_sent("session.updated", timeout=10)

    async def quiet(self, timeout: float = 20) -> None:
        """Until the agent has stopped talking: no response in progress, nothing left to play.
        (Two parties' state, so polled, with a deadline.)"""
        await wait_until_async(
            lambda: self.session.active is None and not self.caller.buffered_bytes,
            timeout,
            "the agent quiet: no response in progress, nothing left to play",
        )

    async def run(self) -> None:
        caller = self.caller
        await dial(caller)
        await self.fake.wait_for_session(self.index, timeout=10)
        await caller.wait_heard(len(GREETING.render_audio()), timeout=15)
        await self.maybe_drop("after_greeting")
        # Question 1: a tool call, then a long answer.
        await caller.send_audio(speak())
        heard = len(caller.heard)
        await caller.wait_for(lambda: len(caller.heard) >= heard + 400 * BYTES_PER_MS, timeout=20)
        if "mid_answer" in self.drops:
            await self.maybe_drop("mid_answer")
            await self.quiet()  # the answer's audio already sent plays out; then ask again
        # else: question 2 is a barge-in while the answer plays.
        sent_before = len(self.session.sent)
        speaking = asyncio.create_task(caller.send_audio(speak()))
        if "before_transcript" in self.drops:
            # The caller's words are committed; their transcript is ~50 ms behind.
            await self.session.wait_for_sent("input_audio_buffer.committed", timeout=10, start=sent_before)
            await self.maybe_drop("before_transcript")
        await speaking
        # The answer to question 2 is long too: cut it off with question 3.
        heard = len(caller.heard)
        await caller.wait_for(lambda: len(caller.heard) >= heard + 400 * BYTES_PER_MS, timeout=20)
        await caller.send_audio(speak())
        await self.quiet()
        await self.maybe_drop("after_answer")
        await caller.send_silence(200)
        await caller.hang_up()


def shape(item: dict) -> tuple:
    if item["type"] == "message":
        return (item["role"], item["content"][0]["text"])
    if item["type"] == "function_call":
        return ("function_call", item["name"], item["call_id"])
    return ("function_call_output", item["call_id"])


def replayed(session: FakeSession) -> list[tuple]:
    return [
        shape(e["item"])
        for e in session.events_of("conversation.item.create")
        if str(e["item"].get("id", "")).startswith(replay.REPLAY_PREFIX)
    ]


def check_replay(call: Call, before: list[FakeSession], after: FakeSession) -> None:
    """``after`` was told every stored turn and tool call of the sessions ``before`` it."""
    items = {item["id"]: item for session in before for item in session.items}
    calls = {item.get("call_id") for item in items.values() if item["type"] == "function_call"}
    rows = [(t.position, t) for t in call.turns.all() if t.item_id in items]
    rows += [(c.position, c) for c in call.tool_calls.all() if c.openai_call_id in calls]
    told = replayed(after)
    expected_count = cursor = 0
    for _, row in sorted(rows, key=lambda r: r[0]):
        if hasattr(row, "openai_call_id"):
            assert told[cursor] == ("function_call", row.name, row.openai_call_id)
            assert told[cursor + 1] == ("function_call_output", row.openai_call_id)
            cursor += 2
            expected_count += 2
            continue
        role, text = told[cursor]
        if row.role == Role.CALLER:
            assert (role, text) == ("user", row.text or replay.UNKNOWN_WORDS), row
        else:
            assert role == "assistant"
            status = items[row.item_id]["status"]
            if row.interrupted:
                heard = text.removesuffix(" " + replay.INTERRUPTED).removesuffix(replay.INTERRUPTED)
                assert text.endswith(replay.INTERRUPTED) and row.text.startswith(heard), (text, row.text)
            elif status == "in_progress":  # the session dropped while it was being said
                assert text == f"{row.text} {replay.CUT_OFF}".strip(), (text, row.text)
            else:
                assert text == row.text
        cursor += 1
        expected_count += 1
    assert len(told) == expected_count, told


def heard_per_turn(heard: bytes, turns: list, replies: list[Reply]) -> dict[int, int]:
    """Bytes of each agent turn the caller heard, found in the caller's audio: each reply's
    audio is a distinct tone, heard from its start up to where the next turn's begins."""
    # "OK." is what the fake says when its script has run out (an extra response).
    everything = [*replies, Reply(transcript="OK.")]
    audio_of = {reply.transcript: reply.render_audio() for reply in everything if reply.transcript}
    spoken = []
    for turn in turns:
        audio = next((a for text, a in audio_of.items() if turn.text and text.startswith(turn.text)), None)
        if audio is not None:
            spoken.append((turn, audio))
    result: dict[int, int] = {}
    cursor = 0
    for i, (turn, audio) in enumerate(spoken):
        following = spoken[i + 1][1] if i + 1 < len(spoken) else None
        end = len(heard) if following is None else heard.find(following[:400], cursor)
        assert end >= cursor, f"the audio of the turn after {turn.text!r} was never heard"
        assert heard[cursor:end] == audio[: end - cursor], f"{turn.text!r}: heard audio not its own"
        result[turn.position] = end - cursor
        cursor = end
    return result


# Three seeds: between them, all four drop points and all three ways of dropping (``plan``).
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_conversation_survives_drops_at_random_points(live, loop, fake_openai, seed):
    drops = plan(seed)
    Agent.objects.update(
        greeting=GREETING.transcript, tools=["lookup_order"], record_calls=True, vad_silence_ms=400
    )
    script = Script(replies=list(REPLIES), caller_transcripts=list(SAID), carry_over=True)
    fake_openai.set_script(script)
    first = len(fake_openai.sessions)

    async def scenario():
        caller = caller_for(live, continuous=True)
        conversation = Conversation(fake_openai, caller, drops, first)
        try:
            await conversation.run()
            await caller.wait_closed_by_server(timeout=15)
        finally:
            await caller.aclose()
        return caller, conversation

    caller, conversation = loop.run(scenario())
    call = Call.objects.get(call_sid=caller.call_sid)
    wait_finalised(call.call_sid)
    call.refresh_from_db()
    assert call.ended_reason == EndedReason.CALLER_HUNG_UP, (drops, call.error)
    assert call.openai_reconnects == len(drops)

    sessions = fake_openai.sessions[first : conversation.index + 1]
    for k in range(1, len(sessions)):
        check_replay(call, sessions[:k], sessions[k])

    # Every caller turn is stored, with its words or as unknown; none is skipped.
    caller_turns = list(call.turns.filter(role=Role.CALLER).order_by("position"))
    assert len(caller_turns) == 3, [(t.text, t.item_id) for t in caller_turns]
    for turn in caller_turns:
        assert turn.text in SAID or turn.text == ""
    # What the caller heard agrees with what is stored.
    agent_turns = list(call.turns.filter(role=Role.AGENT).order_by("position"))
    heard = heard_per_turn(bytes(caller.heard), agent_turns, REPLIES)
    for turn in agent_turns:
        if turn.interrupted:
            assert abs(heard[turn.position] / BYTES_PER_MS - turn.heard_ms) <= 60, (turn.text, heard)
    assert any(t.interrupted for t in agent_turns)
    assert call.tool_calls.filter(name="lookup_order").exists()
    # The recording is as long as the media stream, not longer.
    with call.recording.open("rb") as handle, wave.open(handle) as reader:
        recorded_ms = reader.getnframes() / 8
    stream_ms = sum(1 for m in caller.sent_messages if m.get("event") == "media") * 20
    assert abs(recorded_ms - stream_ms) <= 20, (recorded_ms, stream_ms)


def wait_finalised(call_sid: str, timeout: float = 15) -> None:
    """The call record is all there is to wait on once the caller has gone."""
    wait_until(
        lambda: (call := Call.objects.get(call_sid=call_sid)).ended_at is not None and call.recording,
        timeout,
        "the call finalised with its recording",
    )
