"""The production shape: two server processes sharing PostgreSQL and a Redis channel layer.

A call's webhook and its media socket may land on different workers; the live monitor and
its hang-up reach a call whichever worker holds it. Runs against the real PostgreSQL and
Redis on 127.0.0.1 (`.ci/run` starts them); without them this test fails, it never skips.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from channels_redis.core import RedisChannelLayer

from calls import live
from calls.fakes.openai_realtime import Reply, Script
from calls.fakes.twilio_caller import CallerConfig, SimulatedCaller
from calls.processes import stop_process, wait_for_port
from tests.conftest import ACCOUNT_SID, AUTH_TOKEN, OPENAI_KEY
from tests.servers import ROOT, LiveServer, free_port
from tests.test_e2e_bridge import hang_up_and_wait
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e

POSTGRES = "postgres://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379/7"
PUBLIC = "https://voice.example.test"  # what Twilio sees: the proxy in front of both workers
PRECONNECT_TTL = 2.0


@pytest.fixture(scope="module")
def shared_database() -> Iterator[str]:
    name = f"voiceagent_workers_{secrets.token_hex(4)}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = f"{POSTGRES}/{name}"
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT,
        env={"DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
        check=True,
    )
    yield url
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as admin:
        admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def workers(shared_database, fake_openai, fake_twilio_rest, tmp_path_factory) -> Iterator[list[LiveServer]]:
    env = {
        "DATABASE_URL": shared_database,
        "REDIS_URL": REDIS,
        "PUBLIC_BASE_URL": PUBLIC,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_API_BASE_URL": fake_twilio_rest.url,
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_REALTIME_URL": fake_openai.url,
        "DEBUG": "false",
        "SECRET_KEY": "multi-worker-test",
        "MEDIA_ROOT": str(tmp_path_factory.mktemp("media")),
        # Pre-connect is on (the default); a session the other worker never claims goes soon.
        "OPENAI_PRECONNECT_TTL": str(PRECONNECT_TTL),
    }
    # Production's one command: `manage.py serve` starts both, worker N with WORKER_ROUTE=wN.
    supervisor = start_serve(env, tmp_path_factory.mktemp("workers") / "serve.log", workers=2)
    yield supervisor.workers
    supervisor.stop()


@dataclass
class Serve:
    process: subprocess.Popen[bytes]
    log_path: Path
    workers: list[LiveServer]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process, timeout=40)


def start_serve(env: dict[str, str], log_path: Path, *, workers: int) -> Serve:
    first = free_port()
    while not all(port_is_free(first + n) for n in range(workers)):
        first = free_port()
    environment = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"} | env
    command = [sys.executable, "manage.py", "serve", "--workers", str(workers), "--port", str(first)]
    log = log_path.open("wb")
    process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT)
    serve = Serve(process, log_path, [])
    for n in range(workers):
        port = first + n
        wait_for_port(process, port, timeout=30, name=f"serve's worker {n + 1}", log=serve.log)
        serve.workers.append(LiveServer(f"http://127.0.0.1:{port}", port, process, log_path))
    return serve


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def query(database: str, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(database) as connection:
        cursor = connection.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def test_calls_across_workers_are_monitored_and_hung_up_through_redis(
    shared_database, workers, loop, fake_openai
):
    worker_a, worker_b = workers
    greeting = Reply(transcript="Hello from the shared agent.")
    query(shared_database, "UPDATE calls_agent SET greeting = %s, tools = '[]'", greeting.transcript)
    fake_openai.set_script(lambda: Script(replies=[Reply(transcript=greeting.transcript)]))

    def caller(webhook_on: LiveServer) -> SimulatedCaller:
        return SimulatedCaller(
            CallerConfig(base_url=webhook_on.url, public_base_url=PUBLIC, auth_token=AUTH_TOKEN)
        )

    async def scenario():
        layer = RedisChannelLayer(hosts=[REDIS])
        monitor = await layer.new_channel()
        await layer.group_add(live.LIVE_GROUP, monitor)
        first, second = caller(worker_a), caller(worker_a)
        for call, stream_on in ((first, worker_a), (second, worker_b)):
            assert (await call.post_webhook()).status == 200  # both webhooks on worker A...
            call.config.base_url = stream_on.url  # ...the second socket lands on worker B
            await call.connect_stream()
        for call in (first, second):
            await call.wait_heard(len(greeting.render_audio()))
        events: list[dict] = []

        async def until(predicate):
            while not any(predicate(e) for e in events):
                message = await asyncio.wait_for(layer.receive(monitor), timeout=10)
                events.append(message["event"])

        for call in (first, second):
            await until(lambda e, sid=call.call_sid: e["kind"] == "turn" and e["call_sid"] == sid)
        # An operator on worker A's live page hangs up the call that worker B holds.
        await live_hang_up(layer, second.call_sid)
        code = await second.wait_closed_by_server(timeout=10)
        await until(lambda e: e["kind"] == "call_ended" and e["call_sid"] == second.call_sid)
        assert not first.closed_by_server  # the other call is untouched
        await first.hang_up()
        await until(lambda e: e["kind"] == "call_ended" and e["call_sid"] == first.call_sid)
        for call in (first, second):
            await call.aclose()
        await layer.flush()
        return first, second, code, events

    first, second, code, events = loop.run(scenario(), timeout=90)
    assert code == 1000
    started = {e["call_sid"] for e in events if e["kind"] == "call_started"}
    assert started == {first.call_sid, second.call_sid}
    rows = dict(
        query(
            shared_database,
            "SELECT call_sid, ended_reason FROM calls_call WHERE call_sid IN (%s, %s)",
            first.call_sid,
            second.call_sid,
        )
    )
    assert rows == {first.call_sid: "caller_hung_up", second.call_sid: "operator_hung_up"}
    turns = query(shared_database, "SELECT count(*) FROM calls_turn")
    assert turns[0][0] == 2
    assert "Traceback" not in worker_a.log() + worker_b.log()


def test_stream_on_another_worker_connects_afresh_and_the_preconnect_expires_unused(
    shared_database, workers, loop, fake_openai
):
    worker_a, worker_b = workers
    greeting = Reply(transcript="Hello from the shared agent.")
    query(shared_database, "UPDATE calls_agent SET greeting = %s, tools = '[]'", greeting.transcript)
    fake_openai.set_script(lambda: Script(replies=[Reply(transcript=greeting.transcript)]))
    before, attempts = len(fake_openai.sessions), fake_openai.connection_attempts

    async def scenario():
        call = SimulatedCaller(
            CallerConfig(base_url=worker_a.url, public_base_url=PUBLIC, auth_token=AUTH_TOKEN)
        )
        webhook_at = loop.loop.time()
        assert (await call.post_webhook()).status == 200
        on_a = await fake_openai.wait_for_session(before)  # worker A pre-connects...
        await on_a.wait_for_event("session.update")
        call.config.base_url = worker_b.url  # ...but Twilio's socket lands on worker B
        await call.connect_stream()
        await call.wait_heard(len(greeting.render_audio()))
        on_b = fake_openai.sessions[before + 1]
        await on_a.wait_closed(timeout=PRECONNECT_TTL + 10)
        lived = loop.loop.time() - webhook_at
        assert await hang_up_and_wait(call) == 1000  # B stored the call before closing
        await on_b.wait_closed(timeout=10)
        return call, on_a, on_b, lived

    call, on_a, on_b, lived = loop.run(scenario(), timeout=60)
    assert bytes(call.heard) == greeting.render_audio()
    assert on_b.opened_at > call.stream_started_at  # B connected itself, at start
    assert len(on_b.events_of("session.update")) == 1 and on_b.events_of("response.create")
    assert on_a.close_code == 1000 and lived >= PRECONNECT_TTL
    assert on_a.events_of("response.create") == [] and on_a.append_count == 0
    assert fake_openai.connection_attempts == attempts + 2
    [(reason,)] = query(
        shared_database, "SELECT ended_reason FROM calls_call WHERE call_sid = %s", call.call_sid
    )
    assert reason == "caller_hung_up"
    assert f"call {call.call_sid}: pre-connected OpenAI session not claimed" in worker_a.log()
    assert "Traceback" not in worker_a.log() + worker_b.log()


async def live_hang_up(layer: RedisChannelLayer, call_sid: str) -> None:
    """What ``calls.live.request_hang_up`` sends, through this test's own Redis layer."""
    await layer.group_send(live.call_group(call_sid), {"type": "call.hangup", "by": "operator"})


def healthy(server: LiveServer) -> bool:
    try:
        with urllib.request.urlopen(server.url + "/healthz", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def test_serve_gives_each_worker_its_route_restarts_a_killed_one_and_stops_all_on_sigterm(
    shared_database, loop, fake_openai, tmp_path
):
    """`manage.py serve`, production's one command: worker N names route wN in the Stream URL
    (so the proxy brings the media socket back to the worker holding the pre-connected
    session), a worker killed with SIGKILL is started again, and SIGTERM stops every worker
    before the supervisor exits with status 0."""
    env = {
        "DATABASE_URL": shared_database,
        "PUBLIC_BASE_URL": PUBLIC,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_REALTIME_URL": fake_openai.url,
        "OPENAI_PRECONNECT": "false",
        "DEBUG": "false",
        "SECRET_KEY": "multi-worker-test",
        "REDIS_URL": REDIS,
    }
    serve = start_serve(env, tmp_path / "serve.log", workers=2)
    try:
        for number, worker in enumerate(serve.workers, start=1):
            caller = SimulatedCaller(
                CallerConfig(base_url=worker.url, public_base_url=PUBLIC, auth_token=AUTH_TOKEN)
            )
            result = loop.run(caller.post_webhook())
            assert result.status == 200
            assert result.stream_url is not None and result.stream_url.endswith(f"/media-stream/w{number}")
            loop.run(caller.aclose())

        children = worker_pids(serve.process.pid)
        assert len(children) == 2
        os.kill(children[0], signal.SIGKILL)
        killed = "Worker 1 exited with status -9"
        wait_until(lambda: killed in serve.log(), 10, "the supervisor seeing the kill")
        wait_until(lambda: all(healthy(w) for w in serve.workers), 20, "both workers serving again")
        replacement = worker_pids(serve.process.pid)
        assert len(replacement) == 2 and children[0] not in replacement and children[1] in replacement
    finally:
        serve.process.send_signal(signal.SIGTERM)
        assert serve.process.wait(timeout=40) == 0, serve.log()
    assert not any(Path(f"/proc/{pid}").exists() for pid in replacement)
    assert "Stopping 2 worker(s)" in serve.log()


def worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return [int(pid) for pid in children]
