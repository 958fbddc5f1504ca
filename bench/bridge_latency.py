"""Latency the bridge adds to a phone call, each way, with N concurrent calls.

    .venv/bin/python bench/bridge_latency.py --calls 1 10 50 --seconds 20

Three processes share the machine: this driver (N simulated Twilio callers in one event
loop), a lean fake of the OpenAI Realtime GA API (``bench/fake_openai_server.py``, its own
process so its CPU does not compete in the driver's loop) and the real server
(``python -m daphne voiceagent.asgi:application``) on a fresh, migrated SQLite database.

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

``--database-url`` / ``--redis-url`` run the server on PostgreSQL / Redis;
``--server-url`` targets a server that is already running (start it with
``OPENAI_REALTIME_URL=ws://127.0.0.1:<--fake-port>/v1/realtime`` and the same
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

from bench.wire import (  # noqa: E402
    AGENT_FILLER,
    AGENT_MAGIC,
    AGENT_TAG,
    BLOCK_BYTES,
    FRAME_MS,
    caller_frame,
)
from calls.fakes.twilio_caller import CallerConfig, SimulatedCaller, twilio_signature  # noqa: E402

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
    for name in ("django", "channels", "daphne", "twisted", "autobahn", "websockets"):
        with contextlib.suppress(PackageNotFoundError):
            versions[name] = version(name)
    return {
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
        max_call_seconds={max_seconds}, tools=[],
    ),
)
"""


def prepare_database(env: dict[str, str], max_seconds: int) -> None:
    run_manage(env, "migrate", "--noinput")
    code = AGENT_SETUP.format(number=BENCH_NUMBER, greeting=GREETING, max_seconds=max_seconds)
    run_manage(env, "shell", "-c", code)


def stop_process(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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


def start_daphne(env: dict[str, str], port: int, log_path: Path) -> subprocess.Popen[bytes]:
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "voiceagent.asgi:application"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"daphne exited at start-up:\n{log_path.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    stop_process(process)
    raise RuntimeError(f"daphne did not listen within 60 s:\n{log_path.read_text()}")


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
            self.error = self.error or f"{type(exc).__name__}: {exc}"

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
        async with connect(
            url,
            additional_headers={"x-twilio-signature": signature},
            compression=None,
            ping_interval=None,
            proxy=None,
            open_timeout=30,
            close_timeout=5,
            max_size=2**20,
        ) as ws:
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
                        self.play_end = now
                        while self.marks:  # Twilio echoes every pending mark at once
                            await ws.send(self._mark_echo(self.marks.popleft()[1]))
                    else:
                        self.protocol_errors += 1
                except (KeyError, TypeError, ValueError):
                    self.protocol_errors += 1

    def _on_audio(self, data: bytes, now: float) -> None:
        if self.t_first_audio is None:
            self.t_first_audio = now
        self.t_last_audio = now
        self.play_end = max(now, self.play_end) + len(data) / 8000
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


@dataclass
class Monitors:
    pids: dict[str, int]
    samples: list[Sample] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)

    def sample(self) -> Sample:
        sample = Sample(
            time.monotonic(),
            {name: cpu_seconds(pid) for name, pid in self.pids.items()},
            rss_kib(self.pids["server"]) if "server" in self.pids else None,
            system_jiffies(),
        )
        self.samples.append(sample)
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
    for call in calls:
        session = sessions.get(call.id)
        if call.error or session is None:
            failed.append(
                {"call": call.id, "error": call.error or "no OpenAI session", "close": call.close_code}
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
        "failed_calls": failed,
        "timeline": {
            "caller_to_openai_ms": timeline(up_points, origin),
            "openai_to_caller_ms": timeline(down_points, origin),
        },
    }


# -- the benchmark -----------------------------------------------------------------------


@dataclass
class Context:
    args: argparse.Namespace
    call_settings: CallSettings
    fake_url: str
    realtime_url: str
    pids: dict[str, int]
    server: subprocess.Popen[bytes] | None
    server_log: Path | None
    next_call_id: int = 1
    idle_rss_kib: int | None = None


async def run_round(ctx: Context, n: int, seconds: float, *, warmup: bool = False) -> dict[str, Any]:
    settings = CallSettings(**{**ctx.call_settings.__dict__, "seconds": seconds})
    calls = [BenchCall(ctx.next_call_id + i, settings) for i in range(n)]
    ctx.next_call_id += n
    monitors = Monitors(ctx.pids)
    sampler = asyncio.create_task(monitors.run_sampler())
    lag = asyncio.create_task(monitors.run_lag())
    profiler = None if warmup else start_profiler(ctx, n, seconds)
    began = time.monotonic()
    start = began + 0.2
    probe = asyncio.create_task(direct_probe(ctx.realtime_url, start, seconds)) if not warmup else None
    await asyncio.gather(*(call.run(start + i * ctx.args.stagger) for i, call in enumerate(calls)))
    probe_sent: list[float] = []
    if probe is not None:
        try:
            probe_sent = await probe
        except (OSError, ConnectionClosed) as exc:
            print(f"    (the direct probe failed: {exc})")
    finished = time.monotonic()
    for task in (sampler, lag):
        task.cancel()
    await asyncio.gather(sampler, lag, return_exceptions=True)
    if profiler is not None:
        await asyncio.to_thread(profiler.wait)
    await asyncio.sleep(0.5)  # the fake sees the last closes
    dump = await fake_dump(ctx.fake_url)
    if ctx.server is not None and ctx.server.poll() is not None:
        log = ctx.server_log.read_text(errors="replace")[-4000:] if ctx.server_log else ""
        raise RuntimeError(f"the server died during the round with {n} calls:\n{log}")
    if warmup:
        return {}
    result = analyse(calls, dump, start)
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
    result["direct_floor_ms"] = probe_latency(probe_sent, dump)
    result.update(
        {
            "calls": n,
            "seconds": seconds,
            "wall_s": round(finished - began, 2),
            "cpu_window_s": usage.get("window_s"),
            "server_cpu_pct": server_cpu,
            "server_cpu_pct_per_call": None if server_cpu is None else round(server_cpu / n, 2),
            "fake_cpu_pct": usage.get("fake_cpu_pct"),
            "driver_cpu_pct": usage.get("driver_cpu_pct"),
            "machine_busy_pct": usage.get("machine_busy_pct"),
            "server_rss_idle_mib": None if ctx.idle_rss_kib is None else round(ctx.idle_rss_kib / 1024, 1),
            "server_rss_peak_mib": round(peak / 1024, 1) if peak else None,
            "server_rss_per_call_kib": (
                round((peak - ctx.idle_rss_kib) / n, 1) if peak and ctx.idle_rss_kib is not None else None
            ),
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


def merge_counts(counts: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for count in counts:
        for key, value in count.items():
            total[key] = total.get(key, 0) + value
    return dict(sorted(total.items()))


def start_profiler(ctx: Context, n: int, seconds: float) -> subprocess.Popen[bytes] | None:
    if not ctx.args.py_spy or "server" not in ctx.pids:
        return None
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = ctx.args.output.parent / f"daphne-{n}calls"
    command = [py_spy, "record", "--pid", str(ctx.pids["server"]), "--duration", str(int(seconds))]
    command += ["--rate", "100", "--nonblocking", "--gil", "--format", "raw", "--output", f"{out}.txt"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def print_table(results: list[dict[str, Any]], machine: dict[str, Any], args: argparse.Namespace) -> None:
    print()
    print(
        f"Bridge latency, {args.seconds:g} s calls, {machine['nproc']} CPUs ({machine['cpu_model']}), "
        f"Python {machine['python']}."
    )
    print(
        f"NOTE: the driver, the fake OpenAI server and the server share these {machine['nproc']} CPUs; "
        "latencies include two loopback hops and the receiving loop's scheduling (lag shown below)."
    )
    head = (
        f"{'calls':>5} | {'caller->OpenAI ms p50/p99/max':>29} | {'OpenAI->caller ms p50/p99/max':>29} | "
        f"{'lost up/down':>12} | {'reord':>5} | {'1st audio ms p50/max':>20} | "
        f"{'srv CPU % (per call)':>20} | {'RSS MiB (KiB/call)':>18} | {'busy%':>5}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        up, down = r["caller_to_openai_ms"], r["openai_to_caller_ms"]
        uf, df = r["caller_to_openai_frames"], r["openai_to_caller_frames"]
        first = r["first_agent_audio_ms"]
        print(
            f"{r['calls']:>5} | "
            f"{fmt(up['p50']):>9}/{fmt(up['p99']):>9}/{fmt(up['max']):>9} | "
            f"{fmt(down['p50']):>9}/{fmt(down['p99']):>9}/{fmt(down['max']):>9} | "
            f"{uf['lost']:>5}/{df['lost']:<6} | "
            f"{uf['reordered'] + df['reordered']:>5} | "
            f"{fmt(first['p50'], 0):>9}/{fmt(first['max'], 0):<10} | "
            f"{fmt(r['server_cpu_pct']):>8} ({fmt(r['server_cpu_pct_per_call'], 2):>8}) | "
            f"{fmt(r['server_rss_peak_mib']):>7} ({fmt(r['server_rss_per_call_kib'], 0):>7}) | "
            f"{fmt(r['machine_busy_pct'], 0):>5}"
        )
    print(
        "lost: sent but never delivered (down: excluding audio the bridge drops on purpose after a "
        "barge-in); srv CPU: daphne process, 100 = one core (its event loop is one thread); "
        "RSS per call: peak above the idle server; busy%: whole machine, all CPUs."
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
        print(
            f"             turns {r['turns']}, barge-ins {r['barge_ins']}, clears {r['clears']}, "
            f"failed calls {len(r['failed_calls'])}, close codes {r['close_codes']}; "
            f"CPU % fake {fmt(r['fake_cpu_pct'])} driver {fmt(r['driver_cpu_pct'])}; "
            f"driver loop lag p99/max {fmt(lag['p99'])}/{fmt(lag['max'])} ms, "
            f"send lateness p99/max {fmt(late['p99'])}/{fmt(late['max'])} ms, "
            f"fake loop lag p99/max {fmt(fake_lag.get('p99'))}/{fmt(fake_lag.get('max'))} ms"
        )
        floor = r["direct_floor_ms"]
        print(
            f"             measuring floor (driver -> fake directly, no bridge, same load) "
            f"p50/p99/max {fmt(floor['p50'])}/{fmt(floor['p99'])}/{fmt(floor['max'])} ms"
        )
        for failure in r["failed_calls"][:3]:
            print(f"             failed: {failure}")


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    logs = args.output.parent / "logs"  # server and fake logs, next to the results
    logs.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    processes: list[subprocess.Popen[bytes]] = []
    fake_options = [
        f"--greeting-ms={args.greeting_ms}",
        f"--delta-ms={args.delta_ms}",
        f"--speedup={args.speedup}",
    ]
    try:
        fake, fake_port = start_fake(args.fake_port, logs / "fake_openai.log", fake_options)
        processes.append(fake)
        realtime_url = f"ws://127.0.0.1:{fake_port}/v1/realtime"
        database_url = args.database_url or f"sqlite:///{workdir / 'bench.sqlite3'}"
        server: subprocess.Popen[bytes] | None = None
        pids = {"fake": fake.pid, "driver": os.getpid()}
        if args.server_url:
            base_url = args.server_url.rstrip("/")
            public = (args.public_base_url or base_url).rstrip("/")
            if args.database_url:
                env = child_env({"DATABASE_URL": database_url, "SECRET_KEY": "bench", "DEBUG": "false"})
                await asyncio.to_thread(prepare_database, env, max(600, int(args.seconds) * 2 + 60))
            if args.server_pid:
                pids["server"] = args.server_pid
            print(f"Using the server at {base_url}; point its OPENAI_REALTIME_URL at {realtime_url}")
        else:
            port = free_port()
            base_url = public = f"http://127.0.0.1:{port}"
            env = {
                "DATABASE_URL": database_url,
                "TWILIO_AUTH_TOKEN": args.auth_token,
                "OPENAI_API_KEY": OPENAI_KEY,
                "OPENAI_REALTIME_URL": realtime_url,
                "PUBLIC_BASE_URL": public,
                "DEBUG": "false",
                "SECRET_KEY": "bridge-latency-bench-not-a-secret",
                "LOG_LEVEL": "WARNING",
            }
            if args.redis_url:
                env["REDIS_URL"] = args.redis_url
            env = child_env(env)
            await asyncio.to_thread(prepare_database, env, max(600, int(args.seconds) * 2 + 60))
            server = start_daphne(env, port, logs / "daphne.log")
            processes.append(server)
            pids["server"] = server.pid
        ctx = Context(
            args=args,
            call_settings=CallSettings(
                base_url=base_url,
                public_base_url=public,
                auth_token=args.auth_token,
                seconds=args.seconds,
                drain=args.drain,
                barge_in_share=args.barge_in_share,
            ),
            fake_url=f"ws://127.0.0.1:{fake_port}/bench/control",
            realtime_url=realtime_url,
            pids=pids,
            server=server,
            server_log=logs / "daphne.log" if server else None,
        )
        # One short call first: imports, connections and caches are warm before measuring.
        await run_round(ctx, 1, 3.0, warmup=True)
        await asyncio.sleep(1.0)
        if "server" in pids:
            ctx.idle_rss_kib = rss_kib(pids["server"])
        results = []
        for n in args.calls:
            print(f"... {n} concurrent call(s) for {args.seconds:g} s", flush=True)
            results.append(await run_round(ctx, n, args.seconds))
            await asyncio.sleep(args.pause)
        return {"results": results, "database": database_url.split(":", 1)[0], "redis": bool(args.redis_url)}
    finally:
        for process in reversed(processes):
            stop_process(process)
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--calls", type=int, nargs="+", default=[1, 10, 50], help="concurrent calls per round"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each call")
    parser.add_argument("--database-url", default="", help="default: a fresh temporary SQLite file")
    parser.add_argument("--redis-url", default="", help="REDIS_URL for the server (channel layer)")
    parser.add_argument("--server-url", default="", help="use this running server instead of starting one")
    parser.add_argument("--server-pid", type=int, default=0, help="with --server-url: its pid, for CPU/RSS")
    parser.add_argument("--public-base-url", default="", help="with --server-url: its PUBLIC_BASE_URL")
    parser.add_argument("--auth-token", default=AUTH_TOKEN, help="TWILIO_AUTH_TOKEN the server checks")
    parser.add_argument("--fake-port", type=int, default=0, help="port of the fake OpenAI server (0: any)")
    parser.add_argument("--stagger", type=float, default=0.05, help="seconds between call starts")
    parser.add_argument("--drain", type=float, default=2.0, help="quiet seconds before hanging up")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds between rounds")
    parser.add_argument("--barge-in-share", type=float, default=0.35, help="share of answers barged into")
    parser.add_argument("--greeting-ms", type=int, default=2000)
    parser.add_argument("--delta-ms", type=int, default=200, help="agent audio per output_audio.delta")
    parser.add_argument("--speedup", type=float, default=4.0, help="agent audio streaming speed vs real time")
    parser.add_argument("--py-spy", action="store_true", help="profile the server with py-spy each round")
    parser.add_argument("--output", type=Path, default=RESULTS / "bridge_latency.json")
    args = parser.parse_args()
    machine = machine_info()
    began = time.monotonic()
    outcome = asyncio.run(bench(args))
    elapsed = time.monotonic() - began
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
            "seconds": args.seconds,
            "stagger_s": args.stagger,
            "drain_s": args.drain,
            "barge_in_share": args.barge_in_share,
            "greeting_ms": args.greeting_ms,
            "delta_ms": args.delta_ms,
            "speedup": args.speedup,
            "database": outcome["database"],
            "redis": outcome["redis"],
            "server_url": args.server_url or None,
            "py_spy": args.py_spy,
        },
        "results": outcome["results"],
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print_table(outcome["results"], machine, args)
    print(f"\nTotal run time {elapsed:.0f} s. JSON: {args.output}")


if __name__ == "__main__":
    main()
