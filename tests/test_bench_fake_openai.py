"""The benchmark's lean Realtime fake sends only events the openai SDK's GA types accept.

Why (issue 12): ``bench/fake_openai_server.py`` checks nothing per event (it sits next to 50
calls on two cores), so a call through it is checked here once instead: every server event it
sends in a scripted session -- greeting, barge-in, client cancel, truncate, items, errors --
is validated against ``RealtimeServerEvent`` by ``calls.fakes.realtime_schema``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import serve

from bench.fake_openai_server import LeanRealtimeFake, Options
from bench.wire import caller_frame
from calls import realtime
from calls.fakes import realtime_schema

Event = dict[str, Any]


@pytest.fixture
def settings() -> SimpleNamespace:
    """Shadow pytest-django's ``settings`` (used by an autouse fixture): no Django here."""
    return SimpleNamespace()


class Recorder:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[Event] = []
        self.problems: list[str] = []
        self.frames = 0

    async def until(self, match: Callable[[Event], bool]) -> Event:
        async with asyncio.timeout(5):
            while True:
                raw = await self.ws.recv()
                event = json.loads(raw)
                self.events.append(event)
                if problem := realtime_schema.server_event_problem(event.get("type"), raw):
                    self.problems.append(f"{event.get('type')}: {problem}")
                if match(event):
                    return event

    async def speak(self, speech: bool, frames: int = 1) -> None:
        for _ in range(frames):
            frame = base64.b64encode(caller_frame(7, self.frames, speech)).decode()
            self.frames += 1
            await self.ws.send(realtime.audio_append(frame))


def of(kind: str, **fields: Any) -> Callable[[Event], bool]:
    return lambda ev: ev["type"] == kind and all(ev.get(k) == v for k, v in fields.items())


def test_every_event_the_bench_fake_sends_is_a_valid_ga_server_event() -> None:
    assert realtime_schema.ENABLED
    # A short greeting that finishes; answers long enough (2 s, real time) to interrupt.
    options = Options(greeting_ms=100, answer_ms=(2000, 2000), delta_ms=20, speedup=1.0, think_ms=0)
    agent = realtime.AgentConfig(instructions="Bench.", model="gpt-realtime", vad_silence_ms=100)
    fake = LeanRealtimeFake(options)

    async def scenario() -> Recorder:
        async with (
            serve(fake.handle, "127.0.0.1", 0, process_request=fake.process_request) as server,
        ):
            port = server.sockets[0].getsockname()[1]
            url = f"ws://127.0.0.1:{port}/v1/realtime?model=gpt-realtime"
            headers = {"Authorization": "Bearer sk-bench"}
            async with connect(url, additional_headers=headers, proxy=None, max_queue=None) as ws:
                c = Recorder(ws)
                await c.until(of("session.created"))
                await ws.send(realtime.dumps(realtime.session_update(agent)))
                await c.until(of("session.updated"))
                # The greeting plays out; its item is truncated; items are added.
                await ws.send(realtime.response_create(realtime.greeting_instructions("Hi.")))
                greeting = await c.until(of("response.done"))
                item_id = greeting["response"]["output"][0]["id"]
                await ws.send(realtime.truncate(item_id, 40))
                await c.until(of("conversation.item.truncated"))
                await ws.send(realtime.text_item("The caller is a VIP.", role="system"))
                await c.until(of("conversation.item.done"))
                await ws.send(realtime.function_output("call_1", '{"ok": true}'))
                await c.until(of("conversation.item.done"))
                await ws.send(realtime.response_cancel())
                await c.until(of("error"))
                await ws.send('{"type":"output_audio_buffer.clear"}')  # WebRTC/SIP only
                await c.until(of("error"))
                # The caller speaks; the answer starts and is interrupted by more speech.
                await c.speak(True, 3)
                await c.speak(False, 5)
                await c.until(of("response.output_audio.delta"))
                await c.speak(True)
                await c.until(of("response.done"))
                # A second answer, cancelled by the client.
                await c.speak(False, 5)
                await c.until(of("response.output_audio.delta"))
                await ws.send(realtime.response_cancel())
                await c.until(of("response.done"))
                await c.until(of("conversation.item.input_audio_transcription.completed"))
                return c

    c = asyncio.run(scenario())
    assert c.problems == []
    statuses = [
        (ev["response"]["status"], (ev["response"]["status_details"] or {}).get("reason"))
        for ev in c.events
        if ev["type"] == "response.done"
    ]
    assert statuses == [
        ("completed", None),
        ("cancelled", "turn_detected"),
        ("cancelled", "client_cancelled"),
    ]
    sent = {ev["type"] for ev in c.events}
    expected = {
        "session.created",
        "session.updated",
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
        "conversation.item.truncated",
        "conversation.item.done",
        "error",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.completed",
    }
    assert expected <= sent, f"not exercised: {sorted(expected - sent)}"
