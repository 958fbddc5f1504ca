"""The OpenAI Realtime stand-in: scripts from JSON, speech or tones, served over a real socket."""

from __future__ import annotations

import asyncio
import io
import json
import math
import socket
import struct
import wave

import pytest
from django.core.management import CommandError, call_command
from websockets.asyncio.client import connect

from calls.fakes import mulaw, standin, wav

needs_espeak = pytest.mark.skipif(not standin.espeak_available(), reason="espeak-ng is not installed")


def write_tone_wav(path, *, rate=16000, seconds=0.5):
    samples = [round(8000 * math.sin(2 * math.pi * 500 * n / rate)) for n in range(int(rate * seconds))]
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(struct.pack(f"<{len(samples)}h", *samples))
    path.write_bytes(out.getvalue())
    return path


def test_replies_are_text_or_objects_with_audio_and_function_calls(tmp_path):
    write_tone_wav(tmp_path / "hours.wav")
    script = standin.script_from_data(
        {
            "replies": [
                "Hello there.",
                {"transcript": "We open at nine.", "audio": "hours.wav"},
                {"transcript": "Goodbye!", "function_call": {"name": "end_call", "arguments": {"x": 1}}},
            ],
            "caller_transcripts": ["When do you open?"],
            "vad_threshold_rms": 300,
        },
        speech="tones",
        base_dir=tmp_path,
    )
    hello, hours, goodbye = script.replies
    assert (hello.transcript, hello.audio) == ("Hello there.", None)  # a tone, rendered by the fake
    assert hours.audio == wav.wav_to_mulaw(tmp_path / "hours.wav")
    assert len(hours.audio) == 4000  # 0.5 s at 8 kHz
    assert goodbye.function_call == ("end_call", {"x": 1})
    assert script.caller_transcripts == ["When do you open?"]
    assert script.vad_threshold_rms == 300.0


def test_the_built_in_script_greets_answers_and_says_goodbye():
    script = standin.load_script(None, speech="tones")
    assert [r.transcript for r in script.replies] == standin.BUILTIN_SCRIPT["replies"]
    assert script.caller_transcripts == standin.BUILTIN_SCRIPT["caller_transcripts"]
    assert all(r.audio is None for r in script.replies)  # tones: the fake renders them


def test_a_script_file_is_read_with_audio_relative_to_it(tmp_path):
    folder = tmp_path / "scripts"
    folder.mkdir()
    write_tone_wav(folder / "hi.wav", rate=44100, seconds=0.25)
    path = folder / "agent.json"
    path.write_text(json.dumps({"replies": [{"transcript": "Hi.", "audio": "hi.wav"}]}))
    [reply] = standin.load_script(path, speech="tones").replies
    assert len(reply.audio) == 2000


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "a JSON object"),
        ({"replies": "hello"}, "'replies' must be a list"),
        ({"replies": [], "voice": "marin"}, "unknown script keys"),
        ({"replies": [{"text": "hi"}]}, r"replies\[0\]: unknown keys"),
        ({"replies": [{"transcript": "hi", "audio": "missing.wav"}]}, r"replies\[0\].audio: cannot use"),
        ({"replies": [{"function_call": {"arguments": {}}}]}, "function_call must be"),
        ({"caller_transcripts": [1]}, "list of strings"),
    ],
)
def test_bad_scripts_say_what_to_fix(tmp_path, data, message):
    with pytest.raises(standin.ScriptError, match=message):
        standin.script_from_data(data, speech="tones", base_dir=tmp_path)


def test_unreadable_script_files_are_refused(tmp_path):
    with pytest.raises(standin.ScriptError, match="cannot read"):
        standin.load_script(tmp_path / "nope.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{replies: [")
    with pytest.raises(standin.ScriptError, match="not valid JSON"):
        standin.load_script(broken)


def test_asking_for_speech_without_espeak_is_refused_and_auto_falls_back_to_tones(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no espeak-ng on this PATH
    with pytest.raises(standin.ScriptError, match="espeak-ng is not installed"):
        standin.load_script(None, speech="espeak")
    assert all(r.audio is None for r in standin.load_script(None, speech="auto").replies)


@needs_espeak
def test_espeak_speech_is_8_khz_mu_law_loud_enough_for_voice_activity_detection():
    audio = standin.text_to_speech("What time are you open today?")
    assert 0.8 < len(audio) / 8000 < 4  # a short sentence
    frames = [audio[i : i + 160] for i in range(0, len(audio) - 159, 160)]
    assert sum(mulaw.rms(frame) > 500 for frame in frames) > len(frames) // 3
    [reply] = standin.script_from_data({"replies": ["Hello."]}, speech="espeak").replies
    assert reply.audio and len(reply.audio) > 2000


def test_serve_speaks_the_realtime_protocol_on_a_real_socket():
    async def scenario():
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(
            standin.serve(
                standin.load_script(None, speech="tones"), port=0, api_key="sk-x", ready=ready.set_result
            )
        )
        url = await asyncio.wait_for(ready, 10)
        async with connect(
            f"{url}?model=gpt-realtime", additional_headers={"Authorization": "Bearer sk-x"}
        ) as ws:
            created = json.loads(await ws.recv())
        async with connect(url, additional_headers={"Authorization": "Bearer wrong"}) as ws:
            refused = json.loads(await ws.recv())
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return url, created, refused

    url, created, refused = asyncio.run(scenario())
    assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1/realtime")
    assert created["type"] == "session.created"
    assert refused["error"]["code"] == "invalid_api_key"


def test_the_command_prints_its_built_in_script_as_a_starting_point():
    out = io.StringIO()
    call_command("realtime_standin", "--print-script", stdout=out)
    assert json.loads(out.getvalue()) == standin.BUILTIN_SCRIPT


def test_the_command_explains_a_port_in_use():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(CommandError, match=f"Cannot listen on 127.0.0.1:{port}.*--port"):
            call_command("realtime_standin", "--port", str(port), "--speech", "tones", stdout=io.StringIO())
