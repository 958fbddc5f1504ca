"""Crash safety: a server killed mid-call loses no completed turn, the call is closed at the
next start; a database that is briefly away never stops the audio."""

from __future__ import annotations

import signal
import sqlite3
import threading
import time
import wave

import psycopg
import pytest
from django.core.management import call_command
from django.db import connection

from calls import services
from calls.fakes.openai_realtime import Reply, Script
from calls.models import Agent, Call, EndedReason, Role
from calls.processes import PRODUCTION_SERVER
from tests.test_e2e_bridge import caller_for, dial, hang_up_and_wait, speak
from tests.waiting import wait_until

pytestmark = pytest.mark.e2e


def three_turns_in(server, loop, fake_openai):
    """A call on ``server`` that has got as far as greeting, question and answer, all three
    stored: the moment the server process is then stopped or killed. Also returns the call's
    OpenAI session."""
    sessions_before = len(fake_openai.sessions)
    Agent.objects.update(greeting="Hello, Luigi's here.")
    greeting, answer = Reply(transcript="Hello, Luigi's here."), Reply(transcript="We open at noon.")
    fake_openai.set_script(Script(replies=[greeting, answer], caller_transcripts=["When do you open?"]))

    async def talk():
        caller = caller_for(server)
        await dial(caller)
        await caller.wait_heard(len(greeting.render_audio()))
        await caller.send_audio(speak())
        await caller.wait_heard(len(greeting.render_audio()) + len(answer.render_audio()))
        return caller

    caller = loop.run(talk())
    # The server writes turns from its own process: the test can only watch the database.
    wait_until(lambda: Call.objects.get().turns.count() == 3, 10, "three turns stored")
    [session] = fake_openai.sessions[sessions_before:]
    return caller, greeting, answer, session


def test_kill_9_mid_call_keeps_completed_turns_and_restart_closes_the_call(
    live, loop, start_server, fake_openai, media_root
):
    server = start_server()
    caller, greeting, answer, _session = three_turns_in(server, loop, fake_openai)
    server.process.kill()  # SIGKILL: no cleanup of any kind
    server.process.wait()
    loop.run(caller.wait_closed_by_server(timeout=10))
    loop.run(caller.aclose())

    call = Call.objects.get()
    assert call.ended_at is None  # nobody could finalise it
    assert [(t.role, t.text) for t in call.turns.order_by("position")] == [
        (Role.AGENT, greeting.transcript),
        (Role.CALLER, "When do you open?"),
        (Role.AGENT, answer.transcript),
    ]
    assert not call.recording  # the file is still in the work directory, header unfinished
    left_behind = media_root / "recordings" / "in-progress" / f"{call.call_sid}.wav"
    assert left_behind.exists()
    call_command("close_stale_calls", "--all")  # what `make run` does at start
    call.refresh_from_db()
    assert call.ended_reason == EndedReason.SERVER_RESTART and call.ended_at is not None
    # ...and what the dead process had recorded is stored, as a well-formed WAV.
    assert call.recording and not left_behind.exists()
    with call.recording.open("rb") as stored, wave.open(stored) as wav:
        assert wav.getnchannels() == 2 and wav.getframerate() == 8000
        assert wav.getnframes() * 4 == call.recording.size - 44
        assert wav.getnframes() > 8000  # the greeting and the answer were well over a second


# How each server closes the caller's socket when it stops: daphne cancels the application,
# which closes with 4500; uvicorn closes every socket with 1012 itself. Twilio fetches
# <Connect action> after either.
STOP_CLOSE_CODES = {"daphne": 4500, PRODUCTION_SERVER: 1012}


@pytest.mark.parametrize("server_name", [PRODUCTION_SERVER, "daphne"])
def test_sigterm_mid_call_ends_the_call_cleanly_and_keeps_everything(
    live, loop, start_server, fake_openai, media_root, server_name
):
    """A deploy stops the server: the call is finalised (not left open for the next start to
    find), turns and recording are stored, OpenAI is closed, and Twilio's stream is closed so
    it fetches ``<Connect action>`` and the caller hears the apology."""
    server = start_server(server_name)
    caller, greeting, answer, session = three_turns_in(server, loop, fake_openai)
    server.process.send_signal(signal.SIGTERM)
    assert loop.run(caller.wait_closed_by_server(timeout=15)) == STOP_CLOSE_CODES[server_name]
    server.process.wait(timeout=20)
    assert server.stopped_cleanly, server.log()
    loop.run(caller.aclose())

    call = Call.objects.get()
    assert call.ended_at is not None
    assert call.ended_reason == EndedReason.SERVER_RESTART
    assert "server stopped" in call.error
    assert [(t.role, t.text) for t in call.turns.order_by("position")] == [
        (Role.AGENT, greeting.transcript),
        (Role.CALLER, "When do you open?"),
        (Role.AGENT, answer.transcript),
    ]
    assert call.recording and call.recording.size > 44 + 8000 * 4  # over a second of stereo PCM
    assert session.close_code == 1000  # closed by us, not dropped with the process
    assert services.call_apology(call_sid=call.call_sid)  # what <Connect action> will say


def test_a_call_daphne_gives_up_on_while_it_is_stored_is_still_finished(
    live, loop, start_server, fake_openai
):
    """Daphne cancels a consumer still running ``--application-close-timeout`` seconds after
    its socket closed (here 0: at its next check, within a second). Storing the call's end,
    which waits up to 2 s for the caller's last words to be transcribed, goes on in a task of
    its own: the call is finalised as the caller's hang-up, not as a server restart. (The
    cancellation used to reach that task through ``disconnect``: the call stayed "in progress"
    and the turns still queued for the database were lost.)"""
    server = start_server("daphne", args=("--application-close-timeout", "0"))
    fake_openai.set_script(Script(caller_transcripts=["Bye."], transcription_delay=3.0))
    sessions_before = len(fake_openai.sessions)

    async def scenario():
        caller = caller_for(server)
        await dial(caller)
        session = await fake_openai.wait_for_session(sessions_before)
        await caller.send_audio(speak(600, 500))
        await session.wait_for_sent("input_audio_buffer.committed")
        await caller.hang_up()  # stop, then close: the transcript is 3 s away, the end waits 2 s

    loop.run(scenario())
    call = wait_until(lambda: Call.objects.filter(ended_at__isnull=False).first(), 10, "the call finalised")
    assert call.ended_reason == EndedReason.CALLER_HUNG_UP
    log = server.log()
    assert "took too long to shut down and was killed" in log  # daphne did cancel it
    assert "cancelled by the server while the call's end was being stored" in log
    assert "server stopping" not in log


class DatabaseOutage:
    """Hold an exclusive lock on the turn table from another connection, like a database
    that stops answering writes for a while."""

    def __init__(self) -> None:
        self.settings = connection.settings_dict
        self.release = threading.Event()
        self.locked = threading.Event()
        self.thread = threading.Thread(target=self._hold, daemon=True)

    def _hold(self) -> None:
        if self.settings["ENGINE"].endswith("sqlite3"):
            db = sqlite3.connect(self.settings["NAME"], timeout=20, isolation_level=None)
            db.execute("BEGIN EXCLUSIVE")
            self.locked.set()
            self.release.wait(30)
            db.execute("ROLLBACK")
            db.close()
        else:
            user = self.settings.get("USER") or "postgres"
            host = self.settings.get("HOST") or "127.0.0.1"
            url = f"postgresql://{user}@{host}:{self.settings.get('PORT') or 5432}/{self.settings['NAME']}"
            with psycopg.connect(url) as db:
                db.execute("LOCK TABLE calls_turn IN ACCESS EXCLUSIVE MODE")
                self.locked.set()
                self.release.wait(30)

    def __enter__(self) -> DatabaseOutage:
        self.thread.start()
        assert self.locked.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.thread.join(10)


def test_audio_goes_on_while_the_database_is_away_and_turns_are_written_after(live, loop, fake_openai):
    Agent.objects.update(greeting="Hello there.")
    greeting = Reply(transcript="Hello there.")
    answer = Reply(transcript="Yes, we deliver to your street.")
    fake_openai.set_script(Script(replies=[greeting, answer], caller_transcripts=["Do you deliver?"]))

    async def talk(caller):
        await caller.send_audio(speak())
        await caller.wait_heard(len(greeting.render_audio()) + len(answer.render_audio()), timeout=15)

    async def connect(caller):
        await dial(caller)
        await caller.wait_heard(len(greeting.render_audio()))

    caller = caller_for(live)
    loop.run(connect(caller))
    with DatabaseOutage():
        started = time.monotonic()
        loop.run(talk(caller))  # the whole exchange is heard while no turn can be written
        talked_for = time.monotonic() - started
    wait_until(lambda: Call.objects.get().turns.count() == 3, 10, "three turns stored")
    loop.run(hang_up_and_wait(caller))
    turns = list(Call.objects.get().turns.order_by("position").values_list("role", "text"))
    assert turns == [
        (Role.AGENT, greeting.transcript),
        (Role.CALLER, "Do you deliver?"),
        (Role.AGENT, answer.transcript),
    ]
    assert talked_for < 10


def test_turns_queued_when_the_caller_hangs_up_in_a_database_outage_are_written_after_it(
    live, loop, start_server, fake_openai
):
    """The caller hangs up while the database is away, with turns still queued; daphne then
    gives up on the consumer (``--application-close-timeout``, here 0). Once the database is
    back, every turn is written and the call is finalised: nothing said is lost."""
    server = start_server("daphne", args=("--application-close-timeout", "0"))
    Agent.objects.update(greeting="Hello there.")
    greeting = Reply(transcript="Hello there.")
    answer = Reply(transcript="Yes, we deliver to your street.")
    fake_openai.set_script(Script(replies=[greeting, answer], caller_transcripts=["Do you deliver?"]))

    async def connect():
        caller = caller_for(server)
        await dial(caller)
        await caller.wait_heard(len(greeting.render_audio()))
        return caller

    async def talk_and_hang_up(caller):
        await caller.send_audio(speak())
        await caller.wait_heard(len(greeting.render_audio()) + len(answer.render_audio()), timeout=15)
        await caller.hang_up()

    caller = loop.run(connect())
    with DatabaseOutage():
        loop.run(talk_and_hang_up(caller))
        wait_until(
            lambda: "took too long to shut down and was killed" in server.log(),
            10,
            "daphne killing the application instance",
        )
    call = wait_until(lambda: Call.objects.filter(ended_at__isnull=False).first(), 20, "the call finalised")
    assert call.ended_reason == EndedReason.CALLER_HUNG_UP
    assert list(call.turns.order_by("position").values_list("role", "text")) == [
        (Role.AGENT, greeting.transcript),
        (Role.CALLER, "Do you deliver?"),
        (Role.AGENT, answer.transcript),
    ]
