"""Tests for the fake OpenAI Realtime GA server, driven over real sockets.

Why: end-to-end tests of the bridge trust this fake to behave like the service; these tests pin the
protocol details it promises (event order, error codes, VAD arithmetic, barge-in, truncation).
No sleeps are used for synchronisation: every wait is on an event, bounded by a timeout.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from calls.fakes import mulaw
from calls.fakes.openai_realtime import FakeProtocolError, FakeRealtimeServer, Reply, Script

KEY = "sk-test-fake"
MODEL = "gpt-realtime"
Event = dict[str, Any]


@pytest.fixture
def settings() -> SimpleNamespace:
    """Shadow pytest-django's ``settings`` (used by an autouse fixture in conftest.py).

    Why: these tests never touch Django and must also run with ``-p no:django``.
    """
    return SimpleNamespace()


def run(test: Callable[[], Awaitable[Any]]) -> Any:
    """Run one async scenario and fail if it leaves any task behind."""

    async def main() -> Any:
        result = await test()
        me = asyncio.current_task()
        leftover = [t for t in asyncio.all_tasks() if t is not me]
        if leftover:  # give already-cancelled library tasks their last step, never a real leak
            await asyncio.wait(leftover, timeout=2)
        still = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
        assert not still, f"leaked tasks: {still}"
        return result

    return asyncio.run(main())


class Client:
    """A minimal Realtime client that keeps every received event."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.log: list[Event] = []

    async def send(self, type_: str, **fields: Any) -> None:
        await self.ws.send(json.dumps({"type": type_, **fields}))

    async def recv(self, timeout: float = 5) -> Event:
        async with asyncio.timeout(timeout):
            event = json.loads(await self.ws.recv())
        self.log.append(event)
        return event

    async def until(self, match: str | Callable[[Event], bool], timeout: float = 5) -> Event:
        """Read events until one matches (by type or predicate); return it."""
        pred = (lambda ev: ev["type"] == match) if isinstance(match, str) else match
        async with asyncio.timeout(timeout):
            while True:
                event = await self.recv()
                if pred(event):
                    return event

    async def append(self, audio: bytes, frame: int = 160) -> None:
        """Send audio as Twilio does: one 20 ms mu-law frame per append."""
        for i in range(0, len(audio), frame):
            chunk = base64.b64encode(audio[i : i + frame]).decode()
            await self.send("input_audio_buffer.append", audio=chunk)

    async def update(self, **session: Any) -> Event:
        await self.send("session.update", session={"type": "realtime", **session})
        return await self.until(lambda ev: ev["type"] in ("session.updated", "error"))

    def types(self, start: int = 0) -> list[str]:
        return [ev["type"] for ev in self.log[start:]]

    async def close_code(self) -> int | None:
        """Drain until the server closes; return the close code it sent."""
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await self.recv()
        return info.value.rcvd.code if info.value.rcvd else None


@asynccontextmanager
async def client(
    srv: FakeRealtimeServer, *, key: str | None = KEY, headers: dict[str, str] | None = None
) -> AsyncIterator[Client]:
    extra = dict(headers or {})
    if key is not None:
        extra["Authorization"] = f"Bearer {key}"
    # max_queue=None: scenarios often stop reading mid-stream; with the default (16) the client would
    # stop reading the socket, miss the closing handshake and wait out close_timeout.
    url = f"{srv.url}?model={MODEL}"
    async with connect(url, additional_headers=extra, proxy=None, max_queue=None) as ws:
        yield Client(ws)


def pcmu(turn_detection: Any = None, **input_extra: Any) -> dict[str, Any]:
    """Audio config for Twilio-style mu-law both ways."""
    return {
        "input": {"format": {"type": "audio/pcmu"}, "turn_detection": turn_detection, **input_extra},
        "output": {"format": {"type": "audio/pcmu"}, "voice": "marin"},
    }


def vad(**overrides: Any) -> dict[str, Any]:
    return {
        "type": "server_vad",
        "threshold": 0.5,
        "prefix_padding_ms": 300,
        "silence_duration_ms": 500,
        "create_response": False,
        "interrupt_response": True,
        **overrides,
    }


def speech(ms: int, seed: int = 7) -> bytes:
    return mulaw.tone(ms, seed)


def audio_of(events: list[Event], item_id: str | None = None) -> bytes:
    return b"".join(
        base64.b64decode(ev["delta"])
        for ev in events
        if ev["type"] == "response.output_audio.delta" and (item_id is None or ev["item_id"] == item_id)
    )


# --------------------------------------------------------------------------------------------
# Handshake and session configuration


def test_session_created_first_with_ga_defaults() -> None:
    async def scenario() -> None:
        async with FakeRealtimeServer() as srv, client(srv) as c:
            first = await c.recv()
            assert first["type"] == "session.created"
            assert first["event_id"].startswith("event_")
            s = first["session"]
            assert (s["type"], s["object"], s["model"]) == ("realtime", "realtime.session", MODEL)
            assert s["id"].startswith("sess_") and s["expires_at"] > time.time()
            assert s["audio"]["input"]["format"] == {"type": "audio/pcm", "rate": 24000}
            assert s["audio"]["output"]["voice"] == "marin"
            td = s["audio"]["input"]["turn_detection"]
            assert td["type"] == "server_vad" and td["silence_duration_ms"] == 200
            assert td["create_response"] and td["interrupt_response"]
            session = await srv.wait_for_session(0)
            assert session.model == MODEL
            assert session.headers["authorization"] == f"Bearer {KEY}"
            assert srv.connection_attempts == 1 and srv.url.endswith("/v1/realtime")

    run(scenario)


def test_session_update_is_merged_and_echoed_in_full() -> None:
    async def scenario() -> None:
        async with FakeRealtimeServer() as srv, client(srv) as c:
            await c.recv()
            reply = await c.update(
                instructions="You are a phone agent.",
                audio=pcmu(
                    vad(idle_timeout_ms=8000), transcription={"model": "gpt-4o-transcribe", "language": "en"}
                ),
                tools=[{"type": "function", "name": "end_call", "parameters": {}}],
            )
            assert reply["type"] == "session.updated"
            s = reply["session"]
            assert s["instructions"] == "You are a phone agent."
            assert s["audio"]["input"]["format"] == {"type": "audio/pcmu"}
            assert s["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500
            assert s["audio"]["input"]["transcription"]["model"] == "gpt-4o-transcribe"
            assert s["audio"]["output"]["speed"] == 1.0  # untouched field kept
            assert s["tool_choice"] == "auto" and s["tools"][0]["name"] == "end_call"
            # A partial update changes only what it names. The SDK requires turn_detection.type.
            again = await c.update(
                audio={"input": {"turn_detection": {"type": "server_vad", "silence_duration_ms": 700}}}
            )
            td = again["session"]["audio"]["input"]["turn_detection"]
            assert td["silence_duration_ms"] == 700 and td["idle_timeout_ms"] == 8000
            assert again["session"]["instructions"] == "You are a phone agent."
            session = srv.sessions[0]
            assert session.config == again["session"]
            assert session.events_of("session.update")[0]["session"]["instructions"]

    run(scenario)


def test_update_without_session_type_is_refused_whole() -> None:
    async def scenario() -> None:
        async with FakeRealtimeServer() as srv, client(srv) as c:
            created = await c.recv()
            await c.send("session.update", event_id="evt_1", session={"instructions": "x", "audio": pcmu()})
            err = await c.recv()
            assert err["type"] == "error"
            assert err["error"]["code"] == "missing_required_parameter"
            assert err["error"]["param"] == "session.type"
            assert err["error"]["event_id"] == "evt_1"
            assert srv.sessions[0].config == created["session"]  # nothing applied
            assert (await c.update(instructions="ok"))["type"] == "session.updated"

    run(scenario)


def test_events_the_sdk_types_reject_get_the_service_error_and_change_nothing() -> None:
    async def scenario() -> None:
        async with FakeRealtimeServer() as srv, client(srv) as c:
            created = await c.recv()
            session = srv.sessions[0]
            # A beta-era field hidden in an otherwise good update: refused whole.
            await c.send(
                "session.update",
                event_id="u1",
                session={"type": "realtime", "instructions": "nope", "audio": pcmu(), "voice": "alloy"},
            )
            err = await c.recv()
            assert err["type"] == "error" and err["event_id"] != "u1"
            assert err["error"] == {
                "type": "invalid_request_error",
                "code": "unknown_parameter",
                "message": "Unknown parameter: 'session.voice'.",
                "param": "session.voice",
                "event_id": "u1",
            }
            assert session.config == created["session"]
            # A beta field name in response.create: no response starts.
            await c.send("response.create", event_id="r1", response={"modalities": ["audio"]})
            err = await c.recv()
            assert (err["error"]["code"], err["error"]["param"]) == (
                "unknown_parameter",
                "response.modalities",
            )
            await c.send("response.cancel", event_id="c1")
            assert (await c.recv())["error"]["code"] == "response_cancel_not_active"
            # A mistyped truncate is not looked at, however plausible.
            await c.send(
                "conversation.item.truncate", event_id="t1", item_id="x", content_index=0, audio_end_ms="5"
            )
            err = await c.recv()
            assert (err["error"]["code"], err["error"]["param"]) == ("invalid_type", "audio_end_ms")
            assert session.truncates == []
            # An append with an extra key adds no audio; the next good one does.
            await c.send("input_audio_buffer.append", event_id="a1", audio="AAAA", format="pcmu")
            err = await c.recv()
            assert (err["error"]["code"], err["error"]["event_id"]) == ("unknown_parameter", "a1")
            await c.send("input_audio_buffer.append", audio=base64.b64encode(b"\x7f\x7f").decode())
            assert await session.wait_for_input_audio(2) == b"\x7f\x7f"
            assert session.append_count == 1
            # A mistyped event_id is refused, and not echoed: error.event_id is a string or null.
            await c.send("input_audio_buffer.clear", event_id=7)
            err = await c.recv()
            assert (err["error"]["param"], err["error"]["event_id"]) == ("event_id", None)
            assert [ev.get("event_id") for ev, _ in session.refused] == ["u1", "r1", "t1", "a1", 7]

    run(scenario)


def test_a_function_call_item_can_be_created_as_history_and_answered() -> None:
    async def scenario() -> None:
        async with FakeRealtimeServer() as srv, client(srv) as c:
            await c.recv()
            call = {"type": "function_call", "call_id": "call_old", "name": "lookup", "arguments": "{}"}
            await c.send("conversation.item.create", item=call)
            done = await c.until("conversation.item.done")
            assert done["item"]["type"] == "function_call" and done["item"]["status"] == "completed"
            await c.send(
                "conversation.item.create",
                item={"type": "function_call_output", "call_id": "call_old", "output": "{}"},
            )
            out = await c.until(lambda ev: ev["type"] in ("conversation.item.done", "error"))
            assert out["type"] == "conversation.item.done"
            assert out["previous_item_id"] == done["item"]["id"]
            assert [it["type"] for it in srv.sessions[0].items] == ["function_call", "function_call_output"]

    run(scenario)


def test_items_are_retrieved_and_deleted_and_semantic_vad_is_echoed() -> None:
    # Each reply below passed the fake's own check against the SDK's server-event types.
    async def scenario() -> None:
        async with FakeRealtimeServer() as srv, client(srv) as c:
            await c.recv()
            updated = await c.update(audio=pcmu({"type": "semantic_vad", "eagerness": "low"}))
            assert updated["session"]["audio"]["input"]["turn_detection"]["eagerness"] == "low"
            text = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
            await c.send("conversation.item.create", item={**text, "id": "item_mine"})
            await c.until("conversation.item.done")
            await c.send("conversation.item.retrieve", item_id="item_mine")
            retrieved = await c.until("conversation.item.retrieved")
            assert retrieved["item"]["content"] == text["content"]
            await c.send("conversation.item.delete", item_id="item_mine")
            assert (await c.until("conversation.item.deleted"))["item_id"] == "item_mine"
            assert srv.sessions[0].items == []
            assert srv.invalid_sent == []

    run(scenario)


def test_a_server_event_the_sdk_types_reject_is_a_loud_bug_in_the_fake() -> None:
    async def scenario() -> None:
        # The script's error has an integer code; the SDK's RealtimeError says str | None.
        srv = FakeRealtimeServer(Script(reject_session_update={"code": 400}))
        await srv.start()
        try:
            async with client(srv) as c:
                await c.recv()
                await c.send("session.update", session={"type": "realtime"})
                assert await c.close_code() == 1011  # the handler died: nothing invalid went out
            await srv.sessions[0].wait_closed()
            assert [ev["type"] for ev in srv.sessions[0].sent] == ["session.created"]
        finally:
            with pytest.raises(FakeProtocolError, match=r"invalid error: invalid_type.*error\.code"):
                await srv.stop()

    run(scenario)


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"modalities": ["audio", "text"]}, "session.modalities"),
        ({"voice": "alloy"}, "session.voice"),
        ({"input_audio_format": "g711_ulaw"}, "session.input_audio_format"),
        ({"temperature": 0.8}, "session.temperature"),
        ({"turn_detection": {"type": "server_vad"}}, "session.turn_detection"),
        ({"audio": {"input": {"sample_rate": 8000}}}, "session.audio.input.sample_rate"),
        (
            {"audio": {"output": {"format": {"type": "audio/pcmu"}, "volume": 1}}},
            "session.audio.output.volume",
        ),
        (
            {"audio": {"input": {"turn_detection": {"type": "server_vad", "eagerness": "low"}}}},
            "session.audio.input.turn_detection.eagerness",
        ),
    ],
)
def test_unknown_and_beta_fields_are_refused(session: dict[str, Any], param: str) -> None:
    async def scenario() -> None:
        async with FakeRealtimeServer() as srv, client(srv) as c:
            created = await c.recv()
            err = await c.update(instructions="changed", **session)
            assert err["type"] == "error"
            assert err["error"]["code"] == "unknown_parameter"
            assert err["error"]["param"] == param
            assert err["error"]["message"] == f"Unknown parameter: '{param}'."
            assert srv.sessions[0].config == created["session"]

    run(scenario)


def test_beta_header_gets_error_and_close_4000() -> None:
    async def scenario() -> None:
        async with FakeRealtimeServer() as srv:
            assert srv.connection_attempts == 0
            async with client(srv, headers={"OpenAI-Beta": "realtime=v1"}) as c:
                err = await c.recv()
                assert err["error"]["code"] == "beta_api_shape_disabled"
                assert "no longer supported" in err["error"]["message"]
                assert await c.close_code() == 4000
            assert srv.connection_attempts == 1
            assert srv.sessions[0].rejected == "beta_api_shape_disabled"
            await srv.sessions[0].wait_closed()
            assert srv.sessions[0].close_code == 4000

    run(scenario)


@pytest.mark.parametrize("key", ["sk-proj-wrongwrongwrong1234", None])
def test_bad_or_missing_key_gets_error_and_close_3000(key: str | None) -> None:
    async def scenario() -> None:
        async with FakeRealtimeServer(api_key="sk-real-key-0000") as srv, client(srv, key=key) as c:
            err = await c.recv()
            assert err["type"] == "error"
            if key is not None:
                assert err["error"]["code"] == "invalid_api_key"
                assert key not in err["error"]["message"]  # never echo the full key
                assert err["error"]["message"].endswith("1234.")
            assert await c.close_code() == 3000
            assert not srv.sessions[0].sent_of("session.created")

    run(scenario)


def test_wrong_path_is_404_and_counted() -> None:
    async def scenario() -> None:
        async with FakeRealtimeServer() as srv:
            with pytest.raises(InvalidStatus) as info:
                async with connect(srv.url.replace("/v1/realtime", "/v1/other"), proxy=None):
                    pass
            assert info.value.response.status_code == 404
            assert srv.connection_attempts == 1 and srv.sessions == []

    run(scenario)


def test_voice_cannot_change_after_audio_output() -> None:
    async def scenario() -> None:
        async with FakeRealtimeServer(Script([Reply("Hi.")])) as srv, client(srv) as c:
            await c.recv()
            assert (
                await c.update(
                    audio=pcmu(),
                )
            )["type"] == "session.updated"
            assert (await c.update(audio={"output": {"voice": "cedar"}}))["type"] == "session.updated"
            await c.send("response.create")
            await c.until("response.done")
            err = await c.update(audio={"output": {"voice": "marin"}})
            assert err["type"] == "error" and err["error"]["param"] == "session.audio.output.voice"
            assert srv.sessions[0].config["audio"]["output"]["voice"] == "cedar"

    run(scenario)


# --------------------------------------------------------------------------------------------
# Input audio and VAD


def test_vad_on_tone_then_silence_reports_exact_positions() -> None:
    async def scenario() -> None:
        async with FakeRealtimeServer() as srv, client(srv) as c:
            await c.recv()
            await c.update(audio=pcmu(vad()))
            audio = mulaw.silence(1000) + speech(600) + mulaw.silence(1000)
            await c.append(audio)
            started = await c.until("input_audio_buffer.speech_started")
            stopped = await c.until("input_audio_buffer.speech_stopped")
            committed = await c.until("input_audio_buffer.committed")
            added = await c.until("conversation.item.added")
            done = await c.until("conversation.item.done")
            assert started["audio_start_ms"] == 1000 - 300  # prefix padding
            assert stopped["audio_end_ms"] == 1600 + 500  # includes the silence duration
            item_id = started["item_id"]
            assert item_id.startswith("item_")
            assert stopped["item_id"] == committed["item_id"] == item_id
            assert committed["previous_item_id"] is None
            assert added["item"]["id"] == done["item"]["id"] == item_id
            assert added["item"]["role"] == "user"
            assert added["item"]["content"] == [{"type": "input_audio", "transcript": None}]
            await c.send("input_audio_buffer.clear")  # a round trip: all appends are processed
            await c.until("input_audio_buffer.cleared")
            session = srv.sessions[0]
            assert bytes(session.input_audio) == audio
            assert session.append_count == len(audio) // 160
            assert not session.events_of("input_audio_buffer.append")
            assert "response.created" not in c.types()  # create_response is off

    run(scenario)


def test_vad_prefix_padding_is_floored_at_zero_and_vad_off_is_silent() -> None:
    async def scenario() -> None:
        async with FakeRealtimeServer() as srv, client(srv) as c:
            await c.recv()
            await c.update(audio=pcmu(vad(silence_duration_ms=200)))
            await c.append(mulaw.silence(100) + speech(200) + mulaw.silence(200))
            assert (await c.until("input_audio_buffer.speech_started"))["audio_start_ms"] == 0
            assert (await c.until("input_audio_buffer.speech_stopped"))["audio_end_ms"] == 500
            await c.update(audio={"input": {"turn_detection": None}})
            mark = len(c.log)
            await c.append(speech(300) + mulaw.silence(600))
            await c.send("input_audio_buffer.commit")
            committed = await c.until("input_audio_buffer.committed")
            assert not any(t.startswith("input_audio_buffer.speech") for t in c.types(mark))
            assert committed["previous_item_id"] == srv.sessions[0].items[0]["id"]

    run(scenario)


def test_pcm_input_uses_48_bytes_per_ms() -> None:
    async def scenario() -> None:
        async with FakeRealtimeServer() as srv, client(srv) as c:
            await c.recv()  # default session: audio/pcm 24 kHz with server_vad
            await c.update(audio={"input": {"turn_detection": vad()}})
            audio = (
                mulaw.silence(500, mulaw.PCM) + mulaw.tone(400, 1, mulaw.PCM) + mulaw.silence(600, mulaw.PCM)
            )
            await c.append(audio, frame=960)
            assert (await c.until("input_audio_buffer.speech_started"))["audio_start_ms"] == 200
            assert (await c.until("input_audio_buffer.speech_stopped"))["audio_end_ms"] == 1400
            assert await srv.sessions[0].wait_for_input_audio(len(audio)) == audio
            await c.update(audio={"input": {"turn_detection": None}})
            await c.send("input_audio_buffer.clear")  # drop the 100 ms left after the commit
            await c.append(mulaw.silence(50, mulaw.PCM), frame=960)
            await c.send("input_audio_buffer.commit")
            assert "50.00ms" in (await c.until("error"))["error"]["message"]

    run(scenario)


def test_module_does_not_import_django() -> None:
    code = "import sys, calls.fakes.openai_realtime; sys.exit('django' in sys.modules)"
    root = Path(__file__).resolve().parent.parent
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0


_WITHOUT_SDK = """
import asyncio, json, logging, sys
sys.modules["openai"] = None  # installed from requirements.txt only, as for make demo
logging.basicConfig(level=logging.WARNING, format="%(message)s")
from websockets.asyncio.client import connect
from calls.fakes.openai_realtime import FakeRealtimeServer

async def main():
    async with FakeRealtimeServer(api_key="k") as srv:
        headers = {"Authorization": "Bearer k"}
        async with connect(srv.url + "?model=m", additional_headers=headers, proxy=None) as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
            print(json.loads(await ws.recv())["type"])

asyncio.run(main())
"""


def test_without_the_sdk_the_fake_runs_unchecked_and_says_so() -> None:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_SDK],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "session.updated"
    assert "openai SDK not installed: events are not checked" in done.stderr


def test_buffer_errors_and_bad_events_keep_the_session_open() -> None:
    async def scenario() -> None:
        async with FakeRealtimeServer() as srv, client(srv) as c:
            await c.recv()
            await c.update(audio=pcmu())
            await c.append(mulaw.silence(50))
            await c.send("input_audio_buffer.commit", event_id="c1")
            err = await c.recv()
            assert err["error"]["code"] == "input_audio_buffer_commit_empty"
            assert "50.00ms" in err["error"]["message"] and err["error"]["event_id"] == "c1"
            await c.send("input_audio_buffer.clear")
            assert (await c.recv())["type"] == "input_audio_buffer.cleared"
            await c.send("scooby.dooby.doo", event_id="u1")
            err = await c.recv()
            assert (err["error"]["code"], err["error"]["param"]) == ("invalid_value", "type")
            assert err["error"]["event_id"] == "u1"
            await c.send("output_audio_buffer.clear")  # WebRTC/SIP only
            assert (await c.recv())["error"]["param"] == "type"
            await c.ws.send("{not json")
            assert (await c.recv())["type"] == "error"
            await c.send("input_audio_buffer.append", audio="!!notbase64!!")
            assert (await c.recv())["error"]["code"] == "invalid_value"
            await c.send("response.cancel")
            assert (await c.recv())["error"]["code"] == "response_cancel_not_active"
            await c.append(mulaw.silence(200))
            await c.send("input_audio_buffer.commit")
            assert (await c.recv())["type"] == "input_audio_buffer.committed"
            assert (await c.update(instructions="still here"))["type"] == "session.updated"
            assert srv.sessions[0].events_of("scooby.dooby.doo")[0]["event_id"] == "u1"

    run(scenario)


# --------------------------------------------------------------------------------------------
# Responses


HEAD = [
    "response.created",
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
]
TAIL = [
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
]
DELTAS = {"response.output_audio.delta", "response.output_audio_transcript.delta"}


def test_response_streams_in_ga_order_with_exact_audio_and_usage() -> None:
    reply = Reply(transcript="Hello there, how can I help?")  # 28 chars -> 1680 ms

    async def scenario() -> None:
        async with FakeRealtimeServer(Script([reply])) as srv, client(srv) as c:
            await c.recv()
            await c.update(instructions="You are a phone agent.", audio=pcmu())
            mark = len(c.log)
            await c.send("response.create", response={"instructions": "Greet the caller."})
            await c.until("rate_limits.updated")
            events = c.log[mark:]
            types = [ev["type"] for ev in events]
            first = types.index("response.output_audio.delta")
            last = max(i for i, t in enumerate(types) if t in DELTAS)
            assert types[:first] == HEAD
            assert set(types[first : last + 1]) == DELTAS
            assert types[last + 1 :] == [*TAIL, "response.done", "rate_limits.updated"]
            assert all(ev["event_id"].startswith("event_") for ev in events)

            created, done = events[0]["response"], events[-2]["response"]
            assert created["id"].startswith("resp_") and created["status"] == "in_progress"
            item_id = events[1]["item"]["id"]
            assert item_id.startswith("item_") and events[1]["item"]["content"] == []
            assert events[3]["part"] == {"type": "audio", "transcript": ""}
            deltas = [ev for ev in events if ev["type"] == "response.output_audio.delta"]
            sizes = [len(base64.b64decode(ev["delta"])) for ev in deltas]
            assert sizes == [800] * 16 + [640]
            audio = audio_of(events)
            assert audio == bytes(srv.sessions[0].output_audio[item_id]) == reply.render_audio()
            assert len(audio) == 1680 * 8
            said = "".join(
                ev["delta"] for ev in events if ev["type"] == "response.output_audio_transcript.delta"
            )
            assert said == reply.transcript
            assert events[-6]["type"] == "response.output_audio_transcript.done"
            assert events[-6]["transcript"] == reply.transcript

            assert done["status"] == "completed" and done["status_details"] is None
            assert done["id"] == created["id"]
            assert done["output"] == [
                {
                    "id": item_id,
                    "object": "realtime.item",
                    "type": "message",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_audio", "transcript": reply.transcript}],
                }
            ]
            usage = done["usage"]
            assert usage["output_token_details"] == {"text_tokens": 8, "audio_tokens": 34}
            assert usage["output_tokens"] == 42
            details = usage["input_token_details"]
            assert details["text_tokens"] == round(5 * 1.3) and details["audio_tokens"] == 0
            assert details["cached_tokens"] == 0 and "cached_tokens_details" in details
            assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
            assert events[-1]["rate_limits"][0]["name"] == "requests"

    run(scenario)


def test_audio_is_deterministic_per_reply_and_default_reply_is_ok() -> None:
    assert Reply("abc").render_audio() == Reply("abc").render_audio()
    assert Reply("abc").render_audio() != Reply("abd").render_audio()
    assert len(Reply("").render_audio()) == 200 * 8  # minimum 200 ms
    assert Reply(audio=b"\x01\x02").render_audio() == b"\x01\x02"

    async def scenario() -> None:
        async with FakeRealtimeServer() as srv, client(srv) as c:
            await c.recv()
            await c.update(audio=pcmu())
            await c.send("response.create")
            done = await c.until("response.done")
            assert done["response"]["output"][0]["content"][0]["transcript"] == "OK."
            assert srv.sessions[0].events_of("response.create")

    run(scenario)


def test_second_response_create_while_active_is_refused() -> None:
    async def scenario() -> None:
        script = Script([Reply("A fairly long answer here.", pace=0.01)])
        async with FakeRealtimeServer(script) as srv, client(srv) as c:
            await c.recv()
            await c.update(audio=pcmu())
            await c.send("response.create")
            await c.send("response.create", event_id="second")
            done = await c.until("response.done")
            created = next(ev for ev in c.log if ev["type"] == "response.created")
            err = next(ev for ev in c.log if ev["type"] == "error")
            rid = created["response"]["id"]
            assert err["error"]["code"] == "conversation_already_has_active_response"
            assert err["error"]["message"] == (
                f"Conversation already has an active response in progress: {rid}. Wait until "
                "the response is finished before creating a new one."
            )
            assert err["error"]["event_id"] == "second"
            assert done["response"]["status"] == "completed"
            assert c.types().count("response.created") == 1
            # Once done, the next one is accepted.
            await c.send("response.create")
            again = await c.until("response.done")
            assert again["response"]["id"] != rid
            assert len(srv.sessions[0].events_of("response.create")) == 3

    run(scenario)


def test_barge_in_cancels_with_turn_detected_then_truncate() -> None:
    async def scenario() -> None:
        script = Script([Reply("x" * 100, pace=0.02)])  # 6 s of audio, paced
        async with FakeRealtimeServer(script) as srv, client(srv) as c:
            await c.recv()
            await c.update(audio=pcmu(vad(silence_duration_ms=200)))
            await c.send("response.create")
            first = await c.until("response.output_audio.delta")
            await c.append(speech(60))  # the caller talks over the agent
            started = await c.until("input_audio_buffer.speech_started")
            done = await c.until("response.done")
            response = done["response"]
            assert response["status"] == "cancelled"
            assert response["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
            assert c.types().index("input_audio_buffer.speech_started") < len(c.log) - 1
            assert started["audio_start_ms"] == 0
            item_id = first["item_id"]
            item_done = next(ev for ev in c.log if ev["type"] == "response.output_item.done")
            assert item_done["item"]["status"] == "incomplete"
            heard = audio_of(c.log, item_id)
            assert 0 < len(heard) < 6000 * 8
            assert heard == bytes(srv.sessions[0].output_audio[item_id])
            partial = "".join(
                ev["delta"] for ev in c.log if ev["type"] == "response.output_audio_transcript.delta"
            )
            transcript_done = next(
                ev for ev in c.log if ev["type"] == "response.output_audio_transcript.done"
            )
            assert transcript_done["transcript"] == partial and len(partial) < 100
            assert response["output"][0]["status"] == "incomplete"

            sent_ms = len(heard) // 8
            await c.send(
                "conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=sent_ms + 40
            )
            err = await c.until("error")
            assert err["error"]["message"] == (
                f"Audio content of {sent_ms}ms is already shorter than {sent_ms + 40}ms"
            )
            await c.send(
                "conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=sent_ms - 20
            )
            ok = await c.until("conversation.item.truncated")
            assert ok == {**ok, "item_id": item_id, "content_index": 0, "audio_end_ms": sent_ms - 20}
            assert [t["audio_end_ms"] for t in srv.sessions[0].truncates] == [sent_ms + 40, sent_ms - 20]

    run(scenario)


def test_client_cancel_reports_client_cancelled() -> None:
    async def scenario() -> None:
        async with FakeRealtimeServer(Script([Reply("y" * 80, pace=0.02)])) as srv, client(srv) as c:
            await c.recv()
            await c.update(audio=pcmu())
            await c.send("response.create")
            await c.until("response.output_audio.delta")
            await c.send("response.cancel")
            done = await c.until("response.done")
            assert done["response"]["status_details"]["reason"] == "client_cancelled"
            await c.send("response.cancel")
            assert (await c.until("error"))["error"]["code"] == "response_cancel_not_active"
            assert srv.sessions[0].active is None

    run(scenario)


def test_truncate_errors_and_success_after_full_response() -> None:
    async def scenario() -> None:
        async with FakeRealtimeServer(Script([Reply("a" * 20)])) as srv, client(srv) as c:
            await c.recv()
            await c.update(audio=pcmu())
            await c.send("response.create")
            done = await c.until("response.done")
            item_id = done["response"]["output"][0]["id"]
            await c.send("conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=1300)
            err = await c.until("error")
            assert err["error"]["message"] == "Audio content of 1200ms is already shorter than 1300ms"
            await c.send("conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=1200)
            assert (await c.until("conversation.item.truncated"))["audio_end_ms"] == 1200
            await c.send("conversation.item.truncate", item_id="item_nope", content_index=0, audio_end_ms=10)
            err = await c.until("error")
            assert (err["error"]["code"], err["error"]["param"]) == ("invalid_value", "item_id")
            assert len(srv.sessions[0].truncates) == 3

    run(scenario)


def test_function_call_events_and_tool_output() -> None:
    async def scenario() -> None:
        script = Script(
            [
                Reply("Goodbye!", function_call=("end_call", {"reason": "done"})),
                Reply(function_call=("lookup", {"q": "opening hours"})),
            ]
        )
        async with FakeRealtimeServer(script) as srv, client(srv) as c:
            await c.recv()
            await c.update(audio=pcmu())
            mark = len(c.log)
            await c.send("response.create")
            done = (await c.until("response.done"))["response"]
            types = c.types(mark)
            tail = types[types.index("conversation.item.done") + 1 :]
            assert tail == [
                "response.output_item.added",
                "conversation.item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "conversation.item.done",
                "response.done",
            ]
            added = next(
                ev
                for ev in c.log[mark:]
                if ev["type"] == "response.output_item.added" and ev["item"]["type"] == "function_call"
            )
            assert added["output_index"] == 1
            assert added["item"]["arguments"] == "" and added["item"]["status"] == "in_progress"
            call_id = added["item"]["call_id"]
            assert call_id.startswith("call_")
            args_done = next(ev for ev in c.log if ev["type"] == "response.function_call_arguments.done")
            assert (args_done["name"], json.loads(args_done["arguments"])) == ("end_call", {"reason": "done"})
            pieces = [ev["delta"] for ev in c.log if ev["type"] == "response.function_call_arguments.delta"]
            assert "".join(pieces) == args_done["arguments"]
            assert [o["type"] for o in done["output"]] == ["message", "function_call"]
            assert done["output"][1]["call_id"] == call_id
            assert done["output"][1]["status"] == "completed"

            await c.send(
                "conversation.item.create",
                item={"type": "function_call_output", "call_id": call_id, "output": '{"ok":true}'},
            )
            out_added = await c.until("conversation.item.added")
            assert out_added["previous_item_id"] == done["output"][1]["id"]
            assert out_added["item"]["id"].startswith("item_")
            assert (await c.until("conversation.item.done"))["item"]["type"] == "function_call_output"
            await c.send(
                "conversation.item.create",
                event_id="bad",
                item={"type": "function_call_output", "call_id": "call_unknown", "output": "{}"},
            )
            assert (await c.until("error"))["error"]["event_id"] == "bad"

            mark = len(c.log)
            await c.send("response.create")
            second = (await c.until("response.done"))["response"]
            assert [o["type"] for o in second["output"]] == ["function_call"]
            assert not any(t.startswith("response.output_audio") for t in c.types(mark))
            assert second["output"][0]["name"] == "lookup"
            assert srv.sessions[0].items[-1]["type"] == "function_call"

    run(scenario)


def test_transcription_completes_after_the_response_started() -> None:
    async def scenario() -> None:
        script = Script([Reply("Sure, what time?")], caller_transcripts=["I need a plumber."])
        async with FakeRealtimeServer(script) as srv, client(srv) as c:
            await c.recv()
            await c.update(
                audio=pcmu(
                    vad(silence_duration_ms=200, create_response=True),
                    transcription={"model": "gpt-4o-transcribe"},
                )
            )
            await c.append(mulaw.silence(400) + speech(800) + mulaw.silence(400))
            done = await c.until("conversation.item.input_audio_transcription.completed")
            types = c.types()
            committed = next(ev for ev in c.log if ev["type"] == "input_audio_buffer.committed")
            assert types.index("input_audio_buffer.committed") < types.index("response.created")
            assert types.index("response.created") < len(types) - 1
            assert done["item_id"] == committed["item_id"] and done["content_index"] == 0
            assert done["transcript"] == "I need a plumber."
            # speech from 100 ms (400 - 300 padding) to 1400 ms (1200 + 200 silence)
            assert done["usage"] == {"type": "duration", "seconds": 1.3}
            if "rate_limits.updated" not in c.types():
                await c.until("rate_limits.updated")
            user = srv.sessions[0].items[0]
            assert user["content"][0]["transcript"] == "I need a plumber."

    run(scenario)


def test_conversation_item_create_respects_previous_item_id() -> None:
    async def scenario() -> None:
        async with FakeRealtimeServer() as srv, client(srv) as c:
            await c.recv()
            text = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hello"}]}
            await c.send("conversation.item.create", item=text)
            a = await c.until("conversation.item.done")
            assert a["previous_item_id"] is None
            await c.send("conversation.item.create", previous_item_id="root", item={**text, "role": "system"})
            b = await c.until("conversation.item.added")
            assert b["previous_item_id"] is None
            await c.send("conversation.item.create", previous_item_id=b["item"]["id"], item=text)
            c3 = await c.until("conversation.item.added")
            assert c3["previous_item_id"] == b["item"]["id"]
            await c.send("conversation.item.create", previous_item_id="item_missing", item=text)
            assert (await c.until("error"))["error"]["param"] == "previous_item_id"
            await c.send(
                "conversation.item.create",
                item={
                    "type": "message",
                    "role": "assistant",
                    "content": [{"type": "output_audio", "audio": ""}],
                },
            )
            assert (await c.until("error"))["error"]["code"] == "invalid_value"
            order = [it["id"] for it in srv.sessions[0].items]
            assert order == [b["item"]["id"], c3["item"]["id"], a["item"]["id"]]

    run(scenario)


# --------------------------------------------------------------------------------------------
# Concurrency, scripted faults, shutdown


def test_ten_concurrent_sessions_do_not_cross_talk() -> None:
    numbers = itertools.count()

    def script() -> Script:
        n = next(numbers)
        return Script([Reply(f"Reply number {n}.", pace=0.001)], caller_transcripts=[f"caller {n}"])

    async def one(srv: FakeRealtimeServer, i: int) -> None:
        async with client(srv) as c:
            created = await c.recv()
            await c.update(instructions=f"agent {i}", audio=pcmu())
            mine = bytes([0x10 + i]) * 1600  # 200 ms of a per-client constant
            await c.append(mine)
            await c.send("input_audio_buffer.commit")
            await c.until("input_audio_buffer.committed")
            await c.send("response.create")
            done = (await c.until("response.done"))["response"]
            session = next(s for s in srv.sessions if s.config["id"] == created["session"]["id"])
            assert bytes(session.input_audio) == mine
            assert session.config["instructions"] == f"agent {i}"
            item_id = done["output"][0]["id"]
            assert audio_of(c.log) == bytes(session.output_audio[item_id])
            transcript = done["output"][0]["content"][0]["transcript"]
            assert transcript == session.script.replies[0].transcript
            assert all(ev.get("response_id", done["id"]) == done["id"] for ev in c.log)

    async def scenario() -> None:
        async with FakeRealtimeServer(script) as srv:
            await asyncio.gather(*(one(srv, i) for i in range(10)))
            assert len(srv.sessions) == srv.connection_attempts == 10
            assert len({s.config["id"] for s in srv.sessions}) == 10
            assert len({s.script.replies[0].transcript for s in srv.sessions}) == 10

    run(scenario)


def test_fifty_sessions_at_once() -> None:
    async def one(srv: FakeRealtimeServer) -> str:
        async with client(srv) as c:
            await c.recv()
            await c.update(audio=pcmu())
            await c.send("response.create")
            return str((await c.until("response.done"))["response"]["status"])

    async def scenario() -> None:
        async with FakeRealtimeServer(Script([Reply("Hi.")])) as srv:
            statuses = await asyncio.gather(*(one(srv) for _ in range(50)))
            assert statuses == ["completed"] * 50

    run(scenario)


def test_scripted_session_update_faults() -> None:
    async def scenario() -> None:
        rejection = {
            "type": "invalid_request_error",
            "code": "invalid_value",
            "message": "nope",
            "param": "session.audio",
        }
        async with FakeRealtimeServer(Script(reject_session_update=rejection)) as srv:
            async with client(srv) as c:
                await c.recv()
                await c.send("session.update", event_id="u1", session={"type": "realtime", "audio": pcmu()})
                err = await c.recv()
                assert err["error"] == {**rejection, "event_id": "u1"}
                assert (await c.update(audio=pcmu()))["type"] == "session.updated"
            srv.set_script(Script(close_after_session_update=1011))
            async with client(srv) as c:
                await c.recv()
                assert (await c.update(audio=pcmu()))["type"] == "session.updated"
                assert await c.close_code() == 1011
            await srv.sessions[1].wait_closed()
            assert srv.sessions[1].close_code == 1011

    run(scenario)


def test_scripted_mid_call_drop_after_first_delta() -> None:
    async def scenario() -> None:
        async with (
            FakeRealtimeServer(Script([Reply("Long answer " * 5)], close_after_first_delta=1011)) as srv,
            client(srv) as c,
        ):
            await c.recv()
            await c.update(audio=pcmu())
            await c.send("response.create")
            assert await c.close_code() == 1011
            assert c.types().count("response.output_audio.delta") == 1
            assert "response.done" not in c.types()
            await srv.sessions[0].wait_closed()

    run(scenario)


def test_connect_delay_then_session_created() -> None:
    async def scenario() -> None:
        async with FakeRealtimeServer(Script(connect_delay=0.2)) as srv, client(srv) as c:
            began = time.monotonic()
            assert (await c.recv())["type"] == "session.created"
            assert time.monotonic() - began >= 0.15

    run(scenario)


def test_handshake_delay_holds_each_upgrade_without_blocking_the_others() -> None:
    async def scenario() -> None:
        async with FakeRealtimeServer(handshake_delay=0.5) as srv:
            began = time.monotonic()

            async def one() -> float:
                async with client(srv):
                    return time.monotonic() - began

            opened = await asyncio.gather(one(), one(), one())
            assert min(opened) >= 0.45  # each upgrade waited...
            assert max(opened) < 1.4  # ...at the same time: one after another would take 1.5 s
            assert srv.connection_attempts == 3 and len(srv.sessions) == 3

    run(scenario)


def test_stop_mid_stream_closes_sessions_without_leaking_tasks() -> None:
    async def scenario() -> None:
        srv = FakeRealtimeServer(lambda: Script([Reply("z" * 200, pace=0.05)], connect_delay=0.0))
        await srv.start()
        async with client(srv) as c, client(srv) as idle:
            await c.recv()
            await idle.recv()
            await c.update(audio=pcmu())
            await c.send("response.create")
            await c.until("response.output_audio.delta")
            await srv.stop()
            assert await c.close_code() == 1001
            assert await idle.close_code() == 1001
        assert all(s.closed.is_set() for s in srv.sessions)

    run(scenario)


def test_server_side_waiters_are_event_based() -> None:
    async def scenario() -> None:
        async with FakeRealtimeServer() as srv:
            waiter = asyncio.ensure_future(srv.wait_for_session(0, timeout=5))
            async with client(srv) as c:
                session = await waiter
                await c.recv()
                pending = asyncio.ensure_future(
                    session.wait_for_event(
                        lambda ev: ev["type"] == "response.create" and ev.get("event_id") == "r2"
                    )
                )
                await c.send(
                    "conversation.item.create",
                    item={
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "Hi"}],
                    },
                )
                await c.send("response.create", event_id="r2")
                assert (await pending)["event_id"] == "r2"
                sent = await session.wait_for_sent("response.done")
                assert sent["response"]["status"] == "completed"
                with pytest.raises(TimeoutError):
                    await session.wait_for_event("session.update", timeout=0.05)
            await session.wait_closed()
            assert session.close_code == 1000

    run(scenario)


# --------------------------------------------------------------------------------------------
# Text output (output_modalities ["text"])

TEXT_TAIL = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
]


def text_of(events: list[Event]) -> str:
    return "".join(ev["delta"] for ev in events if ev["type"] == "response.output_text.delta")


async def say(c: Client, text: str) -> Event:
    """Add a typed user message, as a text client does; return its conversation.item.done."""
    item = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}
    await c.send("conversation.item.create", item=item)
    return await c.until(lambda ev: ev["type"] in ("conversation.item.done", "error"))


def test_text_mode_streams_output_text_in_ga_order_with_text_only_usage() -> None:
    reply = Reply(transcript="Hello there, how can I help?")

    async def scenario() -> None:
        async with FakeRealtimeServer(Script([reply])) as srv, client(srv) as c:
            await c.recv()
            updated = await c.update(
                instructions="You are a phone agent.", output_modalities=["text"], audio=pcmu()
            )
            assert updated["session"]["output_modalities"] == ["text"]
            user = await say(c, "What are your opening hours?")
            assert user["type"] == "conversation.item.done"
            assert user["item"]["content"] == [{"type": "input_text", "text": "What are your opening hours?"}]
            mark = len(c.log)
            await c.send("response.create")
            await c.until("rate_limits.updated")
            events = c.log[mark:]
            deltas = [ev for ev in events if ev["type"] == "response.output_text.delta"]
            assert [ev["delta"] for ev in deltas] == ["Hello", " there,", " how", " can", " I", " help?"]
            assert [ev["type"] for ev in events] == [
                *HEAD,
                *["response.output_text.delta"] * len(deltas),
                *TEXT_TAIL,
                "response.done",
                "rate_limits.updated",
            ]
            assert text_of(events) == reply.transcript

            created, done = events[0]["response"], events[-2]["response"]
            assert created["output_modalities"] == done["output_modalities"] == ["text"]
            added = events[1]["item"]
            item_id = added["id"]
            assert added == {
                "id": item_id,
                "object": "realtime.item",
                "type": "message",
                "status": "in_progress",
                "role": "assistant",
                "content": [],
            }
            assert events[2]["item"] == added and events[2]["previous_item_id"] == user["item"]["id"]
            assert events[3]["part"] == {"type": "text", "text": ""}
            ids = {"response_id": created["id"], "item_id": item_id, "output_index": 0, "content_index": 0}
            for ev in [events[3], *deltas, *events[-6:-4]]:
                assert ev == {**ev, **ids}
            assert set(deltas[0]) == {"type", "event_id", *ids, "delta"}
            assert events[-6]["text"] == reply.transcript
            assert events[-5]["part"] == {"type": "text", "text": reply.transcript}
            final = {
                **added,
                "status": "completed",
                "content": [{"type": "output_text", "text": reply.transcript}],
            }
            assert events[-4]["item"] == events[-3]["item"] == final
            assert done["status"] == "completed" and done["output"] == [final]

            usage = done["usage"]
            assert usage["output_token_details"] == {"text_tokens": 8, "audio_tokens": 0}
            assert usage["output_tokens"] == 8
            details = usage["input_token_details"]
            # Instructions and the typed user message: five words each.
            assert details["text_tokens"] == 2 * round(5 * 1.3) and details["audio_tokens"] == 0
            assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
            session = srv.sessions[0]
            assert session.output_audio == {}
            assert not any("audio" in t for t in c.types(mark))

            # Only audio can be truncated.
            await c.send("conversation.item.truncate", item_id=item_id, content_index=0, audio_end_ms=0)
            err = await c.until("error")
            assert err["error"]["message"] == "Only model output audio messages can be truncated"

    run(scenario)


def test_text_mode_function_calls_stream_as_with_audio() -> None:
    async def scenario() -> None:
        script = Script(
            [
                Reply("Goodbye!", function_call=("end_call", {"reason": "done"})),
                Reply(function_call=("lookup", {"q": "opening hours"})),
            ]
        )
        async with FakeRealtimeServer(script) as srv, client(srv) as c:
            await c.recv()
            await c.update(output_modalities=["text"])
            await say(c, "Bye.")
            call_events = [
                "response.output_item.added",
                "conversation.item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "conversation.item.done",
            ]
            mark = len(c.log)
            await c.send("response.create")
            done = (await c.until("response.done"))["response"]
            assert c.types(mark) == [
                *HEAD,
                "response.output_text.delta",
                *TEXT_TAIL,
                *call_events,
                "response.done",
            ]
            assert text_of(c.log[mark:]) == "Goodbye!"
            assert [o["type"] for o in done["output"]] == ["message", "function_call"]
            assert done["output"][0]["content"] == [{"type": "output_text", "text": "Goodbye!"}]
            call = done["output"][1]
            assert (call["name"], json.loads(call["arguments"]), call["status"]) == (
                "end_call",
                {"reason": "done"},
                "completed",
            )
            assert done["usage"]["output_token_details"]["audio_tokens"] == 0
            await c.until("rate_limits.updated")

            mark = len(c.log)
            await c.send("response.create")
            second = (await c.until("response.done"))["response"]
            assert c.types(mark) == ["response.created", *call_events, "response.done"]
            assert [o["type"] for o in second["output"]] == ["function_call"]
            assert second["output"][0]["name"] == "lookup"
            assert srv.sessions[0].output_audio == {}

    run(scenario)


def test_response_create_output_modalities_overrides_the_session_for_one_response() -> None:
    async def scenario() -> None:
        script = Script([Reply("Written once."), Reply("Spoken again."), Reply("Spoken on request.")])
        async with FakeRealtimeServer(script) as srv, client(srv) as c:
            await c.recv()
            await c.update(audio=pcmu())
            await c.send(
                "response.create", event_id="both", response={"output_modalities": ["audio", "text"]}
            )
            err = await c.until("error")
            assert err["error"]["event_id"] == "both"
            assert (err["error"]["code"], err["error"]["param"]) == (
                "invalid_value",
                "response.output_modalities",
            )
            assert "response.created" not in c.types()

            mark = len(c.log)
            await c.send("response.create", response={"output_modalities": ["text"]})
            done = (await c.until("response.done"))["response"]
            assert done["output_modalities"] == ["text"]
            assert not any("audio" in t for t in c.types(mark))
            assert text_of(c.log[mark:]) == "Written once."
            assert done["output"][0]["content"] == [{"type": "output_text", "text": "Written once."}]
            assert done["usage"]["output_token_details"]["audio_tokens"] == 0

            # The next response without an override speaks, as the session says.
            mark = len(c.log)
            await c.send("response.create")
            done = (await c.until("response.done"))["response"]
            assert done["output_modalities"] == ["audio"]
            assert "response.output_text.delta" not in c.types(mark)
            assert audio_of(c.log[mark:]) == Reply("Spoken again.").render_audio()
            assert done["usage"]["output_token_details"]["audio_tokens"] > 0

            # And the other way round: a text session asked to speak once.
            await c.update(output_modalities=["text"])
            mark = len(c.log)
            await c.send("response.create", response={"output_modalities": ["audio"]})
            done = (await c.until("response.done"))["response"]
            assert done["output_modalities"] == ["audio"]
            assert done["output"][0]["content"] == [
                {"type": "output_audio", "transcript": "Spoken on request."}
            ]
            assert "response.output_text.delta" not in c.types(mark)
            assert len(srv.sessions[0].output_audio) == 2

    run(scenario)


def test_text_mode_client_cancel_mid_text() -> None:
    full = " ".join(f"word{i}" for i in range(40))

    async def scenario() -> None:
        async with FakeRealtimeServer(Script([Reply(full, pace=0.02)])) as srv, client(srv) as c:
            await c.recv()
            await c.update(output_modalities=["text"])
            mark = len(c.log)
            await c.send("response.create")
            await c.until("response.output_text.delta")
            await c.send("response.cancel")
            done = (await c.until("response.done"))["response"]
            assert done["status"] == "cancelled"
            assert done["status_details"] == {"type": "cancelled", "reason": "client_cancelled"}
            types = c.types(mark)
            n = types.count("response.output_text.delta")
            assert 0 < n < 40
            assert types == [
                *HEAD,
                *["response.output_text.delta"] * n,
                *TEXT_TAIL,
                "response.done",
            ]
            partial = text_of(c.log[mark:])
            assert full.startswith(partial) and len(partial) < len(full)
            text_done = next(ev for ev in c.log if ev["type"] == "response.output_text.done")
            part_done = next(ev for ev in c.log if ev["type"] == "response.content_part.done")
            item_done = next(ev for ev in c.log if ev["type"] == "response.output_item.done")
            assert text_done["text"] == partial
            assert part_done["part"] == {"type": "text", "text": partial}
            assert item_done["item"]["status"] == "incomplete"
            assert item_done["item"]["content"] == [{"type": "output_text", "text": partial}]
            assert done["output"] == [item_done["item"]]
            assert srv.sessions[0].active is None
            await c.send("response.cancel")
            assert (await c.until("error"))["error"]["code"] == "response_cancel_not_active"

    run(scenario)


def test_text_mode_scripted_drop_after_first_delta() -> None:
    async def scenario() -> None:
        async with (
            FakeRealtimeServer(Script([Reply("Long answer " * 5)], close_after_first_delta=1011)) as srv,
            client(srv) as c,
        ):
            await c.recv()
            await c.update(output_modalities=["text"])
            await c.send("response.create")
            assert await c.close_code() == 1011
            assert c.types().count("response.output_text.delta") == 1
            assert "response.done" not in c.types()
            await srv.sessions[0].wait_closed()

    run(scenario)


# --------------------------------------------------------------------------------------------
# G.711 helpers


def test_g711_tables_match_the_standard() -> None:
    assert mulaw.ULAW_TO_LINEAR[0xFF] == 0 and mulaw.ULAW_TO_LINEAR[0x7F] == 0
    assert mulaw.ULAW_TO_LINEAR[0x00] == -32124 and mulaw.ULAW_TO_LINEAR[0x80] == 32124
    assert mulaw.ALAW_TO_LINEAR[0xD5] == 8 and mulaw.ALAW_TO_LINEAR[0x55] == -8
    assert mulaw.ALAW_TO_LINEAR[0xAA] == 32256
    assert mulaw.linear_to_ulaw(0) == 0xFF and mulaw.linear_to_ulaw(32767) == 0x80
    assert mulaw.rms(mulaw.silence(20)) == 0.0
    assert 5000 < mulaw.rms(mulaw.tone(20, 3)) < 6500
    for fmt in (mulaw.ULAW, mulaw.ALAW, mulaw.PCM):
        assert len(mulaw.tone(100, 1, fmt)) == 100 * mulaw.BYTES_PER_MS[fmt]


@given(st.integers(min_value=-32768, max_value=32767))
def test_g711_round_trip_is_within_quantisation(sample: int) -> None:
    for encode, table in (
        (mulaw.linear_to_ulaw, mulaw.ULAW_TO_LINEAR),
        (mulaw.linear_to_alaw, mulaw.ALAW_TO_LINEAR),
    ):
        decoded = table[encode(sample)]
        assert abs(decoded - sample) <= max(abs(sample) // 16, 16)
        assert table[encode(decoded)] == decoded  # re-encoding a decoded value is stable


def test_idle_timeout_commits_silence_and_responds() -> None:
    async def scenario() -> None:
        async with FakeRealtimeServer(Script(replies=[Reply("Hi."), Reply("Are you still there?")])) as srv:
            headers = {"Authorization": f"Bearer {KEY}"}
            async with connect(f"{srv.url}?model={MODEL}", additional_headers=headers, proxy=None) as ws:
                await ws.recv()  # session.created
                update = {
                    "type": "session.update",
                    "session": {
                        "type": "realtime",
                        "audio": {
                            "input": {
                                "format": {"type": "audio/pcmu"},
                                "turn_detection": {"type": "server_vad", "idle_timeout_ms": 200},
                            },
                            "output": {"format": {"type": "audio/pcmu"}},
                        },
                    },
                }
                await ws.send(json.dumps(update))
                await ws.send(json.dumps({"type": "response.create"}))
                session = await srv.wait_for_session(0)
                timeout = await session.wait_for_sent("input_audio_buffer.timeout_triggered", timeout=5)
                done = session.sent_of("response.done")
                assert len(done) == 1 and timeout["item_id"]
                second = await session.wait_for_sent(
                    lambda e: e["type"] == "response.done" and e is not done[0], timeout=5
                )
                assert second["response"]["status"] == "completed"

    run(scenario)
