"""End to end: PostgreSQL restarting under a running server (a maintenance window, a failover).
No call and no turn may be lost, neither in the calls in progress nor in the calls after it
(issue 12, defect 4). PostgreSQL only: the fault is PostgreSQL's own (tests/database_restart.py
says how it is made).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import pytest
from django.db import connection

from calls.fakes.openai_realtime import Reply, Script
from calls.models import Agent, Call, CallStatus, EndedReason, Role
from calls.processes import PRODUCTION_SERVER
from tests.database_restart import DatabaseRestart, outage
from tests.servers import application_error_in
from tests.test_e2e_bridge import caller_for, dial, speak
from tests.test_e2e_crash import STOP_CLOSE_CODES
from tests.waiting import wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        connection.vendor != "postgresql", reason="a PostgreSQL restart: needs PostgreSQL (DATABASE_URL)"
    ),
]


@pytest.fixture
def restart(live) -> Iterator[DatabaseRestart]:
    restart = DatabaseRestart()
    restart.ensure_up()  # a run killed mid-outage must not leave the database refusing connections
    yield restart
    restart.ensure_up()


GREETING = "Hello, Luigi's here."


def exchanges(n: int) -> tuple[Script, list[tuple[str, str]]]:
    """A greeting then ``n`` questions and answers: the script and the turns to be stored."""
    questions = [f"Question number {i}?" for i in range(1, n + 1)]
    answers = [Reply(transcript=f"Answer number {i}.") for i in range(1, n + 1)]
    expected = [(Role.AGENT, GREETING)]
    for question, answer in zip(questions, answers, strict=True):
        expected += [(Role.CALLER, question), (Role.AGENT, answer.transcript)]
    return Script(replies=[Reply(transcript=GREETING), *answers], caller_transcripts=questions), expected


def greeting_bytes() -> int:
    return len(Reply(transcript=GREETING).render_audio())


async def ask(caller, answers_heard: int) -> None:
    """Say something, and wait until the agent's answer has been played."""
    before = len(caller.heard)
    await caller.send_audio(speak())
    await caller.wait_for(lambda: len(caller.heard) > before, timeout=15)
    script_answer = Reply(transcript=f"Answer number {answers_heard}.")
    await caller.wait_heard(before + len(script_answer.render_audio()), timeout=15)


def stored_turns(call: Call) -> list[tuple[str, str]]:
    return list(call.turns.order_by("position").values_list("role", "text"))


def finished(call_sid: str) -> Call | None:
    return Call.objects.filter(call_sid=call_sid, ended_at__isnull=False).first()


def test_a_restart_mid_call_loses_no_turn_and_the_call_is_finalised(live, loop, fake_openai, restart):
    Agent.objects.update(greeting=GREETING)
    script, expected = exchanges(3)
    fake_openai.set_script(script)
    caller = caller_for(live)

    async def connect():
        await dial(caller)
        await caller.wait_heard(greeting_bytes())

    loop.run(connect())
    # the writer holds a connection
    wait_until(lambda: Call.objects.get().turns.count() == 1, 10, "the first turn stored")
    with outage(restart):
        loop.run(ask(caller, 1))  # two exchanges while the database is away: four turns queued
        loop.run(ask(caller, 2))
    loop.run(ask(caller, 3))
    loop.run(caller.hang_up())
    loop.run(caller.aclose())

    call = wait_until(lambda: finished(caller.call_sid), 30, "the call finalised")
    assert stored_turns(call) == expected
    assert (call.status, call.ended_reason) == (CallStatus.COMPLETED, EndedReason.CALLER_HUNG_UP)
    log = live.log()
    assert log.count(f"call {caller.call_sid}: database unavailable") == 1, log
    assert log.count(f"call {caller.call_sid}: storing resumed after") == 1, log
    assert not application_error_in(log)


def test_a_call_placed_after_a_restart_works_end_to_end(live, loop, fake_openai, restart):
    """The first call leaves the worker threads holding connections; the restart breaks them
    all. The next call must still be authenticated, greeted and stored."""
    Agent.objects.update(greeting=GREETING)
    for number in (1, 2):
        if number == 2:
            with outage(restart):
                pass
        script, expected = exchanges(1)
        fake_openai.set_script(script)
        caller = caller_for(live)

        async def talk(caller=caller):
            await dial(caller)
            await caller.wait_heard(greeting_bytes())
            await ask(caller, 1)
            await caller.hang_up()
            await caller.aclose()

        loop.run(talk())
        call = wait_until(lambda caller=caller: finished(caller.call_sid), 30, f"{caller.call_sid} finalised")
        assert stored_turns(call) == expected, f"call {number}"
        assert (call.status, call.ended_reason) == (CallStatus.COMPLETED, EndedReason.CALLER_HUNG_UP)
    assert not application_error_in(live.log())


def test_three_calls_through_a_restart_lose_nothing(live, loop, fake_openai, restart):
    """Three calls at once; each speaks through the outage and hangs up while the database is
    still away: every turn is written and every call finalised once it is back."""
    Agent.objects.update(greeting=GREETING)
    expected = exchanges(2)[1]
    fake_openai.set_script(lambda: exchanges(2)[0])
    callers = [caller_for(live) for _ in range(3)]

    async def connect(caller):
        await dial(caller)
        await caller.wait_heard(greeting_bytes())
        await ask(caller, 1)

    async def talk_and_hang_up(caller):
        await ask(caller, 2)
        await caller.hang_up()
        await caller.aclose()

    async def everyone(step):
        await asyncio.gather(*(step(caller) for caller in callers))

    loop.run(everyone(connect))
    wait_until(
        lambda: all(Call.objects.get(call_sid=c.call_sid).turns.count() == 3 for c in callers),
        10,
        "three turns stored for every call",
    )
    with outage(restart):
        loop.run(everyone(talk_and_hang_up))

    for caller in callers:
        call = wait_until(lambda caller=caller: finished(caller.call_sid), 30, f"{caller.call_sid} finalised")
        assert stored_turns(call) == expected, caller.call_sid
        assert (call.status, call.ended_reason) == (CallStatus.COMPLETED, EndedReason.CALLER_HUNG_UP)
    assert not application_error_in(live.log())


def test_a_stream_starting_during_a_restart_is_authenticated_once_it_is_back(
    live, loop, fake_openai, restart
):
    """The webhook answered before the restart; the media socket opens while the database is
    away. Authentication waits for it (briefly) instead of failing the call."""
    Agent.objects.update(greeting=GREETING)
    script, expected = exchanges(1)
    fake_openai.set_script(script)
    caller = caller_for(live)

    async def webhook():
        result = await caller.post_webhook()
        assert result.status == 200, result.body

    async def talk():
        await caller.wait_heard(greeting_bytes(), timeout=15)
        await ask(caller, 1)
        await caller.hang_up()
        await caller.aclose()

    loop.run(webhook())
    with outage(restart, seconds=2.0):
        loop.run(caller.connect_stream())
    loop.run(talk())

    call = wait_until(lambda: finished(caller.call_sid), 30, "the call finalised")
    assert stored_turns(call) == expected
    assert call.status == CallStatus.COMPLETED
    assert not application_error_in(live.log())


def test_a_stream_starting_while_the_database_stays_away_is_closed_cleanly(live, loop, fake_openai, restart):
    fake_openai.set_script(Script())
    caller = caller_for(live)

    async def webhook():
        result = await caller.post_webhook()
        assert result.status == 200, result.body

    loop.run(webhook())
    with outage(restart, seconds=0):
        loop.run(caller.connect_stream())
        code = loop.run(caller.wait_closed_by_server(timeout=20))
    loop.run(caller.aclose())
    assert code == 4500  # Twilio fetches <Connect action>: an apology if the database is back
    log = live.log()
    assert f"call {caller.call_sid}: database unavailable during authentication" in log, log
    assert not application_error_in(log)


@pytest.mark.parametrize("server_name", [PRODUCTION_SERVER, "daphne"])
def test_a_stop_during_a_restart_says_what_could_not_be_stored(
    live, loop, start_server, fake_openai, restart, server_name
):
    """SIGTERM (a deploy) while the database is away: the call is closed for Twilio (daphne:
    4500 from us; uvicorn: 1012 from the server itself), the process exits within the grace
    period, and the log says what is lost with it."""
    server = start_server(server_name)
    Agent.objects.update(greeting=GREETING)
    script, _ = exchanges(1)
    fake_openai.set_script(script)
    caller = caller_for(server)

    async def connect():
        await dial(caller)
        await caller.wait_heard(greeting_bytes())

    loop.run(connect())
    wait_until(lambda: Call.objects.get().turns.count() == 1, 10, "the first turn stored")
    with outage(restart, seconds=0):
        loop.run(ask(caller, 1))  # two turns queued
        server.process.send_signal(signal.SIGTERM)
        code = loop.run(caller.wait_closed_by_server(timeout=15))
        server.process.wait(timeout=20)
        assert server.stopped_cleanly, server.log()
    loop.run(caller.aclose())

    assert code == STOP_CLOSE_CODES[server_name]
    log = server.log()
    assert f"call {caller.call_sid}: not finished 5 s after the server began stopping" in log, log
    assert "(database unavailable); not stored yet: 2 turns, 1 call end;" in log, log
