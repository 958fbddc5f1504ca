"""Trying it without a phone, end to end over real sockets: ``simulate_call`` against a running
server, ``realtime_standin`` as the model, and the offline ``demo_call``."""

from __future__ import annotations

import importlib
import io
import json
import math
import os
import socket
import struct
import subprocess
import sys
import time
import wave
from io import StringIO

import pytest
from django.apps import apps as django_apps
from django.core.management import CommandError, call_command
from django.db import connection

from calls import simulation
from calls.fakes import standin, wav
from calls.fakes.openai_realtime import Reply, Script
from calls.models import Agent, AnalysisStatus, Call, CallAnalysis, CallStatus, EndedReason, Role
from tests.conftest import AUTH_TOKEN
from tests.servers import ROOT, database_url, free_port, start_asgi_server
from tests.waiting import wait_until

# What a fresh install's migrations give the default agent: its analysis plan.
default_analysis_plan = importlib.import_module("calls.migrations.0009_default_analysis_plan")

pytestmark = pytest.mark.e2e

DEFAULT_GREETING = "Hello! Thanks for calling. How can I help you today?"


def speech_wav(path, *, rate=44100, channels=2, seconds=0.6):
    """A stereo 44.1 kHz WAV of a tone loud enough for the fake's voice activity detection."""
    tone = [round(9000 * math.sin(2 * math.pi * 300 * n / rate)) for n in range(int(rate * seconds))]
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(struct.pack(f"<{len(tone) * channels}h", *(s for s in tone for _ in range(channels))))
    path.write_bytes(out.getvalue())
    return path


def conversation(call: Call) -> list[tuple[str, str]]:
    return [(t.role, t.text) for t in call.turns.order_by("position")]


def simulate(*args: str) -> str:
    out = StringIO()
    call_command("simulate_call", *args, stdout=out)
    return out.getvalue()


def test_simulated_call_is_reported_recorded_and_stored(live, fake_openai, tmp_path):
    Agent.objects.update(greeting="Hello, you reached the test line.")
    greeting = Reply(transcript="Hello, you reached the test line.")
    answer = Reply(transcript="We open at nine.")
    fake_openai.set_script(Script(replies=[greeting, answer], caller_transcripts=["When do you open?"]))
    sessions_before = len(fake_openai.sessions)
    say = speech_wav(tmp_path / "question.wav")
    recording = tmp_path / "heard.wav"

    text = simulate(
        "--server", live.url, "--say", str(say), "--hang-up-after-agent", "--record", str(recording)
    )

    call = Call.objects.get()
    assert conversation(call) == [
        (Role.AGENT, "Hello, you reached the test line."),
        (Role.CALLER, "When do you open?"),
        (Role.AGENT, "We open at nine."),
    ]
    # The stream ended with the caller's stop, then the signed status callback completed the call.
    assert (call.status, call.ended_reason) == (CallStatus.COMPLETED, EndedReason.CALLER_HUNG_UP)
    assert call.duration_seconds is not None and call.usage.get("output_tokens", 0) > 0, call.usage
    assert text.count("agent: speaking") == 2
    assert "caller: speaking 0.60 s (question.wav)" in text
    assert "server closed the stream: 1000 (normal close)" in text
    assert "Status callback POST /call-status (completed): HTTP 200" in text
    assert "Caller: When do you open?" in text
    assert text.rstrip().endswith(f"Admin: {live.url}/admin/calls/call/{call.pk}/change/")
    # What the caller said reached the model as converted line audio ...
    said = wav.wav_to_mulaw(say)
    assert said in bytes(fake_openai.sessions[sessions_before].input_audio)
    # ... and the recording is what the caller heard, in order, with the pause between.
    with wave.open(str(recording)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
    heard = wav.wav_to_mulaw(recording)
    first = heard.find(greeting.render_audio())
    second = heard.find(answer.render_audio())
    assert first >= 0 and first + len(greeting.render_audio()) + 8000 < second  # a second's pause at least


def test_the_agent_ending_the_call_is_reported(live, fake_openai):
    goodbye = "Sorry, we are closed. Goodbye!"
    Agent.objects.update(greeting=goodbye, tools=["end_call"])
    fake_openai.set_script(Script(replies=[Reply(transcript=goodbye, function_call=("end_call", {}))]))

    text = simulate("--server", live.url, "--duration", "20")

    assert "server closed the stream: 1000" in text
    assert "caller: hanging up" not in text
    assert Call.objects.get().ended_reason == EndedReason.AGENT_ENDED


def test_the_caller_hangs_up_at_the_duration_limit(live, fake_openai):
    fake_openai.set_script(Script(replies=[]))

    text = simulate("--server", live.url, "--silence", "0.5", "--duration", "1.5")

    assert "caller: --duration 1.5 s reached" in text
    assert "caller: hanging up (stop)" in text
    call = Call.objects.get()
    assert (call.status, call.ended_reason) == (CallStatus.COMPLETED, EndedReason.CALLER_HUNG_UP)


def test_a_server_that_is_not_running_is_explained():
    port = free_port()
    with pytest.raises(CommandError, match=rf"Cannot reach the server at http://127.0.0.1:{port} .*make run"):
        simulate("--server", f"http://127.0.0.1:{port}")


@pytest.mark.parametrize("mismatch", ["auth token", "public base URL"])
def test_a_refused_signature_explains_what_must_match(live, settings, mismatch):
    args = ["--server", live.url]
    if mismatch == "auth token":
        settings.TWILIO_AUTH_TOKEN = "not-the-servers-token"
    else:
        args += ["--public-base-url", "https://somewhere-else.example"]
    with pytest.raises(CommandError) as refused:
        simulate(*args)
    message = str(refused.value)
    assert "HTTP 403" in message and "/incoming-call" in message
    assert "PUBLIC_BASE_URL" in message and "TWILIO_AUTH_TOKEN" in message
    assert not Call.objects.exists()


def test_a_call_the_local_database_does_not_have_points_to_the_servers_admin(db):
    [line] = simulation.call_report("CA" + "9" * 32, "https://voice.example.com")
    assert "not in this project's database" in line
    assert line.endswith("https://voice.example.com/admin/calls/call/?q=CA" + "9" * 32 + ")")


def _wait_for_port(process: subprocess.Popen[bytes], port: int) -> None:
    def listening() -> bool:
        assert process.poll() is None, process.communicate()[0].decode()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return False
        return True

    wait_until(listening, 30, f"something listening on {port}")  # start-up only


def test_realtime_standin_command_answers_a_simulated_call_from_its_script(
    transactional_db, settings, tmp_path
):
    Agent.objects.update_or_create(
        phone_number="", defaults={"name": "Default agent", "instructions": "Be brief.", "greeting": "Hi."}
    )
    answer = speech_wav(tmp_path / "answer.wav", rate=16000, channels=1, seconds=0.8)
    script = {
        "replies": ["Hi.", {"transcript": "Nine to five.", "audio": "answer.wav"}],
        "caller_transcripts": ["Opening hours?"],
    }
    (tmp_path / "script.json").write_text(json.dumps(script))
    port, key = free_port(), "sk-standin-test"
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    model = subprocess.Popen(
        [sys.executable, "manage.py", "realtime_standin", "--port", str(port), "--api-key", key,
         "--speech", "tones", "--script", str(tmp_path / "script.json")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    server = None
    try:
        _wait_for_port(model, port)
        server = start_asgi_server(
            {
                "DATABASE_URL": database_url(connection.settings_dict),
                "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
                "OPENAI_API_KEY": key,
                "OPENAI_REALTIME_URL": f"ws://127.0.0.1:{port}/v1/realtime",
                "TWILIO_ACCOUNT_SID": "",
                "TWILIO_API_BASE_URL": "http://127.0.0.1:9",
                "DEBUG": "false",
                "SECRET_KEY": "e2e-secret-key-not-for-production",
            },
            tmp_path / "server.log",
        )
        settings.PUBLIC_BASE_URL = server.url
        question = speech_wav(tmp_path / "q.wav")
        text = simulate(
            "--server", server.url, "--say", str(question), "--hang-up-after-agent",
            "--record", str(tmp_path / "heard.wav"),
        )  # fmt: skip
    finally:
        if server is not None:
            server.stop()
        model.terminate()
        printed = model.communicate(timeout=10)[0].decode()
    assert f"OPENAI_REALTIME_URL=ws://127.0.0.1:{port}/v1/realtime" in printed
    assert "it accepts the key given with --api-key" in printed and key not in printed
    call = Call.objects.get()
    assert conversation(call) == [
        (Role.AGENT, "Hi."),
        (Role.CALLER, "Opening hours?"),
        (Role.AGENT, "Nine to five."),
    ]
    assert "Agent: Nine to five." in text
    assert wav.wav_to_mulaw(answer) in wav.wav_to_mulaw(tmp_path / "heard.wav")  # the scripted audio


def test_demo_call_leaves_a_complete_call_in_the_database(transactional_db):
    Agent.objects.update_or_create(  # what the migrations create on a fresh install
        phone_number="",
        defaults={"name": "Default agent", "instructions": "Be brief.", "greeting": DEFAULT_GREETING},
    )
    default_analysis_plan.create_plan(django_apps, None)
    out = StringIO()
    began = time.monotonic()
    call_command("demo_call", stdout=out)
    seconds = time.monotonic() - began

    text = out.getvalue()
    call = Call.objects.get()
    replies, callers = standin.BUILTIN_SCRIPT["replies"], standin.BUILTIN_SCRIPT["caller_transcripts"]
    assert conversation(call) == [
        (Role.AGENT, replies[0]),
        (Role.CALLER, callers[0]),
        (Role.AGENT, replies[1]),
    ]
    assert (call.status, call.ended_reason) == (CallStatus.COMPLETED, EndedReason.CALLER_HUNG_UP)
    assert call.usage["input_tokens"] > 0 and call.usage["output_tokens"] > 0
    assert f"Admin: http://localhost:8000/admin/calls/call/{call.pk}/change/" in text
    assert "Demo call finished in" in text and "make run" in text
    assert seconds < 60
    # The analysis the call's end queued, run against the offline Responses fake and printed.
    analysis = CallAnalysis.objects.get(call=call)
    assert analysis.status == AnalysisStatus.DONE, analysis.error
    assert "Analysis (plan v1, offline stand-in of the Responses API):" in text
    assert f"  Summary: {analysis.summary}" in text and analysis.summary
    assert f"  Verdict: {'success' if analysis.success else 'failed'}: {analysis.reason}" in text
    for name in ("caller_name", "topic", "callback_requested", "callback_number"):
        assert f"  {name}: " in text
