"""Latency the bridge adds to a phone call, each way, with N concurrent calls.

    .venv/bin/python bench/bridge_latency.py --plot bench/results/bridge_latency.png

Three processes share the machine: this driver (N simulated Twilio callers in one event
loop), a lean fake of the OpenAI Realtime GA API (``bench/fake_openai_server.py``, its own
process so its CPU does not compete in the driver's loop) and the real server
(``--server``: production's uvicorn by default, or daphne, another uvicorn WebSocket
implementation, granian) on a fresh, migrated SQLite database.

Each call does what Twilio does: the signed ``/incoming-call`` webhook (through
``SimulatedCaller.post_webhook``), the signed Media Stream socket, ``connected``/``start``,
then one 160-byte mu-law frame every 20 ms on an absolute schedule, mark echoes when
playback passes them and ``clear`` handling. The caller talks in turns; the fake answers
each turn with 1-3 s of audio streamed faster than real time, and every few turns the
caller barges in while the answer plays.

Latency is measured on one clock, ``time.monotonic()`` (CLOCK_MONOTONIC is system-wide on
Linux, so the fake's timestamps compare with the driver's):

* caller -> OpenAI: a frame carries its call id and sequence number in its first bytes
  (``bench.wire``); the driver notes when it wrote the frame, the fake when the matching
  ``input_audio_buffer.append`` arrived.
* OpenAI -> caller: every 20 ms block of agent audio is tagged the same way; the fake notes
  when it wrote the ``output_audio.delta``, the driver when the Twilio ``media`` message
  carrying the block arrived (the bridge splits deltas into 120 ms messages).

Both include two loopback hops and the receiving loop's scheduling delay, so they are an
upper bound of what the bridge itself adds; the event-loop lag of the driver and of the
fake is printed so it can be discounted.

Rounds run N = 1, 10, 50, 100, 200, 400 by default, 20 s calls below 100 and 15 s from 100
up (``--seconds``). Every round has a hard time cap and the whole run a time budget (rounds
that would not fit are skipped and reported); calls that could not connect are reported as
such, not as lost frames.

``--database-url postgres://...`` / ``--redis-url redis://...`` run the server on a fresh
PostgreSQL database (created for the run, dropped after) and a Redis channel layer (on a
dedicated db number); ``--workers K`` starts K server processes and spreads the calls over
them; ``--plot PATH.png`` draws latency, CPU and memory against concurrency (``bench/plot.py``
overlays several runs). ``--server-url`` targets a server that is already running (start it
with ``OPENAI_REALTIME_URL=ws://127.0.0.1:<--fake-port>/v1/realtime`` and the same
``TWILIO_AUTH_TOKEN``; pass ``--server-pid`` for its CPU and memory).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import platform
import random
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import deque
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a file: make ``bench`` and ``calls`` importable
    sys.path.insert(0, str(ROOT))

from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.exceptions import ConnectionClosed  # noqa: E402

from bench import analysis_load  # noqa: E402
from bench.wire import (  # noqa: E402
    AGENT_FILLER,
    AGENT_MAGIC,
    AGENT_TAG,
    BLOCK_BYTES,
    FRAME_MS,
    caller_frame,
)
from calls.fakes.twilio_caller import CallerConfig, SimulatedCaller, twilio_signature  # noqa: E402
from calls.processes import (  # noqa: E402
    ASGI_SERVERS,
    PRODUCTION_SERVER,
    asgi_server_command,
    stop_process,
    wait_for_port,
)

RESULTS = ROOT / "bench" / "results"
BENCH_NUMBER = "+15550100199"  # the bench agent answers this number only
AUTH_TOKEN = "bench-auth-token-0123456789abcdef"
OPENAI_KEY = "sk-bench-0123456789"
GREETING = "Hello, thanks for calling the benchmark line. How can I help?"
CLK_TCK = os.sysconf("SC_CLK_TCK")
FRAME_S = FRAME_MS / 1000


# -- processes and /proc ----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def system_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    # user nice system idle iowait irq softirq steal (guest time is already in user)
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    nproc = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1])
    versions = {}
    servers = ("daphne", "twisted", "autobahn", "uvicorn", "uvloop", "httptools", "wsproto", "granian")
    for name in ("django", "channels", "websockets", *servers):
        with contextlib.suppress(PackageNotFoundError):
            versions[name] = version(name)
    git: dict[str, Any] = {}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        run = {"cwd": ROOT, "capture_output": True, "text": True, "timeout": 10, "check": False}
        git["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], **run).stdout.strip()  # type: ignore[call-overload]
        changed = subprocess.run(["git", "status", "--porcelain", "calls", "voiceagent"], **run).stdout  # type: ignore[call-overload]
        git["server_code_modified"] = sorted(line[3:] for line in changed.splitlines())
    return {
        "git": git,
        "nproc": nproc,
        "cpu_model": model,
        "memory_mib": mem_kib // 1024,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "packages": versions,
    }


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env.update(extra)
    return env


def run_manage(env: dict[str, str], *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode:
        raise RuntimeError(f"manage.py {' '.join(args[:1])} failed:\n{result.stdout}\n{result.stderr}")


AGENT_SETUP = """
from calls.models import Agent
Agent.objects.update_or_create(
    phone_number={number!r},
    defaults=dict(
        name="Benchmark agent", enabled=True, instructions="Be brief.", greeting={greeting!r},
        turn_detection="server_vad", vad_silence_ms=500, idle_timeout_seconds=0,
        max_call_seconds={max_seconds}, tools=[], record_calls=True,
    ),
)
"""


def prepare_database(env: dict[str, str], max_seconds: int) -> None:
    run_manage(env, "migrate", "--noinput")
    code = AGENT_SETUP.format(number=BENCH_NUMBER, greeting=GREETING, max_seconds=max_seconds)
    run_manage(env, "shell", "-c", code)


BENCH_REDIS_DB = 12  # the channel layer's db when --redis-url names none
CHANNEL_LAYER_KEYS = "asgi*"  # channels_redis's default key prefix


def postgres_create(url: str) -> tuple[str, str]:
    """A fresh database on the server of ``url``: (its URL, the maintenance URL to drop it)."""
    import psycopg  # only the PostgreSQL mode needs it

    parts = urllib.parse.urlsplit(url)
    admin_db = parts.path.lstrip("/") or "postgres"
    admin = urllib.parse.urlunsplit(parts._replace(path=f"/{admin_db}"))
    name = f"voiceagent_bench_{secrets.token_hex(4)}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}")), admin


def postgres_drop(url: str, admin: str) -> None:
    import psycopg

    name = urllib.parse.urlsplit(url).path.lstrip("/")
    with psycopg.connect(admin, autocommit=True, connect_timeout=10) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_activity(url: str) -> dict[str, int]:
    """Write activity of the bench database so far (pg_stat_database) and open connections."""
    import psycopg

    with psycopg.connect(url, autocommit=True, connect_timeout=10) as connection:
        row = connection.execute(
            "SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, "
            "(SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()) - 1 "
            "FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    keys = ("transactions", "rollbacks", "rows_inserted", "rows_updated", "rows_deleted", "connections")
    return dict(zip(keys, (int(v) for v in row), strict=True)) if row else {}


def redis_dedicated(url: str) -> str:
    """``url`` on the benchmark's own db number unless it names one; its channel keys cleared."""
    parts = urllib.parse.urlsplit(url)
    if parts.path.strip("/") == "" and "db=" not in parts.query:
        url = urllib.parse.urlunsplit(parts._replace(path=f"/{BENCH_REDIS_DB}"))
    redis_clear(url)
    return url


def redis_clear(url: str) -> int:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        keys = list(client.scan_iter(CHANNEL_LAYER_KEYS, count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        return len(keys)
    finally:
        client.close()


def count_recordings(database_url: str, call_sids: list[str]) -> int | None:
    """How many of these calls have a stored recording (the bench agent records, as production)."""
    if not database_url:
        return None  # --server-url without --database-url: not ours to read
    if not call_sids:
        return 0
    placeholders = ",".join(["%s" if database_url.startswith("postgres") else "?"] * len(call_sids))
    sql = f"SELECT count(*) FROM calls_call WHERE recording <> '' AND call_sid IN ({placeholders})"
    try:
        if database_url.startswith("postgres"):
            import psycopg

            with psycopg.connect(database_url, connect_timeout=10) as connection:
                row = connection.execute(sql, call_sids).fetchone()
        else:
            import sqlite3

            path = database_url.removeprefix("sqlite:///")
            with contextlib.closing(sqlite3.connect(path, timeout=20)) as connection:
                row = connection.execute(sql, call_sids).fetchone()
    except Exception as exc:  # a report detail: never fail the run for it
        print(f"    (could not count recordings: {exc})")
        return None
    return int(row[0]) if row else 0


def raise_open_files_limit() -> None:
    """Each call holds a few sockets in each process; the children inherit the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(
                resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard)
            )


def start_fake(port: int, log_path: Path, options: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.fake_openai_server", "--port", str(port), *options],
        cwd=ROOT,
        env=child_env({}),
        stdout=subprocess.PIPE,
        stderr=log,
    )
    assert process.stdout is not None
    line = process.stdout.readline().decode().split()
    if len(line) != 2 or line[0] != "PORT":
        stop_process(process)
        raise RuntimeError(f"the fake OpenAI server did not start:\n{log_path.read_text()}")
    return process, int(line[1])


def start_server(server: str, env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    # Verbose: daphne's autobahn, for one, says in its log why it dropped a connection.
    command = asgi_server_command(server, port=port, verbose=True)
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_for_port(process, port, timeout=60, name=server, log=log_path.read_text)
    return process


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants: granian serves from a child process of the one started."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        parent = int(text[text.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


# -- one simulated call ------------------------------------------------------------------


@dataclass
class CallSettings:
    base_url: str
    public_base_url: str
    auth_token: str
    seconds: float
    drain: float
    barge_in_share: float


class BenchCall:
    """One caller, lean enough that 50 of them share a loop: the webhook via
    ``SimulatedCaller``, then its own stream loop (frames, playback clock, mark echoes)."""

    def __init__(self, call_id: int, settings: CallSettings) -> None:
        self.id = call_id
        self.settings = settings
        self.rng = random.Random(call_id)
        self.stream_sid = ""
        self.call_sid = ""
        self.error = ""
        self.cut_short = ""
        self.close_code: int | None = None
        self.phase = "waiting"  # webhook, connect, media, closing, done: where a failure happened
        self.connected = False  # the Media Stream socket opened
        self.seq = 0  # Twilio sequenceNumber
        # caller -> OpenAI: send time of frame k (k is the tag's sequence number)
        self.t_sent: list[float] = []
        self.lateness: list[float] = []  # how late each frame left versus its schedule
        self.t_start_sent: float | None = None
        self.t_media_start: float | None = None
        self.t_media_end: float | None = None
        # OpenAI -> caller: every tagged block that arrived
        self.rx_session: list[int] = []
        self.rx_block: list[int] = []
        self.rx_t: list[float] = []
        self.rx_bytes = 0
        self.rx_misaligned = 0
        self.rx_corrupt = 0
        self.next_tag_at = 0  # stream offset of the next block tag
        self.t_first_audio: float | None = None
        self.t_last_audio = 0.0
        self.protocol_errors = 0
        # playback (Twilio's buffer): when what was received so far finishes playing
        self.play_end = 0.0
        self.marks: deque[tuple[float, str]] = deque()
        self.marks_echoed = 0
        self.clears = 0
        # barge-in accuracy: when each response (session, response index) began to play, how
        # much of it arrived, and at each clear what had played of the response then playing
        self.response_play_start: dict[tuple[int, int], float] = {}
        self.response_bytes: dict[tuple[int, int], int] = {}
        self.heard_at_clear: list[tuple[int, int, float]] = []  # session, response, ms heard
        # conversation
        self.last_response = -1
        self.response_first_t: dict[int, float] = {}
        self.state = "wait_answer"  # the greeting is the first answer
        self.response_before = -1
        self.utterance_end = 0.0
        self.speak_at: float | None = None
        self.speak_left = 0
        self.turns = 0
        self.barge_ins = 0
        self.unanswered = 0

    # -- Twilio messages -----------------------------------------------------------

    def _next_seq(self) -> str:
        self.seq += 1
        return str(self.seq)

    def _mark_echo(self, name: str) -> str:
        self.marks_echoed += 1
        return json.dumps(
            {
                "event": "mark",
                "sequenceNumber": self._next_seq(),
                "streamSid": self.stream_sid,
                "mark": {"name": name},
            }
        )

    async def run(self, start_at: float) -> None:
        delay = start_at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            await self._run()
        except Exception as exc:  # one failed call must not abort the round
            self.error = self.error or f"{type(exc).__name__}: {exc}".strip()

    @property
    def failed_to_connect(self) -> bool:
        """The call never got its media stream: webhook or WebSocket handshake failed."""
        return bool(self.error) and not self.connected

    async def _run(self) -> None:
        settings = self.settings
        caller = SimulatedCaller(
            CallerConfig(
                base_url=settings.base_url,
                public_base_url=settings.public_base_url,
                auth_token=settings.auth_token,
                to_number=BENCH_NUMBER,
            )
        )
        self.phase = "webhook"
        webhook = await caller.post_webhook()
        if webhook.status != 200 or not webhook.stream_url:
            self.error = f"webhook answered {webhook.status}: {webhook.body[:200]}"
            return
        self.call_sid, self.stream_sid = caller.call_sid, caller.stream_sid
        stream = urllib.parse.urlsplit(webhook.stream_url)
        base = urllib.parse.urlsplit(settings.base_url)
        scheme = "wss" if base.scheme == "https" else "ws"
        url = urllib.parse.urlunsplit((scheme, base.netloc, stream.path, stream.query, ""))
        signature = twilio_signature(settings.auth_token, webhook.stream_url, {})
        self.phase = "connect"
        async with connect(
            url,
            additional_headers={"x-twilio-signature": signature},
            compression=None,
            ping_interval=None,
            proxy=None,
            open_timeout=15,
            close_timeout=5,
            max_size=2**20,
        ) as ws:
            self.connected = True
            self.phase = "media"
            await ws.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            start = {
                "event": "start",
                "sequenceNumber": self._next_seq(),
                "start": {
                    "accountSid": caller.config.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": dict(webhook.stream_parameters),
                },
                "streamSid": self.stream_sid,
            }
            self.t_start_sent = time.monotonic()
            await ws.send(json.dumps(start))
            receiver = asyncio.create_task(self._receive(ws))
            try:
                await self._talk(ws)
                self.phase = "closing"
                stop = {
                    "event": "stop",
                    "sequenceNumber": self._next_seq(),
                    "stop": {"accountSid": caller.config.account_sid, "callSid": self.call_sid},
                    "streamSid": self.stream_sid,
                }
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(json.dumps(stop))
                try:
                    await asyncio.wait_for(asyncio.shield(receiver), timeout=20)
                except TimeoutError:
                    self.error = "the server did not close the stream within 20 s of stop"
            finally:
                receiver.cancel()
                await asyncio.gather(receiver, return_exceptions=True)
            self.close_code = ws.close_code
        if not self.error:
            self.phase = "done"
        if self.cut_short and not self.error:
            self.error = f"{self.cut_short}, close code {self.close_code}"
        elif self.close_code != 1000 and not self.error:
            self.error = f"the server closed the stream with code {self.close_code}"

    async def _talk(self, ws: ClientConnection) -> None:
        """The phone line: frame k leaves at t0 + k * 20 ms, then a quiet drain."""
        frames = round(self.settings.seconds * 1000 / FRAME_MS)
        drain = round(self.settings.drain * 1000 / FRAME_MS)
        stream_sid = self.stream_sid
        prefix = '{"event":"media","sequenceNumber":"'
        t0 = time.monotonic()
        self.t_media_start = t0
        self.utterance_end = t0
        for k in range(frames + drain):
            due = t0 + k * FRAME_S
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if ws.close_code is not None:
                self._cut_short(k, frames)
                return
            if k < frames:
                now = time.monotonic()
                speech = self._speech(now)
                payload = base64.b64encode(caller_frame(self.id, k, speech)).decode()
                self.seq += 1
                message = (
                    f'{prefix}{self.seq}","media":{{"track":"inbound","chunk":"{k + 1}",'
                    f'"timestamp":"{k * FRAME_MS}","payload":"{payload}"}},"streamSid":"{stream_sid}"}}'
                )
                sent = time.monotonic()
                try:
                    await ws.send(message)
                except ConnectionClosed:
                    self._cut_short(k, frames)
                    return
                self.t_sent.append(sent)
                self.lateness.append(sent - due)
            elif k == frames:
                self.t_media_end = time.monotonic()
            await self._echo_due_marks(ws)
        if self.t_media_end is None:
            self.t_media_end = time.monotonic()

    def _cut_short(self, k: int, frames: int) -> None:
        if self.t_media_end is None:
            self.t_media_end = time.monotonic()
        self.cut_short = f"the server closed the stream before the caller hung up (frame {k} of {frames})"

    async def _echo_due_marks(self, ws: ClientConnection) -> None:
        now = time.monotonic()
        while self.marks and self.marks[0][0] <= now:
            _, name = self.marks.popleft()
            with contextlib.suppress(ConnectionClosed):
                await ws.send(self._mark_echo(name))

    def _speech(self, now: float) -> bool:
        """Is the caller speaking in the frame leaving now? Turn-taking with barge-ins."""
        if self.speak_left > 0:
            self.speak_left -= 1
            if self.speak_left == 0:
                self.state = "wait_answer"
                self.response_before = self.last_response
                self.utterance_end = now
            return True
        if self.state == "wait_answer":
            if self.last_response > self.response_before:
                self.state = "listen"
                if self.rng.random() < self.settings.barge_in_share:
                    first = self.response_first_t[self.last_response]
                    self.speak_at = first + self.rng.uniform(0.3, 1.0)
                else:
                    self.speak_at = None  # once the answer has played
            elif now - self.utterance_end > 5.0:
                self.unanswered += 1
                self.state, self.speak_at = "listen", now
        if self.state == "listen":
            if self.speak_at is None and self.play_end <= now and now - self.t_last_audio > 0.3:
                self.speak_at = now + self.rng.uniform(0.5, 1.5)
            if self.speak_at is not None and now >= self.speak_at:
                self.state = "speaking"
                self.turns += 1
                if self.play_end > now:
                    self.barge_ins += 1
                self.speak_left = self.rng.randint(30, 60) - 1  # 0.6-1.2 s, this frame included
                return True
        return False

    async def _receive(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                now = time.monotonic()
                if not isinstance(message, str):
                    self.protocol_errors += 1
                    continue
                try:
                    event = json.loads(message)
                    kind = event["event"]
                    if kind == "media":
                        self._on_audio(base64.b64decode(event["media"]["payload"]), now)
                    elif kind == "mark":
                        name = str(event["mark"]["name"])
                        if self.play_end <= now and not self.marks:
                            await ws.send(self._mark_echo(name))
                        else:
                            self.marks.append((self.play_end, name))
                    elif kind == "clear":
                        self.clears += 1
                        self._note_heard(now)
                        self.play_end = now
                        while self.marks:  # Twilio echoes every pending mark at once
                            await ws.send(self._mark_echo(self.marks.popleft()[1]))
                    else:
                        self.protocol_errors += 1
                except (KeyError, TypeError, ValueError):
                    self.protocol_errors += 1

    def _note_heard(self, now: float) -> None:
        """A clear: what the caller heard of the response playing now (Twilio stops there)."""
        playing = [(start, key) for key, start in self.response_play_start.items() if start <= now]
        if not playing:
            return
        start, key = max(playing)
        heard_ms = min((now - start) * 1000, self.response_bytes[key] / 8)
        self.heard_at_clear.append((*key, heard_ms))

    def _on_audio(self, data: bytes, now: float) -> None:
        if self.t_first_audio is None:
            self.t_first_audio = now
        self.t_last_audio = now
        chunk_plays_at = max(now, self.play_end)
        self.play_end = chunk_plays_at + len(data) / 8000
        offset = self.rx_bytes
        n = len(data)
        i = self.next_tag_at - offset
        size = AGENT_TAG.size
        while i >= 0 and i + size <= n:
            if data[i : i + 2] != AGENT_MAGIC:
                # Off the grid (the bridge split inside a block?): find the next tag.
                self.rx_misaligned += 1
                j = data.find(AGENT_MAGIC, i + 1)
                if j < 0:
                    i = n
                    break
                i = j
                continue
            _, session, block, response = AGENT_TAG.unpack_from(data, i)
            key = (session, response)
            if key not in self.response_play_start:
                self.response_play_start[key] = chunk_plays_at + i / 8000
            self.response_bytes[key] = self.response_bytes.get(key, 0) + BLOCK_BYTES
            self.rx_session.append(session)
            self.rx_block.append(block)
            self.rx_t.append(now)
            if response > self.last_response:
                self.last_response = response
                self.response_first_t[response] = now
            end = i + BLOCK_BYTES
            if end <= n and data[i + size : end] != AGENT_FILLER:
                self.rx_corrupt += 1
            i = end
        self.rx_bytes = offset + n
        self.next_tag_at = offset + max(i, 0)


PROBE_CALL_ID = 0xFFFF


async def direct_probe(realtime_url: str, start_at: float, seconds: float) -> list[float]:
    """The measuring floor: tagged frames straight from the driver to the fake, no bridge.

    Same processes, same loopback, same load as the calls, one hop instead of two: what is
    left of the bridge's numbers after subtracting this is the server's doing."""
    delay = start_at - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)
    t_sent: list[float] = []
    async with connect(
        f"{realtime_url}?model=bench-probe",
        additional_headers={"Authorization": f"Bearer {OPENAI_KEY}"},
        compression=None,
        ping_interval=None,
        proxy=None,
    ) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "realtime"}}))
        while json.loads(await ws.recv()).get("type") != "session.updated":
            pass
        t0 = time.monotonic()
        for k in range(round(seconds * 1000 / FRAME_MS)):
            delay = t0 + k * FRAME_S - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            payload = base64.b64encode(caller_frame(PROBE_CALL_ID, k, False)).decode()
            message = f'{{"type":"input_audio_buffer.append","audio":"{payload}"}}'
            t_sent.append(time.monotonic())
            await ws.send(message)
        await asyncio.sleep(0.5)
    return t_sent


def probe_latency(t_sent: list[float], dump: dict[str, Any]) -> dict[str, Any]:
    latencies: list[float] = []
    for session in dump["sessions"]:
        if session["call"] == PROBE_CALL_ID:
            for seq, t in zip(session["in_seq"], session["in_t"], strict=True):
                if seq < len(t_sent):
                    latencies.append(t - t_sent[seq])
    return percentiles(latencies)


# -- measuring -----------------------------------------------------------------------------


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """p50/p99/max in ms (nearest rank) of values in seconds."""
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values)

    def pick(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {
        "n": len(ordered),
        "p50": pick(0.5),
        "p99": pick(0.99),
        "max": round(ordered[-1] * 1000, 2),
        "mean": round(sum(ordered) / len(ordered) * 1000, 2),
    }


@dataclass
class Sample:
    t: float
    cpu: dict[str, float | None]
    server_rss_kib: int | None
    system: tuple[int, int]


def total(values: list[Any]) -> Any:
    """Sum over the server processes; None if any is unknown (or there are none)."""
    return None if not values or any(v is None for v in values) else sum(values)


@dataclass
class Monitors:
    pids: dict[str, int]  # the fake and the driver
    server_pids: list[int]
    max_server_rss_kib: int = 0  # above it, the round is abandoned (0: no limit)
    samples: list[Sample] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    too_big: asyncio.Event = field(default_factory=asyncio.Event)

    def sample(self) -> Sample:
        cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        if self.server_pids:
            cpu["server"] = total([cpu_seconds(pid) for pid in self.server_pids])
        rss = total([rss_kib(pid) for pid in self.server_pids])
        sample = Sample(time.monotonic(), cpu, rss, system_jiffies())
        self.samples.append(sample)
        if self.max_server_rss_kib and rss is not None and rss > self.max_server_rss_kib:
            self.too_big.set()
        return sample

    async def run_sampler(self, interval: float = 0.25) -> None:
        while True:
            self.sample()
            await asyncio.sleep(interval)

    async def run_lag(self, interval: float = 0.01) -> None:
        while True:
            due = time.monotonic() + interval
            await asyncio.sleep(interval)
            self.lags.append(max(0.0, time.monotonic() - due))


def cpu_over(samples: list[Sample], start: float, end: float) -> dict[str, Any]:
    inside = [s for s in samples if start <= s.t <= end]
    if len(inside) < 2:
        inside = samples[:1] + samples[-1:] if len(samples) >= 2 else []
    if len(inside) < 2:
        return {}
    first, last = inside[0], inside[-1]
    wall = last.t - first.t
    result: dict[str, Any] = {"window_s": round(wall, 2)}
    for name in first.cpu:
        a, b = first.cpu[name], last.cpu.get(name)
        result[f"{name}_cpu_pct"] = None if a is None or b is None else round((b - a) / wall * 100, 1)
    busy = last.system[0] - first.system[0]
    total = last.system[1] - first.system[1]
    result["machine_busy_pct"] = round(busy / total * 100, 1) if total else None
    return result


async def fake_dump(fake_url: str) -> dict[str, Any]:
    async with connect(fake_url, max_size=None, proxy=None, compression=None, ping_interval=None) as ws:
        await ws.send("dump")
        reply = await ws.recv()
    return json.loads(reply)


def timeline(points: list[tuple[float, float]], origin: float) -> list[dict[str, Any]]:
    """Latency per second of the round (by send time), to see when the slow frames happened."""
    buckets: dict[int, list[float]] = {}
    for t, latency in points:
        buckets.setdefault(int(t - origin), []).append(latency)
    return [{"second": second, **percentiles(values)} for second, values in sorted(buckets.items())]


def analyse(calls: list[BenchCall], dump: dict[str, Any], origin: float) -> dict[str, Any]:
    sessions = {s["call"]: s for s in dump["sessions"] if s["call"] is not None}
    up: list[float] = []
    down: list[float] = []
    up_points: list[tuple[float, float]] = []
    down_points: list[tuple[float, float]] = []
    u = {"sent": 0, "delivered": 0, "lost": 0, "duplicated": 0, "reordered": 0, "early": 0, "corrupt": 0}
    d = {
        "sent": 0,
        "expected": 0,
        "delivered": 0,
        "lost": 0,
        "duplicated": 0,
        "reordered": 0,
        "misrouted": 0,
        "corrupt": 0,
        "dropped_after_barge_in": 0,
        "sent_after_hangup": 0,
        "misaligned": 0,
    }
    first_audio: list[float] = []
    openai_connect: list[float] = []
    failed = []
    truncation_errors: list[float] = []  # ms, truncated at minus heard (+: said heard, was not)
    clears_unmatched = 0
    for call in calls:
        session = sessions.get(call.id)
        if call.error or session is None:
            kind = "connect" if call.failed_to_connect else "dropped" if call.error else "no_openai_session"
            failed.append(
                {
                    "call": call.id,
                    "kind": kind,
                    "phase": call.phase,
                    "error": call.error or "no OpenAI session",
                    "close": call.close_code,
                }
            )
        if call.t_start_sent is not None and call.t_first_audio is not None:
            first_audio.append(call.t_first_audio - call.t_start_sent)
        sent = len(call.t_sent)
        u["sent"] += sent
        if session is None:
            u["lost"] += sent
            continue
        if call.t_start_sent is not None:
            openai_connect.append(session["t_open"] - call.t_start_sent)
        # barge-in: where the bridge truncated the answer against what the caller had heard
        truncated_at = {response: end_ms for response, end_ms in session.get("truncates", [])}
        for heard_session, response, heard_ms in call.heard_at_clear:
            if heard_session == session["index"] and response in truncated_at:
                truncation_errors.append(truncated_at[response] - heard_ms)
            else:
                clears_unmatched += 1
        # caller -> OpenAI
        ready = session["t_session_updated"] or float("inf")
        seen = bytearray(sent)
        highest = -1
        for seq, t in zip(session["in_seq"], session["in_t"], strict=True):
            if seq >= sent or seen[seq]:
                u["duplicated"] += 1
                continue
            seen[seq] = 1
            if seq < highest:
                u["reordered"] += 1
            highest = max(highest, seq)
            t_sent = call.t_sent[seq]
            if t_sent < ready:
                u["early"] += 1  # buffered by the bridge while OpenAI connected
            else:
                up.append(t - t_sent)
                up_points.append((t_sent, t - t_sent))
        delivered = sum(seen)
        u["delivered"] += delivered
        u["lost"] += sent - delivered
        u["corrupt"] += session["in_corrupt"] + session["in_untagged"]
        # OpenAI -> caller
        interrupted = {r["index"]: r["t_interrupted"] for r in session["responses"]}
        sent_at: dict[int, float] = {}
        expected: set[int] = set()
        hangup = call.t_media_end or float("inf")
        for t, first, count, response in session["deltas"]:
            cut = interrupted.get(response)
            for block in range(first, first + count):
                sent_at[block] = t
                d["sent"] += 1
                if cut is not None and t >= cut:
                    d["dropped_after_barge_in"] += 1
                elif t > hangup:
                    d["sent_after_hangup"] += 1
                else:
                    expected.add(block)
        d["expected"] += len(expected)
        got: set[int] = set()
        highest = -1
        me = session["index"] & 0xFFFF
        for sess, block, t in zip(call.rx_session, call.rx_block, call.rx_t, strict=True):
            if sess != me or block not in sent_at:
                d["misrouted"] += 1
                continue
            if block in got:
                d["duplicated"] += 1
                continue
            got.add(block)
            if block < highest:
                d["reordered"] += 1
            highest = max(highest, block)
            down.append(t - sent_at[block])
            down_points.append((sent_at[block], t - sent_at[block]))
        d["delivered"] += len(got & expected)
        d["lost"] += len(expected - got)
        d["corrupt"] += call.rx_corrupt
        d["misaligned"] += call.rx_misaligned
    return {
        "caller_to_openai_ms": percentiles(up),
        "openai_to_caller_ms": percentiles(down),
        "caller_to_openai_frames": u,
        "openai_to_caller_frames": d,
        "first_agent_audio_ms": percentiles(first_audio),
        "start_to_openai_connect_ms": percentiles(openai_connect),
        # |truncated at - heard| per barge-in, in ms; over 20: more than one frame off
        "barge_in_truncation_error_ms": {
            **percentiles([abs(e) / 1000 for e in truncation_errors]),
            "signed_mean": round(sum(truncation_errors) / len(truncation_errors), 2)
            if truncation_errors
            else None,
            "over_one_frame": sum(1 for e in truncation_errors if abs(e) > 20),
            "clears_without_truncate": clears_unmatched,
        },
        "failed_calls": failed,
        "calls_connected": sum(1 for c in calls if c.connected),
        "calls_failed_to_connect": sum(1 for f in failed if f["kind"] == "connect"),
        "calls_dropped": sum(1 for f in failed if f["kind"] != "connect"),
        "timeline": {
            "caller_to_openai_ms": timeline(up_points, origin),
            "openai_to_caller_ms": timeline(down_points, origin),
        },
    }


# -- the benchmark -----------------------------------------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    call_settings: CallSettings  # base_url is per worker, see ``worker_urls``
    worker_urls: list[str]
    fake_url: str
    realtime_url: str
    pids: dict[str, int]  # the fake and the driver
    server_pids: list[int]
    servers: list[subprocess.Popen[bytes]]
    server_logs: list[Path]
    database_url: str
    postgres: bool = False
    next_call_id: int = 1
    idle_rss_kib: int | None = None
    # --analysis: the task worker, and the backlog it is held back from until a round is live.
    analysis_worker: subprocess.Popen[bytes] | None = None
    analysis_env: dict[str, str] = field(default_factory=dict)
    backlog_sids: list[str] = field(default_factory=list)


def round_shape(args: argparse.Namespace, n: int, seconds: float) -> tuple[float, float, float]:
    """(stagger, ramp, time cap) of a round: starts are spread over at most ``--max-ramp`` s."""
    stagger = min(args.stagger, args.max_ramp / max(1, n - 1))
    ramp = stagger * max(0, n - 1)
    cap = args.round_timeout or seconds + ramp + args.drain + 45.0
    return stagger, ramp, cap


async def run_round(ctx: Context, n: int, seconds: float, *, warmup: bool = False) -> dict[str, Any]:
    args = ctx.args
    stagger, ramp, cap = round_shape(args, n, seconds)
    calls = [
        BenchCall(
            ctx.next_call_id + i,
            CallSettings(
                **{
                    **ctx.call_settings.__dict__,
                    "seconds": seconds,
                    "base_url": ctx.worker_urls[i % len(ctx.worker_urls)],
                }
            ),
        )
        for i in range(n)
    ]
    ctx.next_call_id += n
    monitors = Monitors(ctx.pids, ctx.server_pids, max_server_rss_kib=args.max_server_rss_mib * 1024)
    db_before = None
    if ctx.postgres and not warmup:
        db_before = await asyncio.to_thread(postgres_activity, ctx.database_url)
    sampler = asyncio.create_task(monitors.run_sampler())
    lag = asyncio.create_task(monitors.run_lag())
    profiler = None if warmup else start_profiler(ctx, n, seconds)
    began = time.monotonic()
    start = began + 0.2
    worker = ctx.analysis_worker
    worker_cpu_before = cpu_seconds(worker.pid) if worker is not None and not warmup else None
    if worker is not None and ctx.backlog_sids and not warmup:
        # The backlog's calls "end together" once every call of the round is live.
        asyncio.get_running_loop().call_later(start - began + ramp + 0.5, os.kill, worker.pid, signal.SIGCONT)
    probe = asyncio.create_task(direct_probe(ctx.realtime_url, start, seconds)) if not warmup else None
    tasks = [asyncio.create_task(call.run(start + i * stagger)) for i, call in enumerate(calls)]
    everything = asyncio.ensure_future(asyncio.gather(*tasks))
    guard = asyncio.create_task(monitors.too_big.wait())
    done, _ = await asyncio.wait({everything, guard}, timeout=cap, return_when=asyncio.FIRST_COMPLETED)
    abandoned = ""
    if everything not in done:
        # A server that cannot keep up must not hold the machine: cut the round short.
        if guard in done:
            abandoned = f"server RSS above --max-server-rss-mib={args.max_server_rss_mib}"
        else:
            abandoned = f"the round's time cap ({cap:.0f} s) was reached"
        print(f"    round abandoned: {abandoned}", flush=True)
        for task in tasks:
            task.cancel()
        for call in calls:
            if call.phase != "done" and not call.error:
                call.error = f"abandoned during {call.phase}: {abandoned}"
    everything.cancel()
    guard.cancel()
    await asyncio.gather(everything, guard, *tasks, return_exceptions=True)
    probe_sent: list[float] = []
    if probe is not None:
        try:
            probe_sent = await asyncio.wait_for(probe, timeout=seconds + 10)
        except (OSError, ConnectionClosed, TimeoutError) as exc:
            print(f"    (the direct probe failed: {exc!r})")
    finished = time.monotonic()
    for task in (sampler, lag):
        task.cancel()
    await asyncio.gather(sampler, lag, return_exceptions=True)
    if profiler is not None:
        await asyncio.to_thread(profiler.wait)
    await asyncio.sleep(0.5)  # the fake sees the last closes
    dump = await fake_dump(ctx.fake_url)
    for server, log_path in zip(ctx.servers, ctx.server_logs, strict=True):
        if server.poll() is not None:
            log = log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"a server process died during the round with {n} calls:\n{log}")
    if warmup:
        return {}
    result = analyse(calls, dump, start)
    if worker is not None:
        if ctx.backlog_sids:
            result["analysis_backlog"] = await asyncio.to_thread(
                analysis_load.end_to_stored, ctx.database_url, ctx.backlog_sids
            )
            ctx.backlog_sids = []
        result["analysis"] = await asyncio.to_thread(
            analysis_load.end_to_stored,
            ctx.database_url,
            [c.call_sid for c in calls if c.connected and c.call_sid],
        )
        after = cpu_seconds(worker.pid)
        result["analysis_worker_cpu_s"] = (
            round(after - worker_cpu_before, 2)
            if after is not None and worker_cpu_before is not None
            else None
        )
        print(
            f"    analysis: {json.dumps({k: v for k, v in result.items() if k.startswith('analysis')})}",
            flush=True,
        )
    ok = [c for c in calls if c.t_media_start is not None and c.t_media_end is not None]
    starts = [c.t_media_start for c in ok if c.t_media_start is not None]
    ends = [c.t_media_end for c in ok if c.t_media_end is not None]
    window = (max(starts), min(ends)) if ok else (began, finished)
    if window[1] - window[0] < 1.0 and ok:
        window = (min(starts), max(ends))
    usage = cpu_over(monitors.samples, *window)
    peak = max((s.server_rss_kib or 0 for s in monitors.samples), default=0)
    server_cpu = usage.get("server_cpu_pct")
    lateness = [x for c in calls for x in c.lateness]
    recordings = await asyncio.to_thread(
        count_recordings, ctx.database_url, [c.call_sid for c in calls if c.connected and c.call_sid]
    )
    db_activity = None
    if db_before is not None:
        after = await asyncio.to_thread(postgres_activity, ctx.database_url)
        db_activity = {k: after[k] - db_before[k] for k in after if k != "connections"}
        db_activity["connections_after"] = after["connections"]
    result["direct_floor_ms"] = probe_latency(probe_sent, dump)
    result.update(
        {
            "calls": n,
            "seconds": seconds,
            "stagger_s": round(stagger, 4),
            "ramp_s": round(ramp, 2),
            "time_cap_s": round(cap, 1),
            "abandoned": abandoned or None,
            "wall_s": round(finished - began, 2),
            "cpu_window_s": usage.get("window_s"),
            "server_processes": len(ctx.server_pids),
            "server_cpu_pct": server_cpu,
            "server_cpu_pct_per_call": None if server_cpu is None else round(server_cpu / n, 2),
            "fake_cpu_pct": usage.get("fake_cpu_pct"),
            "driver_cpu_pct": usage.get("driver_cpu_pct"),
            "machine_busy_pct": usage.get("machine_busy_pct"),
            "other_processes_cpu_pct": other_cpu(usage),
            "server_rss_idle_mib": None if ctx.idle_rss_kib is None else round(ctx.idle_rss_kib / 1024, 1),
            "server_rss_peak_mib": round(peak / 1024, 1) if peak else None,
            "server_rss_per_call_kib": (
                round((peak - ctx.idle_rss_kib) / n, 1) if peak and ctx.idle_rss_kib is not None else None
            ),
            "recordings_stored": recordings,
            # pg_stat_database over the round (statistics reach it up to a second or so late).
            "database_activity": db_activity,
            "driver_loop_lag_ms": percentiles(monitors.lags),
            "driver_send_lateness_ms": percentiles(lateness),
            "fake_loop_lag_ms": dump.get("loop_lag_ms"),
            "turns": sum(c.turns for c in calls),
            "barge_ins": sum(c.barge_ins for c in calls),
            "clears": sum(c.clears for c in calls),
            "unanswered_turns": sum(c.unanswered for c in calls),
            "marks_echoed": sum(c.marks_echoed for c in calls),
            "twilio_protocol_errors": sum(c.protocol_errors for c in calls),
            "close_codes": sorted({c.close_code for c in calls if c.close_code is not None}),
            "openai_client_events": merge_counts(s["client_events"] for s in dump["sessions"]),
            "openai_errors_sent": merge_counts(s["errors_sent"] for s in dump["sessions"]),
        }
    )
    return result


NPROC = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def other_cpu(usage: dict[str, Any]) -> float | None:
    """CPU used by processes other than the server, the fake and the driver (100 = one core):
    anything well above a few % means the machine was not quiet and the numbers are suspect."""
    parts = [usage.get(f"{name}_cpu_pct") for name in ("server", "fake", "driver")]
    busy = usage.get("machine_busy_pct")
    if busy is None or any(part is None for part in parts):
        return None
    return round(max(0.0, busy * NPROC - sum(parts)), 1)  # type: ignore[arg-type]


def background_cpu(seconds: float = 1.0) -> float:
    """The machine's CPU use before the run (100 = one core)."""
    busy0, total0 = system_jiffies()
    time.sleep(seconds)
    busy1, total1 = system_jiffies()
    return round((busy1 - busy0) / max(1, total1 - total0) * 100 * NPROC, 1)


def others_cpu(own_pids: list[int], seconds: float) -> float:
    """CPU used by every process but ours over ``seconds`` (100 = one core)."""
    busy0, total0 = system_jiffies()
    own0 = [cpu_seconds(pid) or 0.0 for pid in own_pids]
    time.sleep(seconds)
    busy1, total1 = system_jiffies()
    own1 = [cpu_seconds(pid) or 0.0 for pid in own_pids]
    machine = (busy1 - busy0) / max(1, total1 - total0) * 100 * NPROC
    own = sum(b - a for a, b in zip(own0, own1, strict=True)) / seconds * 100
    return round(max(0.0, machine - own), 1)


async def wait_quiet(ctx: Context, limit_s: float, threshold: float = 15.0) -> float:
    """Wait (up to ``limit_s``) until other processes use under ``threshold`` % CPU; the
    background CPU measured last. For shared machines: a busy neighbour skews every number."""
    deadline = time.monotonic() + limit_s
    own = [*ctx.pids.values(), *ctx.server_pids]
    while True:
        busy = await asyncio.to_thread(others_cpu, own, 2.0)
        if busy < threshold or time.monotonic() >= deadline:
            return busy
        print(f"    waiting for a quiet machine (other processes: {busy:g} % CPU)", flush=True)


def merge_counts(counts: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for count in counts:
        for key, value in count.items():
            total[key] = total.get(key, 0) + value
    return dict(sorted(total.items()))


def start_profiler(ctx: Context, n: int, seconds: float) -> subprocess.Popen[bytes] | None:
    if not ctx.args.py_spy or not ctx.server_pids:
        return None
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = ctx.args.output.parent / f"{ctx.args.server}-{n}calls"
    command = [py_spy, "record", "--pid", str(ctx.server_pids[0]), "--duration", str(int(seconds))]
    command += ["--rate", "200", "--nonblocking", "--gil", "--format", "raw", "--output", f"{out}.txt"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def setup_label(report: dict[str, Any]) -> str:
    config = report["config"]
    database = {"sqlite": "SQLite", "postgres": "PostgreSQL", "postgresql": "PostgreSQL"}.get(
        config["database"], config["database"]
    )
    layer = "Redis" if config.get("redis") else "in-memory layer"
    workers = config.get("workers", 1)
    server = f"{config['server']}, " if config.get("server") else ""
    return f"{server}{database} + {layer}" + (f", {workers} workers" if workers > 1 else "")


def print_table(report: dict[str, Any]) -> None:
    results, machine = report["results"], report["machine"]
    print()
    print(
        f"Bridge latency ({setup_label(report)}), {machine['nproc']} CPUs ({machine['cpu_model']}), "
        f"Python {machine['python']}."
    )
    print(
        f"NOTE: the driver, the fake OpenAI server and the server share these {machine['nproc']} CPUs; "
        "latencies include two loopback hops and the receiving loop's scheduling (lag shown below)."
    )
    head = (
        f"{'calls':>5} | {'s':>3} | {'caller->OpenAI ms p50/p99/max':>29} | "
        f"{'OpenAI->caller ms p50/p99/max':>29} | "
        f"{'lost up/down':>12} | {'reord':>5} | {'no conn/drop':>12} | {'1st audio ms p50/max':>20} | "
        f"{'srv CPU % (per call)':>20} | {'RSS MiB (KiB/call)':>18} | {'busy%':>5}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        up, down = r["caller_to_openai_ms"], r["openai_to_caller_ms"]
        uf, df = r["caller_to_openai_frames"], r["openai_to_caller_frames"]
        first = r["first_agent_audio_ms"]
        print(
            f"{r['calls']:>5} | {r['seconds']:>3g} | "
            f"{fmt(up['p50']):>9}/{fmt(up['p99']):>9}/{fmt(up['max']):>9} | "
            f"{fmt(down['p50']):>9}/{fmt(down['p99']):>9}/{fmt(down['max']):>9} | "
            f"{uf['lost']:>5}/{df['lost']:<6} | "
            f"{uf['reordered'] + df['reordered']:>5} | "
            f"{r['calls_failed_to_connect']:>5}/{r['calls_dropped']:<6} | "
            f"{fmt(first['p50'], 0):>9}/{fmt(first['max'], 0):<10} | "
            f"{fmt(r['server_cpu_pct']):>8} ({fmt(r['server_cpu_pct_per_call'], 2):>8}) | "
            f"{fmt(r['server_rss_peak_mib']):>7} ({fmt(r['server_rss_per_call_kib'], 0):>7}) | "
            f"{fmt(r['machine_busy_pct'], 0):>5}"
        )
    for skipped in report.get("skipped_rounds", []):
        print(f"{skipped['calls']:>5} | skipped: {skipped['reason']}")
    print(
        "lost: sent but never delivered, by calls that connected (down: excluding audio the bridge "
        "drops on purpose after a barge-in); no conn/drop: calls whose webhook or Media Stream "
        "handshake failed / calls cut off later; srv CPU: server process(es), 100 = one core (an "
        "event loop is one thread); RSS per call: peak above the idle server, recording on; "
        "busy%: whole machine, all CPUs."
    )
    print()
    print("Frames (20 ms each), traffic and the measuring side's own load:")
    for r in results:
        uf, df = r["caller_to_openai_frames"], r["openai_to_caller_frames"]
        lag, late, fake_lag = (
            r["driver_loop_lag_ms"],
            r["driver_send_lateness_ms"],
            r["fake_loop_lag_ms"] or {},
        )
        print(
            f"  {r['calls']:>3} calls: up sent {uf['sent']} delivered {uf['delivered']} "
            f"(buffered during OpenAI connect {uf['early']}, dup {uf['duplicated']}, "
            f"corrupt {uf['corrupt']}); down expected {df['expected']} delivered {df['delivered']} "
            f"(dropped after barge-in {df['dropped_after_barge_in']}, "
            f"after hang-up {df['sent_after_hangup']}, misrouted {df['misrouted']}, corrupt {df['corrupt']})"
        )
        trunc = r.get("barge_in_truncation_error_ms") or {}
        print(
            f"             turns {r['turns']}, barge-ins {r['barge_ins']}, clears {r['clears']}, "
            f"recordings stored {fmt(r['recordings_stored'])} of {r['calls_connected']} connected calls, "
            f"close codes {r['close_codes']}; ramp {r['ramp_s']:g} s; "
            f"barge-in truncation vs heard |error| p50/p99/max {fmt(trunc.get('p50'))}/"
            f"{fmt(trunc.get('p99'))}/{fmt(trunc.get('max'))} ms, over 20 ms {trunc.get('over_one_frame')}, "
            f"clears without a truncate {trunc.get('clears_without_truncate')}"
            + (f"; ABANDONED: {r['abandoned']}" if r["abandoned"] else "")
        )
        print(
            f"             CPU % fake {fmt(r['fake_cpu_pct'])} driver {fmt(r['driver_cpu_pct'])} "
            f"other processes {fmt(r.get('other_processes_cpu_pct'))}; "
            f"driver loop lag p99/max {fmt(lag['p99'])}/{fmt(lag['max'])} ms, "
            f"send lateness p99/max {fmt(late['p99'])}/{fmt(late['max'])} ms, "
            f"fake loop lag p99/max {fmt(fake_lag.get('p99'))}/{fmt(fake_lag.get('max'))} ms"
        )
        floor = r["direct_floor_ms"]
        print(
            f"             measuring floor (driver -> fake directly, no bridge, same load) "
            f"p50/p99/max {fmt(floor['p50'])}/{fmt(floor['p99'])}/{fmt(floor['max'])} ms"
        )
        activity = r.get("database_activity")
        if activity:
            frames = uf["sent"] + df["delivered"]
            print(
                f"             database: {activity['transactions']} transactions, "
                f"{activity['rows_inserted']} rows inserted, {activity['rows_updated']} updated "
                f"for {frames} frames "
                f"({activity['transactions'] / max(1, r['calls']):.0f} transactions per call)"
            )
        for failure in r["failed_calls"][:3]:
            print(f"             failed: {failure}")
    total = report.get("database_activity_total")
    if total:
        print(f"Database over the whole run (pg_stat_database after the server stopped): {total}")


def markdown_table(report: dict[str, Any]) -> str:
    """The README's table."""

    def ms(value: Any) -> str:
        return "-" if value is None else f"{value:.1f}" if value < 100 else f"{value:.0f}"

    def way(stats: dict[str, Any]) -> str:
        return f"{ms(stats['p50'])} / {ms(stats['p99'])} / {ms(stats['max'])}"

    lines = [
        "| calls | call length | caller→OpenAI p50 / p99 / max ms | OpenAI→caller p50 / p99 / max ms "
        "| frames lost / reordered | calls not connected / dropped | first audio p50 / max ms "
        "| server CPU % (per call) | server RSS MiB (per call) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        uf, df = r["caller_to_openai_frames"], r["openai_to_caller_frames"]
        first = r["first_agent_audio_ms"]
        cut = " (cut at its time cap)" if r.get("abandoned") else ""
        lines.append(
            f"| {r['calls']}{cut} | {r['seconds']:g} s | {way(r['caller_to_openai_ms'])} "
            f"| {way(r['openai_to_caller_ms'])} "
            f"| {uf['lost'] + df['lost']} / {uf['reordered'] + df['reordered']} "
            f"| {r['calls_failed_to_connect']} / {r['calls_dropped']} "
            f"| {ms(first['p50'])} / {ms(first['max'])} "
            f"| {fmt(r['server_cpu_pct'], 0)} ({fmt(r['server_cpu_pct_per_call'], 2)}) "
            f"| {fmt(r['server_rss_peak_mib'], 0)} ({fmt(r['server_rss_per_call_kib'], 0)} KiB) |"
        )
    for skipped in report.get("skipped_rounds", []):
        lines.append(f"| {skipped['calls']} | skipped: {skipped['reason']} | | | | | | | |")
    return "\n".join(lines) + "\n"


def round_seconds(args: argparse.Namespace) -> list[float]:
    """Call length per round: ``--seconds`` (one value, or one per ``--calls``), else 20 s
    below 100 calls and 15 s from 100 up (the full default run stays well under 10 minutes)."""
    if not args.seconds:
        return [20.0 if n < 100 else 15.0 for n in args.calls]
    if len(args.seconds) == 1:
        return args.seconds * len(args.calls)
    if len(args.seconds) != len(args.calls):
        raise SystemExit("--seconds takes one value, or one per --calls value")
    return list(args.seconds)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    # Server and fake logs next to the results, one folder per output: a later run must not
    # overwrite the log that explains an earlier run's failures.
    logs = args.output.parent / f"{args.output.stem}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    fake_options = [
        f"--greeting-ms={args.greeting_ms}",
        f"--delta-ms={args.delta_ms}",
        f"--speedup={args.speedup}",
    ]
    postgres: tuple[str, str] | None = None  # (bench database URL, maintenance URL)
    redis_url = ""
    outcome: dict[str, Any] = {}
    try:
        fake, fake_port = start_fake(args.fake_port, logs / "fake_openai.log", fake_options)
        processes.append(fake)
        realtime_url = f"ws://127.0.0.1:{fake_port}/v1/realtime"
        pids = {"fake": fake.pid, "driver": os.getpid()}
        servers: list[subprocess.Popen[bytes]] = []
        server_logs: list[Path] = []
        if args.server_url:
            database_url = args.database_url or ""
            base_url = args.server_url.rstrip("/")
            public = (args.public_base_url or base_url).rstrip("/")
            worker_urls = [base_url]
            if args.database_url:
                env = child_env({"DATABASE_URL": database_url, "SECRET_KEY": "bench", "DEBUG": "false"})
                await asyncio.to_thread(
                    prepare_database, env, max(600, int(max(args.round_seconds)) * 2 + 60)
                )
            server_pids = [args.server_pid] if args.server_pid else []
            print(f"Using the server at {base_url}; point its OPENAI_REALTIME_URL at {realtime_url}")
        else:
            if args.database_url.startswith("postgres"):
                postgres = await asyncio.to_thread(postgres_create, args.database_url)
                database_url = postgres[0]
                name = urllib.parse.urlsplit(database_url).path[1:]
                print(f"PostgreSQL database {name} (dropped after the run)")
            else:
                database_url = args.database_url or f"sqlite:///{workdir / 'bench.sqlite3'}"
            if args.redis_url:
                redis_url = await asyncio.to_thread(redis_dedicated, args.redis_url)
                print(f"Redis channel layer on {redis_url}")
            ports = [free_port() for _ in range(args.workers)]
            worker_urls = [f"http://127.0.0.1:{port}" for port in ports]
            public = worker_urls[0]  # what Twilio would see: one public origin for every worker
            env = {
                "DATABASE_URL": database_url,
                "TWILIO_AUTH_TOKEN": args.auth_token,
                "OPENAI_API_KEY": OPENAI_KEY,
                "OPENAI_REALTIME_URL": realtime_url,
                "PUBLIC_BASE_URL": public,
                "DEBUG": "false",
                "SECRET_KEY": "bridge-latency-bench-not-a-secret",
                "LOG_LEVEL": "WARNING",
                "MEDIA_ROOT": str(workdir / "media"),  # recordings, as in production
            }
            if redis_url:
                env["REDIS_URL"] = redis_url
            env = child_env(env)
            await asyncio.to_thread(prepare_database, env, max(600, int(max(args.round_seconds)) * 2 + 60))
            plan = analysis_load.PLAN_SETUP.format(number=BENCH_NUMBER, enabled=args.analysis)
            await asyncio.to_thread(run_manage, env, "shell", "-c", plan)
            analysis_worker, analysis_env = None, {}
            if args.analysis:
                responses_port = free_port()
                responses = analysis_load.start_responses_fake(
                    responses_port, logs / "fake_responses.log", env
                )
                processes.append(responses)
                analysis_env = env | {
                    "OPENAI_BASE_URL": f"http://127.0.0.1:{responses_port}/v1",
                    "LOG_LEVEL": "INFO",
                }
                analysis_worker = analysis_load.start_worker(analysis_env, logs / "task_worker.log")
                processes.append(analysis_worker)
                print(
                    f"Analysis on: task worker pid {analysis_worker.pid}, "
                    f"fake Responses API :{responses_port}"
                )
            for i, port in enumerate(ports):
                log_path = logs / (f"{args.server}.log" if args.workers == 1 else f"{args.server}-{i}.log")
                server = start_server(args.server, env, port, log_path)
                processes.append(server)
                servers.append(server)
                server_logs.append(log_path)
            server_pids = [server.pid for server in servers]
        ctx = Context(
            args=args,
            call_settings=CallSettings(
                base_url=worker_urls[0],
                public_base_url=public,
                auth_token=args.auth_token,
                seconds=0,
                drain=args.drain,
                barge_in_share=args.barge_in_share,
            ),
            worker_urls=worker_urls,
            fake_url=f"ws://127.0.0.1:{fake_port}/bench/control",
            realtime_url=realtime_url,
            pids=pids,
            server_pids=server_pids,
            servers=servers,
            server_logs=server_logs,
            database_url=database_url,
            postgres=postgres is not None,
        )
        if not args.server_url:
            ctx.analysis_worker, ctx.analysis_env = analysis_worker, analysis_env
        # One short call per worker first: imports, connections and caches are warm.
        await run_round(ctx, len(worker_urls), 3.0, warmup=True)
        # A server's worker processes exist once it serves (granian forks its worker).
        server_pids = [p for pid in server_pids for p in process_tree(pid)]
        ctx.server_pids = server_pids
        await asyncio.sleep(1.0)
        ctx.idle_rss_kib = total([rss_kib(pid) for pid in server_pids])
        results: list[dict[str, Any]] = []
        skipped: list[dict[str, Any]] = []
        broke_at = 0
        for n, seconds in zip(args.calls, args.round_seconds, strict=True):
            _, ramp, cap = round_shape(args, n, seconds)
            left = args.max_total_seconds - (time.monotonic() - args.started)
            if broke_at and n >= broke_at:
                reason = f"a round of {broke_at} calls was already abandoned"
            elif seconds + ramp + args.drain + 10 > left:
                reason = f"would not fit in --max-total-seconds={args.max_total_seconds:g}"
            else:
                reason = ""
            if reason:
                print(f"... {n} concurrent calls skipped: {reason}", flush=True)
                skipped.append({"calls": n, "seconds": seconds, "reason": reason})
                continue
            print(
                f"... {n} concurrent call(s) for {seconds:g} s (started over {ramp:.1f} s, cap {cap:.0f} s)",
                flush=True,
            )
            background = await wait_quiet(ctx, args.wait_quiet) if args.wait_quiet else None
            if ctx.analysis_worker is not None and args.analysis_backlog:
                # Held back while the backlog is made, let go once the round's calls are live.
                os.kill(ctx.analysis_worker.pid, signal.SIGSTOP)
                code = analysis_load.BACKLOG_SETUP.format(number=BENCH_NUMBER, count=args.analysis_backlog)
                before = set(await asyncio.to_thread(analysis_load.backlog_sids, ctx.database_url))
                await asyncio.to_thread(run_manage, ctx.analysis_env, "shell", "-c", code)
                after = await asyncio.to_thread(analysis_load.backlog_sids, ctx.database_url)
                ctx.backlog_sids = [sid for sid in after if sid not in before]
                if args.wait_quiet:
                    await wait_quiet(ctx, args.wait_quiet)
            result = await run_round(ctx, n, seconds)
            result["background_cpu_pct_before"] = background
            results.append(result)
            if result["abandoned"]:
                broke_at = n
            await asyncio.sleep(args.pause)
        outcome = {
            "results": results,
            "skipped_rounds": skipped,
            "database": database_url.split(":", 1)[0] if database_url else "server's own",
            "redis": bool(redis_url or args.redis_url),
        }
        return outcome
    finally:
        for process in reversed(processes):
            stop_process(process)
        if postgres is not None:
            with contextlib.suppress(Exception):
                # Statistics of the server's connections are flushed when they close.
                await asyncio.sleep(1.0)
                outcome["database_activity_total"] = await asyncio.to_thread(postgres_activity, postgres[0])
            try:
                await asyncio.to_thread(postgres_drop, *postgres)
            except Exception as exc:
                print(f"Could not drop the benchmark database {postgres[0]}: {exc}", file=sys.stderr)
        if redis_url:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(redis_clear, redis_url)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--calls",
        type=int,
        nargs="+",
        default=[1, 10, 50, 100, 200, 400],
        help="concurrent calls per round (default: 1 10 50 100 200 400)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        nargs="+",
        default=None,
        help="length of each call: one value, or one per --calls (default: 20 below 100 calls, 15 from 100)",
    )
    parser.add_argument(
        "--database-url",
        default="",
        help="default: a temporary SQLite file; postgres://...: a fresh database there, dropped after",
    )
    parser.add_argument(
        "--redis-url",
        default="",
        help=f"Redis channel layer for the server (db {BENCH_REDIS_DB} unless the URL names one)",
    )
    parser.add_argument("--workers", type=int, default=1, help="server processes; calls are spread over them")
    parser.add_argument(
        "--analysis",
        action="store_true",
        help="post-call analysis on: the agent's plan enabled, a task worker and a fake Responses API",
    )
    parser.add_argument(
        "--analysis-backlog",
        type=int,
        default=0,
        metavar="N",
        help="with --analysis: before each round, N ended calls' analyses queued, "
        "released once the round's calls are live",
    )
    parser.add_argument(
        "--server",
        choices=ASGI_SERVERS,
        default=PRODUCTION_SERVER,
        help=f"the ASGI server that runs our application (default: production's, {PRODUCTION_SERVER})",
    )
    parser.add_argument("--server-url", default="", help="use this running server instead of starting one")
    parser.add_argument("--server-pid", type=int, default=0, help="with --server-url: its pid, for CPU/RSS")
    parser.add_argument("--public-base-url", default="", help="with --server-url: its PUBLIC_BASE_URL")
    parser.add_argument("--auth-token", default=AUTH_TOKEN, help="TWILIO_AUTH_TOKEN the server checks")
    parser.add_argument("--fake-port", type=int, default=0, help="port of the fake OpenAI server (0: any)")
    parser.add_argument("--stagger", type=float, default=0.05, help="seconds between call starts")
    parser.add_argument(
        "--max-ramp", type=float, default=5.0, help="start a round's calls within this many s"
    )
    parser.add_argument("--drain", type=float, default=2.0, help="quiet seconds before hanging up")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between rounds")
    parser.add_argument(
        "--round-timeout",
        type=float,
        default=0,
        help="hard cap per round (default: call length + ramp + 47 s)",
    )
    parser.add_argument(
        "--max-total-seconds",
        type=float,
        default=570,
        help="skip rounds that would end the run later than this",
    )
    parser.add_argument(
        "--max-server-rss-mib", type=int, default=4096, help="abandon a round when the server grows past this"
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        help="before each round, wait up to this many s for other processes to go quiet",
    )
    parser.add_argument("--barge-in-share", type=float, default=0.35, help="share of answers barged into")
    parser.add_argument("--greeting-ms", type=int, default=2000)
    parser.add_argument("--delta-ms", type=int, default=200, help="agent audio per output_audio.delta")
    parser.add_argument("--speedup", type=float, default=4.0, help="agent audio streaming speed vs real time")
    parser.add_argument("--py-spy", action="store_true", help="profile the server with py-spy each round")
    parser.add_argument("--plot", type=Path, default=None, help="draw latency, CPU and memory to this PNG")
    parser.add_argument("--output", type=Path, default=RESULTS / "bridge_latency.json")
    args = parser.parse_args()
    if args.workers < 1 or any(n < 1 for n in args.calls):
        parser.error("--workers and --calls must be at least 1")
    if args.server_url and (args.workers != 1 or args.redis_url):
        parser.error("--workers and --redis-url configure the server this script starts, not --server-url")
    args.round_seconds = round_seconds(args)
    args.started = time.monotonic()
    raise_open_files_limit()
    machine = machine_info()
    machine["background_cpu_pct_before_run"] = background_cpu()
    if machine["background_cpu_pct_before_run"] > 10:
        print(
            f"WARNING: other processes use {machine['background_cpu_pct_before_run']:g} % CPU "
            "(100 = one core): the numbers will be disturbed.",
            flush=True,
        )
    outcome = asyncio.run(bench(args))
    elapsed = time.monotonic() - args.started
    report = {
        "benchmark": "bridge_latency",
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "run_seconds": round(elapsed, 1),
        "machine": machine,
        "shared_cpus_note": (
            f"driver, fake OpenAI server and server share {machine['nproc']} CPUs; latencies include "
            "two loopback hops and the receiving event loop's scheduling delay"
        ),
        "config": {
            "calls": args.calls,
            "seconds": args.round_seconds,
            "stagger_s": args.stagger,
            "max_ramp_s": args.max_ramp,
            "drain_s": args.drain,
            "barge_in_share": args.barge_in_share,
            "greeting_ms": args.greeting_ms,
            "delta_ms": args.delta_ms,
            "speedup": args.speedup,
            "database": outcome["database"],
            "redis": outcome["redis"],
            "workers": args.workers,
            "server": None if args.server_url else args.server,
            "recording": True,
            "server_url": args.server_url or None,
            "py_spy": args.py_spy,
        },
        "results": outcome["results"],
        "skipped_rounds": outcome["skipped_rounds"],
        "database_activity_total": outcome.get("database_activity_total"),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown_table(report))
    print_table(report)
    if args.plot:
        from bench.plot import plot_reports

        plot_reports([report], args.plot)
        print(f"Plot: {args.plot}")
    markdown = args.output.with_suffix(".md")
    print(f"\nTotal run time {elapsed:.0f} s. JSON: {args.output}; Markdown table: {markdown}")


if __name__ == "__main__":
    main()
