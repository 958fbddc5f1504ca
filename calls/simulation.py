"""Phone calls without a phone: a simulated caller against a running server, and the offline demo.

``simulate`` plays Twilio's part of one call exactly as Twilio would (signed webhook, TwiML,
signed Media Stream, a live line that sends 20 ms frames, real-time playback that echoes
marks and honours ``clear``, then the signed status callback) with ``SimulatedCaller``, and
reports what the caller hears as it happens. ``run_demo`` starts the OpenAI stand-in and our
server (daphne) on this machine, places one simulated call through them and stops them: the
phone network and the model are simulated; our server, the bridge and the database are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from functools import partial
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.db import DatabaseError, connection

from calls import analysis_jobs, analysis_model
from calls.fakes import standin, wav
from calls.fakes.openai_responses import FakeResponsesServer
from calls.fakes.phone import AgentTurn, Line, Listener, Write, stamp
from calls.fakes.twilio_caller import (
    CallerConfig,
    SimulatedCaller,
    StreamClosed,
    StreamRejected,
    mulaw_tone,
    twilio_signature,
)
from calls.models import AnalysisStatus, Call, CallAnalysis, Turn
from calls.processes import stop_process, wait_for_port

GREETING_WAIT = 3.0  # seconds a caller waits for a greeting before speaking first
CLOSE_WAIT = 15.0  # seconds the server gets to finalise the call after our `stop`
CLOSE_CODES = {
    1000: "normal close",
    4400: "unexpected stream",
    4403: "refused: bad or expired stream token",
    4408: "no start in time",
    4500: "the call failed; its error is stored on the call",
}
DEMO_UTTERANCE = "What time are you open today?"
MAKE_RUN_ADMIN = "http://localhost:8000"


class SimulationError(Exception):
    """The call could not be placed; the message says why and what to check."""


@dataclass
class SimulationOptions:
    server: str  # where the server really listens
    public_base_url: str  # its PUBLIC_BASE_URL: what Twilio signs
    auth_token: str  # TWILIO_AUTH_TOKEN; empty: unsigned requests
    from_number: str = "+15550001111"
    to_number: str = "+15552223333"
    say: bytes | None = None  # what the caller says, 8 kHz mu-law
    say_label: str = ""
    # Several turns instead (agent tests' audio mode): each said once the agent has answered
    # the one before; (audio, label).
    utterances: list[tuple[bytes, str]] = field(default_factory=list)
    silence: float = 3.0  # seconds the caller stays silent instead, without `say`
    duration: float = 30.0  # the longest the call may last, from the stream's start
    hang_up_after_agent: bool = False
    record: Path | None = None
    verbosity: int = 1


@dataclass
class SimulationResult:
    call_sid: str
    turns: list[AgentTurn] = field(default_factory=list)
    close_code: int | None = None
    ended_by: str = ""  # "caller", "server" or "time limit"
    status_callback: int | None = None  # HTTP status of /call-status


async def simulate(options: SimulationOptions, write: Write) -> SimulationResult:
    """Place one simulated call against a running server and report it as it happens."""
    sign = bool(options.auth_token)
    if not sign:
        write(
            "TWILIO_AUTH_TOKEN is not set: sending unsigned requests (refused unless the server "
            "runs with TWILIO_VALIDATE_SIGNATURES=false)."
        )
    config = CallerConfig(
        base_url=options.server.rstrip("/"),
        public_base_url=options.public_base_url.rstrip("/"),
        auth_token=options.auth_token,
        from_number=options.from_number,
        to_number=options.to_number,
        sign=sign,
    )
    caller = SimulatedCaller(config)
    result = SimulationResult(call_sid=caller.call_sid)
    write(
        f"Calling {options.to_number} from {options.from_number} through {config.base_url} "
        f"(call {caller.call_sid})."
    )
    try:
        await _dial(caller, options)
        write(f"{stamp(caller)} connected: Media Stream open, start sent")
        await _converse(caller, options, write, result)
    finally:
        await caller.aclose()
    if options.record is not None:
        wav.mulaw_to_wav(options.record, heard_timeline(caller))
        write(f"Recorded what the caller heard to {options.record}.")
    result.status_callback = await _post_status(caller, options, write)
    return result


def _refused(what: str, options: SimulationOptions) -> SimulationError:
    token = "TWILIO_AUTH_TOKEN" if options.auth_token else "TWILIO_AUTH_TOKEN (not set here)"
    return SimulationError(
        f"The server refused the signature on {what} (HTTP 403). The simulated caller signs like "
        f"Twilio, with {token} over URLs built from PUBLIC_BASE_URL={options.public_base_url}. "
        "Both must match the server's own settings: use the server's PUBLIC_BASE_URL "
        "(--public-base-url) and the same TWILIO_AUTH_TOKEN (environment or .env)."
    )


async def _dial(caller: SimulatedCaller, options: SimulationOptions) -> None:
    try:
        webhook = await caller.post_webhook()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SimulationError(
            f"Cannot reach the server at {options.server} ({reason}). Is it running? Start it with "
            "`make run`, or pass its address with --server."
        ) from exc
    if webhook.status == 403:
        raise _refused("POST /incoming-call", options)
    if webhook.status != 200:
        raise SimulationError(f"POST /incoming-call answered HTTP {webhook.status}: {webhook.body[:300]}")
    if webhook.twiml_error or webhook.stream_url is None:
        raise SimulationError(
            "The server answered without <Connect><Stream> "
            f"({webhook.twiml_error or 'verbs: ' + ', '.join(webhook.verbs)}): {webhook.body[:300]}"
        )
    try:
        await caller.connect_stream()
    except StreamRejected as exc:
        if exc.status == 403:
            raise _refused(f"the Media Stream socket {webhook.stream_url}", options) from exc
        raise SimulationError(f"The Media Stream socket was refused: HTTP {exc.status}") from exc
    except OSError as exc:
        raise SimulationError(f"Cannot open the Media Stream socket: {exc}") from exc


async def _converse(
    caller: SimulatedCaller, options: SimulationOptions, write: Write, result: SimulationResult
) -> None:
    listener = Listener(caller, write, options.verbosity)
    line = Line(caller)
    tasks = [asyncio.create_task(listener.run()), asyncio.create_task(line.run())]

    async def script() -> None:
        # 1. A greeting, if the agent has one.
        if await listener.changed.wait_until(lambda: bool(listener.current or listener.turns), GREETING_WAIT):
            await listener.changed.wait_until(lambda: listener.current is None)
        # 2. The caller's turn (or turns, each once the agent has answered the one before).
        began = time.monotonic()
        spoken = options.utterances or ([(options.say, options.say_label)] if options.say is not None else [])
        for n, (audio, label) in enumerate(spoken):
            if n:
                await listener.changed.wait_until(partial(listener.finished_since, began))
                await listener.changed.wait_until(lambda: listener.current is None)
                began = time.monotonic()
            write(f"{stamp(caller)} caller: speaking {len(audio) / 8000:.2f} s ({label})")
            await line.say(audio)
            write(f"{stamp(caller)} caller: done speaking, listening")
        if not spoken:
            write(f"{stamp(caller)} caller: silent for {options.silence:.1f} s")
            await asyncio.sleep(options.silence)  # the caller's silence lasts this long
        # 3. The answer; then hang up, or stay on the line until the agent or the time limit ends it.
        if options.hang_up_after_agent:
            await listener.changed.wait_until(lambda: listener.finished_since(began))
            return
        await asyncio.Event().wait()

    talk = asyncio.create_task(script())
    server_closed = asyncio.create_task(caller.wait_for(lambda: caller.closed_by_server is not None, None))
    try:
        done, _ = await asyncio.wait(
            {talk, server_closed}, timeout=options.duration, return_when=asyncio.FIRST_COMPLETED
        )
        if server_closed in done:
            result.ended_by = "server"
        else:
            result.ended_by = "caller" if talk in done else "time limit"
            if result.ended_by == "time limit":
                write(f"{stamp(caller)} caller: --duration {options.duration:g} s reached")
            await _cancel(talk, tasks[1])  # the caller stops talking, then hangs up
            write(f"{stamp(caller)} caller: hanging up (stop)")
            await _send_stop(caller)
            with contextlib.suppress(TimeoutError):
                await caller.wait_closed_by_server(timeout=CLOSE_WAIT)
        result.close_code = code = caller.close_code
        if caller.closed_by_server is None:
            write(f"{stamp(caller)} the server did not close the stream within {CLOSE_WAIT:g} s")
        else:
            meaning = CLOSE_CODES.get(code or 0, "no close frame" if code is None else "")
            write(f"{stamp(caller)} server closed the stream: {code} ({meaning})")
            await tasks[0]  # the listener returns once it has seen the close
    finally:
        await _cancel(talk, server_closed, *tasks)
    result.turns = listener.turns
    problem = None if talk.cancelled() else talk.exception()
    if problem is not None and not isinstance(problem, StreamClosed):
        raise problem


async def _cancel(*tasks: asyncio.Task[Any]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _send_stop(caller: SimulatedCaller) -> None:
    """Twilio's ``stop`` when the caller hangs up; the server finalises the call, then closes."""
    sequence = sum(1 for m in caller.sent_messages if "sequenceNumber" in m) + 1
    stop = {
        "event": "stop",
        "sequenceNumber": str(sequence),
        "stop": {"accountSid": caller.config.account_sid, "callSid": caller.call_sid},
        "streamSid": caller.stream_sid,
    }
    with contextlib.suppress(StreamClosed):
        await caller.send_raw(json.dumps(stop, separators=(",", ":")))


def heard_timeline(caller: SimulatedCaller) -> bytes:
    """What the caller heard, as one mu-law track from the stream's start: silence between turns."""
    t0 = caller.stream_started_at
    track = bytearray()
    for segment in caller.heard_segments:
        if t0 is not None:  # 0xFF is mu-law silence
            track += b"\xff" * max(0, int((segment.start - t0) * 8000) - len(track))
        track += segment.audio
    return bytes(track)


async def _post_status(caller: SimulatedCaller, options: SimulationOptions, write: Write) -> int | None:
    """The status callback Twilio posts when the call completes (the number's "call status
    changes" webhook): status and duration come from Twilio, not from the stream."""
    started = caller.stream_started_at or time.monotonic()
    params = caller.webhook_params() | {
        "CallStatus": "completed",
        "CallDuration": str(max(0, round(time.monotonic() - started))),
        "Timestamp": format_datetime(datetime.now(UTC), usegmt=True),
        "SequenceNumber": "0",
        "CallbackSource": "call-progress-events",
    }
    path = "/call-status"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    if options.auth_token:
        headers["X-Twilio-Signature"] = twilio_signature(
            options.auth_token, options.public_base_url.rstrip("/") + path, params
        )
    status = await asyncio.to_thread(
        _post, options.server.rstrip("/") + path, urllib.parse.urlencode(params).encode(), headers
    )
    write(f"Status callback POST {path} (completed): HTTP {status if status is not None else 'failed'}")
    return status


def _post(url: str, body: bytes, headers: dict[str, str]) -> int | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, body, headers, method="POST"), timeout=15) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


def admin_url(base_url: str, call: Call) -> str:
    return f"{base_url.rstrip('/')}/admin/calls/call/{call.pk}/change/"


def call_report(call_sid: str, admin_base_url: str) -> list[str]:
    """The call as the server stored it, read from this project's database if it can be."""
    try:
        call = Call.objects.select_related("agent").filter(call_sid=call_sid).first()
        turns = list(call.turns.order_by("position")) if call else []
        tool_calls = list(call.tool_calls.order_by("position")) if call else []
    except DatabaseError as exc:
        return [
            f"(Could not read the call from this project's database ({exc.__class__.__name__}). "
            f"Find it in the server's admin: {admin_base_url.rstrip('/')}/admin/calls/call/?q={call_sid})"
        ]
    if call is None:
        return [
            f"(Call {call_sid} is not in this project's database: the server uses another one. "
            f"Find it at {admin_base_url.rstrip('/')}/admin/calls/call/?q={call_sid})"
        ]
    usage = call.usage or {}
    lines = [
        f"Call {call.call_sid}: {call.get_status_display()}, "
        f"{call.get_ended_reason_display() or 'not ended'}, {call.duration_seconds} s, "
        f"agent {call.agent or '-'}, model {call.model or '-'}",
        f"Tokens: {usage.get('input_tokens', 0)} in, {usage.get('output_tokens', 0)} out"
        + (f"; error: {call.error}" if call.error else ""),
        "Conversation:",
    ]
    entries = [(t.position, _turn_line(t)) for t in turns] + [
        (t.position, f"  [tool] {t.name}({json.dumps(t.arguments)}) -> {t.error or json.dumps(t.result)}")
        for t in tool_calls
    ]
    lines += [text for _, text in sorted(entries, key=lambda e: e[0])] or ["  (no turns)"]
    lines.append(f"Admin: {admin_url(admin_base_url, call)}")
    return lines


def _turn_line(turn: Turn) -> str:
    note = f" [interrupted: {turn.heard_ms} ms heard]" if turn.interrupted else ""
    return f"  {turn.get_role_display()}: {turn.text or '(no transcript)'}{note}"


# --- the offline demo ----------------------------------------------------------------------


@dataclass
class DemoResult:
    call_sid: str
    seconds: float
    report: list[str]  # the call as stored


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def database_url(settings_dict: dict[str, Any]) -> str:
    """The URL of the database this process uses, for the server it starts."""
    engine = settings_dict["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    if engine.endswith("postgresql"):
        quote = urllib.parse.quote
        user = quote(settings_dict.get("USER") or "", safe="")
        password = f":{quote(settings_dict['PASSWORD'], safe='')}" if settings_dict.get("PASSWORD") else ""
        port = f":{settings_dict['PORT']}" if settings_dict.get("PORT") else ""
        host = settings_dict.get("HOST") or "127.0.0.1"
        return f"postgres://{user}{password}{'@' if user else ''}{host}{port}/{settings_dict['NAME']}"
    raise SimulationError(f"the demo cannot hand a {engine} database to the server it starts")


@dataclass
class _Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self) -> None:
        stop_process(self.process)


def _start(name: str, command: list[str], env: dict[str, str], port: int, logs: Path) -> _Service:
    log = logs / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=settings.BASE_DIR, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    service = _Service(name, process, log)
    wait_for_port(process, port, timeout=30, name=name, log=service.tail, error=SimulationError)
    return service


@contextlib.contextmanager
def _services(
    env: dict[str, str],
    speech: standin.Speech,
    write: Write,
    *,
    script: Path | None = None,
    model: bool = True,
) -> Iterator[tuple[str, str]]:
    """The stand-in (with ``script``, or its built-in one; none with ``model=False``: the
    server reaches env's OPENAI_REALTIME_URL) and our server, on free local ports; yields
    (server URL, the model's URL)."""
    standin_port, server_port = free_port(), free_port()
    started: list[_Service] = []
    with tempfile.TemporaryDirectory(prefix="voiceagent-demo-") as logs:
        try:
            manage = str(Path(settings.BASE_DIR) / "manage.py")
            standin_url = env.get("OPENAI_REALTIME_URL", "")
            if model:
                command = [sys.executable, manage, "realtime_standin", "--port", str(standin_port),
                           "--api-key", env["OPENAI_API_KEY"], "--speech", speech]  # fmt: skip
                command += ["--script", str(script)] if script is not None else []
                started.append(_start("realtime_standin", command, env, standin_port, Path(logs)))
                standin_url = f"ws://127.0.0.1:{standin_port}/v1/realtime"
                write(f"OpenAI Realtime stand-in: {standin_url}")
            server_url = f"http://127.0.0.1:{server_port}"
            env = env | {"OPENAI_REALTIME_URL": standin_url, "PUBLIC_BASE_URL": server_url}
            server = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(server_port),
                      "voiceagent.asgi:application"]  # fmt: skip
            started.append(_start("daphne", server, env, server_port, Path(logs)))
            write(f"Server (daphne, our ASGI app): {server_url}")
            yield server_url, standin_url
        except Exception:
            for service in started:
                write(f"--- {service.name} log (last lines) ---\n{service.tail()}")
            raise
        finally:
            for service in reversed(started):
                service.stop()


def demo_audio(speech: standin.Speech) -> tuple[bytes, str]:
    """What the demo caller says: espeak-ng speech when available, else a tone that passes for it."""
    if standin.use_espeak(speech):
        return standin.text_to_speech(DEMO_UTTERANCE), f'"{DEMO_UTTERANCE}", espeak-ng'
    return mulaw_tone(1500, freq=300, amplitude=9000), "a 1.5 s tone standing in for speech"


def local_server_env(auth_token: str) -> dict[str, str]:
    """Our server on this machine's database, for one simulated caller that shares its token;
    the model is the stand-in (OPENAI_REALTIME_URL is set when the services start)."""
    return {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"} | {
        "DATABASE_URL": database_url(connection.settings_dict),
        "OPENAI_API_KEY": standin.LOCAL_API_KEY,
        "TWILIO_AUTH_TOKEN": auth_token,
        "TWILIO_VALIDATE_SIGNATURES": "true",
        "TWILIO_ACCOUNT_SID": "",  # no Twilio REST calls: nothing leaves the machine
        "TWILIO_API_BASE_URL": "http://127.0.0.1:9",
        "REDIS_URL": "",
    }


def call_through_bridge(
    *,
    to_number: str,
    caller_turns: list[str],
    replies: list[Any] | None,
    write: Write,
    duration: float = 120.0,
) -> str:
    """One phone call through our real server and bridge, the simulated caller speaking each
    turn (espeak-ng) once the agent has answered the one before, then hanging up; the model
    is the stand-in answering ``replies`` (and reporting ``caller_turns`` as the caller's
    transcripts), or, with ``replies=None``, the configured Realtime API. Returns the Call
    SID once the call's row is closed (agent tests' audio mode)."""
    if not standin.espeak_available():
        raise SimulationError(
            "the audio mode speaks the caller's turns with espeak-ng: apt-get install espeak-ng"
        )
    auth_token = secrets.token_hex(16)
    env = local_server_env(auth_token)
    if replies is None:
        env |= {
            "OPENAI_API_KEY": settings.OPENAI_API_KEY,
            "OPENAI_REALTIME_URL": settings.OPENAI_REALTIME_URL,
        }
    utterances = [(standin.text_to_speech(turn), turn) for turn in caller_turns]
    with tempfile.TemporaryDirectory(prefix="voiceagent-audio-test-") as folder:
        script = Path(folder) / "script.json"
        script.write_text(json.dumps({"replies": replies or [], "caller_transcripts": caller_turns}))
        with _services(env, "espeak", write, script=script, model=replies is not None) as (server_url, _):
            options = SimulationOptions(
                server=server_url,
                public_base_url=server_url,
                auth_token=auth_token,
                to_number=to_number or "+15552223333",
                utterances=utterances,
                duration=duration,
                hang_up_after_agent=True,
                verbosity=0,
            )
            result = asyncio.run(simulate(options, write))
            # The server closes the call's row in its own process once the stream has ended.
            deadline = time.monotonic() + 15
            while not Call.objects.filter(call_sid=result.call_sid, ended_at__isnull=False).exists():
                if time.monotonic() > deadline:
                    raise SimulationError(f"the server did not close call {result.call_sid}")
                time.sleep(0.1)
    return result.call_sid


def run_demo(write: Write, *, speech: standin.Speech = "auto", verbosity: int = 1) -> DemoResult:
    """Migrate, start the stand-in and the server, place one simulated call, stop them."""
    began = time.monotonic()
    call_command("migrate", interactive=False, verbosity=0)
    write("Database migrated.")
    auth_token = secrets.token_hex(16)  # this demo's own: the server and the caller share it
    env = local_server_env(auth_token)
    say, label = demo_audio(speech)
    with _services(env, speech, write) as (server_url, _):
        options = SimulationOptions(
            server=server_url,
            public_base_url=server_url,
            auth_token=auth_token,
            say=say,
            say_label=label,
            duration=60,
            hang_up_after_agent=True,
            verbosity=verbosity,
        )
        result = asyncio.run(simulate(options, write))
    report = call_report(result.call_sid, MAKE_RUN_ADMIN)
    analysed = demo_analysis(result.call_sid)
    return DemoResult(result.call_sid, time.monotonic() - began, report[:-1] + analysed + report[-1:])


def demo_analysis(call_sid: str) -> list[str]:
    """Run the analysis the call's end queued, against the offline fake of the Responses API
    (whatever key .env holds: the demo never leaves the machine), and report it."""
    # The server ends the call after the caller hangs up, in its own process, and asks for
    # the analysis in the same transaction: there is nothing to wait on but that row.
    deadline = time.monotonic() + 15
    while True:
        analysis = CallAnalysis.objects.filter(call__call_sid=call_sid).order_by("-created_at").first()
        ended = Call.objects.filter(call_sid=call_sid, ended_at__isnull=False).exists()
        if analysis is not None or ended or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if analysis is None:
        return ["Analysis: none (the agent has no enabled analysis plan, or nothing was said)."]
    with FakeResponsesServer() as responses:
        client = analysis_model.client(api_key=standin.LOCAL_API_KEY, base_url=responses.base_url, timeout=10)
        done = analysis_jobs.run(analysis.pk, client=client).analysis
    if done is None:
        return [f"Analysis {analysis.pk}: already taken by a running task worker."]
    return analysis_report(done, "offline stand-in of the Responses API")


def analysis_report(analysis: CallAnalysis, model: str = "") -> list[str]:
    """An analysis as the demo and simulate_call print it."""
    if analysis.status != AnalysisStatus.DONE:
        return [
            f"Analysis: {analysis.get_status_display().lower()}"
            + (f": {analysis.error}" if analysis.error else "")
        ]
    lines = [f"Analysis (plan v{analysis.plan_version.number}, {model or analysis.model}):"]
    if analysis.success is not None:
        lines.append(f"  Verdict: {'success' if analysis.success else 'failed'}: {analysis.reason}")
    if analysis.summary:
        lines.append(f"  Summary: {analysis.summary}")
    for name, value in (analysis.data or {}).items():
        lines.append(f"  {name}: {'-' if value is None else json.dumps(value, ensure_ascii=False)}")
    return lines
