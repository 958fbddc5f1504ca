"""End to end: thousands of hostile frames on media sockets while other calls go on.

Victim calls talk with their agent, round after round, while Hypothesis throws frames at
other sockets: some authenticated calls (a valid ``dial()`` first), some that never send a
valid ``start``. The victims must hear their agent byte for byte and have their transcripts
stored; the server must survive with no unhandled exception in its log; every socket the
fuzz closed must have been closed for a reason the protocol gives.

The first runs found frames that broke a call (infinite numbers, a ``mediaFormat`` that is not
an object, a ``sampleRate`` that is not a number, JSON nested thousands deep, absurd media
timestamps); each is a regression test in ``tests/test_twilio_media_hostile.py`` and
``tests/test_e2e_hostile_frames.py``, and the strategies below generate them too.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from calls.fakes.openai_realtime import Reply, Script
from calls.fakes.twilio_caller import SimulatedCaller, twilio_signature
from calls.models import Agent, Call, EndedReason, Role
from calls.processes import WS_MAX_MESSAGE_BYTES
from tests.conftest import AUTH_TOKEN
from tests.servers import application_error_in
from tests.test_e2e_bridge import caller_for, dial, hang_up_and_wait, speak
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

VICTIMS = 3
DIALED_TARGETS = 3
UNSTARTED_TARGETS = 2
EXAMPLES = 1200
ROUNDS = 12  # most rounds a victim can talk; the fuzz usually ends first

# Placeholders, replaced when a frame is sent by the target's own stream SID, call SID and
# <Stream> parameters (so "a second start" can be a faithful replay).
SELF_SID = "\x00self-sid"
SELF_CALL = "\x00self-call"
SELF_PARAMS = "\x00self-params"
OTHER_SID = "MZ" + "e" * 32
MAX_SERVER_MESSAGE = WS_MAX_MESSAGE_BYTES  # the server closes the socket (1009) on bigger messages


@dataclass
class Flood:
    frame: Any
    count: int


# --- strategies -------------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=24)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
sids = st.sampled_from([SELF_SID, SELF_SID, SELF_SID, "", OTHER_SID, "MZ123", "not a sid"]) | st.text(
    max_size=40
)


def _plausible_timestamp(text: str) -> bool:
    try:
        return 0 <= int(text) <= 600_000
    except ValueError:
        return True  # not a number: refused by the parser


timestamps = (
    st.integers(0, 600_000)
    | st.integers(0, 600_000).map(str)
    | st.integers(-(10**12), 10**21)
    | st.integers(-(10**12), 10**21).map(str)
    | st.text(max_size=12)
    | st.floats(0, 600_000)
    | st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e20, -5000, "1e999", "-Infinity"])
    | st.none()
    | st.lists(st.integers(), max_size=2)
    | st.dictionaries(st.text(max_size=4), st.integers(), max_size=2)
)
good_payloads = st.binary(min_size=1, max_size=480).map(lambda b: base64.b64encode(b).decode())
bad_payloads = st.one_of(
    st.text(max_size=80).filter(lambda s: s == "" or len(s) % 4 or not s.isascii()),
    good_payloads.map(lambda p: p[:-1]),
    good_payloads.map(lambda p: p + "==="),
    good_payloads.map(lambda p: "!" + p[1:]),
    st.sampled_from(["AA=A", "====", "A===", "AAA", "\u00e9\u00e9\u00e9\u00e9"]),
    json_values.filter(lambda v: not isinstance(v, str)),
)


def media(payload=good_payloads, sid=sids, timestamp=timestamps):
    return st.builds(
        lambda p, s, t: {
            "event": "media",
            "streamSid": s,
            "media": {"track": "inbound", "payload": p, "timestamp": t},
        },
        payload,
        sid,
        timestamp,
    )


valid_media = media(sid=st.just(SELF_SID), timestamp=st.integers(0, 600_000))
marks = st.builds(
    lambda n, s: {"event": "mark", "streamSid": s, "mark": {"name": n}}, st.text(max_size=70), sids
)
dtmf = st.builds(
    lambda d, s: {"event": "dtmf", "streamSid": s, "dtmf": {"track": "inbound_track", "digit": d}},
    st.sampled_from(list("0123456789*#ABCD")) | st.text(max_size=3),
    sids,
)
stops = st.builds(lambda s: {"event": "stop", "streamSid": s, "stop": {}}, sids)
connected = st.just({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def starts(victims: list[SimulatedCaller]):
    victim_calls = [v.call_sid for v in victims]
    victim_params = [dict(v.webhook.stream_parameters) for v in victims]
    return st.builds(
        lambda sid, call, params, fmt: {
            "event": "start",
            "streamSid": sid,
            "start": {"streamSid": sid, "callSid": call, "customParameters": params, **fmt},
        },
        st.sampled_from([SELF_SID, OTHER_SID, "MZ" + "1" * 32]),
        st.sampled_from([SELF_CALL, *victim_calls, "CA" + "2" * 32]) | st.text(max_size=36),
        st.sampled_from([SELF_PARAMS, *victim_params, {}])
        | st.dictionaries(st.sampled_from(["call_sid", "token", "x"]), st.text(max_size=40), max_size=3),
        st.sampled_from(
            [
                {},
                {"mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}},
                {"mediaFormat": {"encoding": "audio/x-l16", "sampleRate": 16000, "channels": 1}},
                {"tracks": ["inbound"], "accountSid": "AC" + "0" * 32},
                {"mediaFormat": "x"},
                {"mediaFormat": [1, 2]},
                {"mediaFormat": {"sampleRate": "fast"}},
                {"mediaFormat": {"sampleRate": [8000]}},
                {"mediaFormat": {"sampleRate": float("inf")}},
            ]
        ),
    )


malformed_json = st.one_of(
    st.text(max_size=300),
    st.sampled_from(
        ["", "{", "}", "null", "[]", '"media"', "{'event': 'media'}", '{"event":}', "NaN", "1e999"]
    ),
    st.sampled_from(["[" * 5000, '{"a":' * 5000]),
    valid_media.map(lambda f: json.dumps(f)[: len(json.dumps(f)) // 2]),
)
binary = st.binary(max_size=2048) | valid_media.map(lambda f: json.dumps(f).encode())
wrong_types = st.one_of(
    json_values,
    st.builds(lambda v: {"event": v}, json_values),
    st.builds(
        lambda e, v: {"event": e, e: v, "streamSid": SELF_SID},
        st.sampled_from(["media", "mark", "dtmf", "start", "stop"]),
        json_values,
    ),
    st.builds(lambda v: {"event": "mark", "streamSid": SELF_SID, "mark": {"name": v}}, json_values),
    st.builds(lambda v: {"event": "dtmf", "streamSid": SELF_SID, "dtmf": {"digit": v}}, json_values),
    st.builds(
        lambda a, b, c: {"event": "start", "start": {"streamSid": a, "callSid": b, "customParameters": c}},
        json_values,
        json_values,
        json_values,
    ),
    st.builds(lambda v: {"event": "media", "streamSid": v, "media": {"payload": "AAAA"}}, json_values),
)
missing_fields = st.sampled_from(
    [
        {},
        {"streamSid": SELF_SID},
        {"event": "media"},
        {"event": "media", "media": {}},
        {"event": "media", "media": {"timestamp": "20"}, "streamSid": SELF_SID},
        {"event": "mark", "mark": {}, "streamSid": SELF_SID},
        {"event": "dtmf", "streamSid": SELF_SID},
        {"event": "start"},
        {"event": "start", "start": {}},
        {"event": "start", "start": {"streamSid": SELF_SID}},
        {"event": "start", "start": {"callSid": SELF_CALL}},
    ]
)
unknown_events = st.builds(
    lambda e, extra: {"event": e, "streamSid": SELF_SID, **extra},
    st.text(max_size=40).filter(lambda e: e not in {"media", "mark", "start", "stop", "dtmf", "connected"})
    | st.sampled_from(["clear", "MEDIA", "Media", " media", "media\u0000"]),
    st.dictionaries(st.text(max_size=8), json_values, max_size=2),
)
oversized = st.builds(
    lambda size, kind: (
        "x" * size
        if kind == "text"
        else {"event": "media", "streamSid": SELF_SID, "media": {"payload": "A" * (size - (size % 4))}}
    ),
    st.sampled_from([64 * 1024 + 1, 100_000, 500_000, MAX_SERVER_MESSAGE + 1]),
    st.sampled_from(["text", "media"]),
)
invalid_base64 = media(payload=bad_payloads)


def hostile_frames(victims: list[SimulatedCaller]):
    single = st.one_of(
        malformed_json,
        binary,
        wrong_types,
        missing_fields,
        unknown_events,
        oversized,
        invalid_base64,
        media(),
        marks,
        dtmf,
        stops,
        connected,
        starts(victims),
    )
    flood = st.builds(Flood, valid_media | invalid_base64 | marks | malformed_json, st.integers(50, 400))
    return st.lists(single | flood, min_size=1, max_size=20)


# --- fuzz targets -------------------------------------------------------------------------


@dataclass
class Target:
    """A socket under fuzz: a dialed call, or a signed socket that never sends a valid start."""

    kind: str
    stream_sid: str
    call_sid: str
    params: dict[str, str]
    caller: SimulatedCaller | None = None
    ws: ClientConnection | None = None
    sent: collections.deque = field(default_factory=lambda: collections.deque(maxlen=60))
    too_big_sent: bool = False  # the server drops the connection on a message over its limit

    @property
    def closed(self) -> bool:
        if self.caller is not None:
            return self.caller.closed_by_server is not None
        assert self.ws is not None
        return self.ws.close_code is not None or self.ws.state.name == "CLOSED"

    @property
    def close_code(self) -> int | None:
        return self.caller.close_code if self.caller is not None else self.ws.close_code  # type: ignore[union-attr]

    def render(self, frame: Any) -> str | bytes:
        if isinstance(frame, str | bytes):
            return frame

        def resolve(value: Any) -> Any:
            if value == SELF_SID:
                return self.stream_sid
            if value == SELF_CALL:
                return self.call_sid
            if value == SELF_PARAMS:
                return dict(self.params)
            if isinstance(value, dict):
                return {k: resolve(v) for k, v in value.items()}
            if isinstance(value, list):
                return [resolve(v) for v in value]
            return value

        return json.dumps(resolve(frame))

    async def send(self, data: str | bytes) -> None:
        self.sent.append(data if len(data) <= 160 else f"{data[:120]!r}... ({len(data)} long)")
        self.too_big_sent |= len(data) > MAX_SERVER_MESSAGE
        try:
            if self.caller is not None:
                await self.caller.send_raw(data)
            else:
                assert self.ws is not None
                await self.ws.send(data)
        except (ConnectionClosed, ConnectionError):
            pass  # closed by the server: checked by the caller of send

    async def aclose(self) -> None:
        if self.caller is not None:
            if not self.closed:
                await hang_up_and_wait(self.caller)
            else:
                await self.caller.aclose()
        elif self.ws is not None:
            await self.ws.close()


async def open_dialed(live) -> Target:
    caller = caller_for(live)
    await dial(caller)
    target = Target(
        "dialed", caller.stream_sid, caller.call_sid, dict(caller.webhook.stream_parameters), caller
    )
    # A sane first media timestamp: test_negative_media_timestamp_keeps_the_transcript covers the rest.
    await caller.send_raw(
        json.dumps(
            {"event": "media", "streamSid": caller.stream_sid, "media": {"payload": "////", "timestamp": "0"}}
        )
    )
    return target


async def open_unstarted(stream_url: str) -> Target:
    ws = await connect(
        stream_url,
        additional_headers={"x-twilio-signature": twilio_signature(AUTH_TOKEN, stream_url, {})},
        compression=None,
        proxy=None,
        ping_interval=None,
        max_size=None,
    )
    return Target("unstarted", "MZ" + secrets.token_hex(16), "CA" + secrets.token_hex(16), {}, ws=ws)


# Why the server may close a fuzzed socket: a valid stop (1000); before a valid start also a
# refused start (4403, 4400) or no start in time (4408). A message over the server's limit makes
# it drop the connection (1009, or no close frame at all when the drop beats it).
ALLOWED_CLOSES = {"dialed": {1000}, "unstarted": {1000, 4400, 4403, 4408}}
TOO_BIG_CLOSES = {1006, 1009, None}


# --- victims -----------------------------------------------------------------------------------


def victim_script(n: int) -> Script:
    return Script(
        replies=[Reply(transcript=f"Hello, caller {n}.")]
        + [Reply(transcript=f"Caller {n}, answer {k} for you.") for k in range(ROUNDS)],
        caller_transcripts=[f"Caller {n} asks question {k}." for k in range(ROUNDS)],
    )


async def talk(caller: SimulatedCaller, session, script: Script, stop: asyncio.Event) -> int:
    """Round after round until ``stop``: speak, hear the whole answer, see it transcribed."""
    expected = script.replies[0].render_audio()
    await caller.wait_heard(len(expected))
    rounds = 0
    while not stop.is_set() and rounds < ROUNDS:
        await caller.send_audio(speak())
        expected += script.replies[rounds + 1].render_audio()
        await caller.wait_heard(len(expected), timeout=20)
        question = script.caller_transcripts[rounds]
        await session.wait_for_sent(lambda ev, q=question: ev.get("transcript") == q, timeout=10)
        rounds += 1
    return rounds


def expected_turns(script: Script, rounds: int) -> list[tuple[str, str]]:
    turns = [(Role.AGENT.value, script.replies[0].transcript)]
    for k in range(rounds):
        turns += [
            (Role.CALLER.value, script.caller_transcripts[k]),
            (Role.AGENT.value, script.replies[k + 1].transcript),
        ]
    return turns


def stored_turns(call_sid: str) -> list[tuple[str, str]]:
    return list(Call.objects.get(call_sid=call_sid).turns.order_by("position").values_list("role", "text"))


def wait_stored(call_sid: str, expected: list[tuple[str, str]], timeout: float = 10) -> list[tuple[str, str]]:
    """Turns are written by the server as they complete: give the last one a moment. The
    caller's transcript may land after the fake sent it and before the server read it.
    What is stored by then is returned either way: the test compares it once every call
    has hung up."""
    with contextlib.suppress(AssertionError):
        wait_until(lambda: stored_turns(call_sid) == expected, timeout, f"{call_sid}'s turns stored")
    return stored_turns(call_sid)


class LogTail:
    def __init__(self, live) -> None:
        self.live = live
        self.start = len(live.log())

    def text(self) -> str:
        return self.live.log()[self.start :]


@pytest.mark.filterwarnings("ignore:Generating overly large repr")
def test_hostile_frames_never_disturb_other_calls(live, loop, fake_openai, monkeypatch):
    Agent.objects.update(greeting="Hello!")
    scripts: list[Script] = []

    def next_script() -> Script:
        script = victim_script(len(scripts)) if len(scripts) < VICTIMS else Script()
        scripts.append(script)
        return script

    fake_openai.set_script(next_script)
    sessions_before = len(fake_openai.sessions)
    log = LogTail(live)
    stop = asyncio.Event()

    async def open_victims():
        victims = []
        for n in range(VICTIMS):  # one by one, so victim n gets script n
            caller = caller_for(live)
            await dial(caller)
            await fake_openai.wait_for_session(sessions_before + n)
            victims.append(caller)
        return victims

    victims = loop.run(open_victims())
    sessions = fake_openai.sessions[sessions_before : sessions_before + VICTIMS]
    talking = [
        asyncio.run_coroutine_threadsafe(talk(v, s, scripts[n], stop), loop.loop)
        for n, (v, s) in enumerate(zip(victims, sessions, strict=True))
    ]
    stream_url = victims[0].webhook.stream_url

    async def open_targets():
        dialed = [await open_dialed(live) for _ in range(DIALED_TARGETS)]
        return dialed + [await open_unstarted(stream_url) for _ in range(UNSTARTED_TARGETS)]

    targets = loop.run(open_targets())
    retired: list[Target] = []
    frames_sent = 0

    def assert_closed_as_allowed(target: Target) -> None:
        code = target.close_code
        allowed = ALLOWED_CLOSES[target.kind] | (TOO_BIG_CLOSES if target.too_big_sent else set())
        assert code in allowed, f"{target.kind} socket closed with {code}; last frames: {list(target.sent)}"

    async def attack(index: int, frames: list[Any]) -> None:
        nonlocal frames_sent
        target = targets[index]
        for frame in frames:
            repeat, frame = (frame.count, frame.frame) if isinstance(frame, Flood) else (1, frame)
            data = target.render(frame)
            for _ in range(repeat):
                if target.closed:
                    break
                await target.send(data)
                frames_sent += 1
        # Nothing says that no refusal is coming, so none is waited for: one that arrives
        # later is judged here at the target's next attack (which sends nothing more to it),
        # or, after the last one, before everyone hangs up.
        if target.closed:
            assert_closed_as_allowed(target)
            await target.aclose()
            retired.append(target)
            targets[index] = await (
                open_dialed(live) if target.kind == "dialed" else open_unstarted(stream_url)
            )

    started = time.monotonic()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # the server keeps state between examples: no shrinking
        suppress_health_check=list(HealthCheck),
    )
    @given(index=st.integers(0, len(targets) - 1), frames=hostile_frames(victims))
    def fuzz(index, frames):
        loop.run(attack(index, frames))
        assert live.process.poll() is None, "the server died"
        text = log.text()
        assert "Traceback" not in text, text[text.find("Traceback") - 400 :][:4000]

    try:
        fuzz()
    finally:
        fuzz_seconds = time.monotonic() - started
        loop.loop.call_soon_threadsafe(stop.set)
        rounds = [future.result(timeout=60) for future in talking]

        stored = [
            wait_stored(v.call_sid, expected_turns(scripts[n], rounds[n])) for n, v in enumerate(victims)
        ]
        closed_since_last_attack = [target for target in targets if target.closed]

        async def hang_up_everyone():
            for caller in victims:
                await hang_up_and_wait(caller)
            for target in targets:
                await target.aclose()

        loop.run(hang_up_everyone())

    for target in closed_since_last_attack:
        assert_closed_as_allowed(target)
    # The fuzz really was heavy, and really ran while the victims talked.
    assert frames_sent > 10_000, frames_sent
    assert all(r >= 3 for r in rounds), (rounds, fuzz_seconds)

    for n, (victim, session) in enumerate(zip(victims, sessions, strict=True)):
        script = scripts[n]
        spoken = script.replies[: rounds[n] + 1]
        assert bytes(victim.heard) == b"".join(r.render_audio() for r in spoken), (
            f"victim {n} heard other audio"
        )
        assert bytes(victim.heard) == b"".join(bytes(a) for a in session.output_audio.values())
        assert victim.protocol_errors == []
        assert stored[n] == expected_turns(script, rounds[n]), f"victim {n}'s transcript"
        assert stored_turns(victim.call_sid) == stored[n]
        call = Call.objects.get(call_sid=victim.call_sid)
        assert call.ended_reason == EndedReason.CALLER_HUNG_UP and call.error == ""

    # Every fuzzed call was finalised, however it ended.
    fuzzed = [t.call_sid for t in [*retired, *targets] if t.kind == "dialed"]
    assert not Call.objects.filter(call_sid__in=fuzzed, ended_at__isnull=True).exists()
    assert live.process.poll() is None
    text = log.text()
    assert "Traceback" not in text and not application_error_in(text)
    assert [line for line in text.splitlines() if " ERROR " in line] == []
