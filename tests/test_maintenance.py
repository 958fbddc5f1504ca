"""Calls in progress, closing calls a dead process left open, and retention (purge)."""

from __future__ import annotations

import wave
from datetime import timedelta
from io import StringIO

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import FileSystemStorage
from django.core.management import CommandError, call_command
from django.db import connection, models
from django.test.utils import isolate_apps
from django.utils import timezone

from calls import capacity, maintenance
from calls.models import Call, CallStatus, EndedReason, Role, ToolCall, Turn
from calls.recording import WavFile

pytestmark = pytest.mark.django_db

# The default agent's max_call_seconds is 600: open calls older than 15 minutes are stale.
STALE_AGE = timedelta(minutes=16)


def make_call(n: int, *, age: timedelta = timedelta(0), started: bool = True, ended: bool = False, **fields):
    now = timezone.now()
    call = Call.objects.create(
        call_sid=f"CA{n:032d}",
        from_number="+15550001111",
        to_number="+15552223333",
        started_at=now - age if started else None,
        ended_at=now if ended else None,
        status=CallStatus.IN_PROGRESS if started else CallStatus.RINGING,
        **fields,
    )
    Call.objects.filter(pk=call.pk).update(created_at=now - age)
    call.refresh_from_db()
    return call


def with_conversation(call: Call, turns: int = 2, tool_calls: int = 1) -> Call:
    for position in range(turns):
        Turn.objects.create(call=call, position=position, role=Role.CALLER, text="hello")
    for position in range(tool_calls):
        ToolCall.objects.create(call=call, position=turns + position, name="lookup_order")
    return call


def run(command: str, *args: str) -> str:
    out = StringIO()
    call_command(command, *args, stdout=out)
    return out.getvalue()


# --- ages -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30d", timedelta(days=30)),
        ("12h", timedelta(hours=12)),
        ("15m", timedelta(minutes=15)),
        ("90s", timedelta(seconds=90)),
        (" 7d ", timedelta(days=7)),
    ],
)
def test_ages_read_days_hours_minutes_seconds(text, expected):
    assert maintenance.parse_age(text) == expected


@pytest.mark.parametrize("text", ["", "30", "d", "30x", "-1d", "1.5h", "0d", "30 days"])
def test_malformed_ages_are_refused(text):
    with pytest.raises(ValueError, match="is not an age"):
        maintenance.parse_age(text)


# --- calls in progress --------------------------------------------------------------------------


def test_calls_in_progress_counts_open_streams_and_admitted_calls_only():
    now = timezone.now()
    make_call(1)  # streaming
    make_call(2, ended=True)  # over
    make_call(3, age=STALE_AGE)  # left open by a crash long ago
    make_call(4, started=False, stream_token_expires_at=now + timedelta(seconds=60))  # admitted
    make_call(5, started=False, stream_token_expires_at=now - timedelta(seconds=1))  # never came
    make_call(6, started=False)  # no agent, never admitted
    assert capacity.calls_in_progress() == 2
    assert capacity.calls_in_progress(exclude_call_sid=f"CA{1:032d}") == 1


def test_the_stale_cutoff_follows_the_longest_agent_limit():
    from calls.models import Agent

    now = timezone.now()
    Agent.objects.update(max_call_seconds=3600)
    assert capacity.stale_cutoff(now) == now - timedelta(seconds=3600) - capacity.STALE_MARGIN
    make_call(1, age=timedelta(minutes=30))
    assert capacity.calls_in_progress() == 1


# --- close_stale_calls ----------------------------------------------------------------------------


def test_close_stale_calls_closes_only_calls_older_than_any_call_can_last():
    stale = make_call(1, age=STALE_AGE)
    live = make_call(2, age=timedelta(minutes=5))
    finished = make_call(3, age=STALE_AGE, ended=True, ended_reason=EndedReason.CALLER_HUNG_UP)

    output = run("close_stale_calls")

    assert output == "Closed 1 stale call.\n"
    stale.refresh_from_db()
    assert stale.ended_at is not None
    assert stale.ended_reason == EndedReason.SERVER_RESTART
    assert stale.status == CallStatus.COMPLETED
    assert stale.error == maintenance.STALE_ERROR
    assert stale.duration_seconds is None  # unknown: not the time since the crash
    live.refresh_from_db()
    assert live.ended_at is None
    finished.refresh_from_db()
    assert finished.ended_reason == EndedReason.CALLER_HUNG_UP


def test_close_stale_calls_all_closes_every_open_call_at_start_up():
    make_call(1, age=timedelta(seconds=5))
    make_call(2, started=False)
    make_call(3, ended=True, ended_reason=EndedReason.AGENT_ENDED)

    assert run("close_stale_calls", "--all", "-v", "2") == (
        f"Closed CA{1:032d}\nClosed CA{2:032d}\nClosed 2 stale calls.\n"
    )
    assert not Call.objects.filter(ended_at__isnull=True).exists()
    assert Call.objects.get(call_sid=f"CA{3:032d}").ended_reason == EndedReason.AGENT_ENDED


def test_close_stale_calls_older_than_picks_the_age():
    make_call(1, age=timedelta(minutes=3))
    make_call(2, age=timedelta(seconds=30))
    assert run("close_stale_calls", "--older-than", "2m") == "Closed 1 stale call.\n"
    assert list(Call.objects.filter(ended_at__isnull=True).values_list("call_sid", flat=True)) == [
        f"CA{2:032d}"
    ]


def test_closing_keeps_a_reason_and_error_set_earlier():
    call = make_call(
        1, age=STALE_AGE, started=False, ended_reason=EndedReason.NO_AGENT, error="No enabled agent"
    )
    maintenance.calls_close_stale()
    call.refresh_from_db()
    assert (call.ended_reason, call.error) == (EndedReason.NO_AGENT, "No enabled agent")
    assert call.ended_at is not None


def test_close_stale_calls_refuses_all_with_an_age():
    with pytest.raises(CommandError, match="not allowed with argument"):
        call_command("close_stale_calls", "--all", "--older-than", "1h")


def test_closed_stale_call_gets_the_apology_when_twilio_asks(twilio):
    make_call(1, age=STALE_AGE)
    maintenance.calls_close_stale()
    response = twilio.post("/stream-ended", {"CallSid": f"CA{1:032d}", "CallStatus": "in-progress"})
    assert b"<Say>" in response.content and b"<Hangup" in response.content


# --- purge_calls -----------------------------------------------------------------------------------


def test_purge_deletes_old_calls_with_their_conversation():
    old = with_conversation(make_call(1, age=timedelta(days=31), ended=True))
    with_conversation(make_call(2, age=timedelta(days=40), ended=True), turns=1, tool_calls=0)
    recent = with_conversation(make_call(3, age=timedelta(days=29), ended=True))

    output = run("purge_calls", "--older-than", "30d")

    assert output == "Deleted 2 calls, 3 turns, 1 tool call, 0 files.\n"
    assert list(Call.objects.values_list("call_sid", flat=True)) == [recent.call_sid]
    assert not Turn.objects.filter(call_id=old.pk).exists()
    assert not ToolCall.objects.filter(call_id=old.pk).exists()
    assert Turn.objects.filter(call=recent).count() == 2


def test_purge_dry_run_counts_and_deletes_nothing():
    with_conversation(make_call(1, age=timedelta(hours=3), ended=True))
    make_call(2, age=timedelta(minutes=30), ended=True)

    assert run("purge_calls", "--older-than", "2h", "--dry-run") == (
        "Would delete 1 call, 2 turns, 1 tool call, 0 files.\n"
    )
    assert Call.objects.count() == 2 and Turn.objects.count() == 2


def test_purge_keeps_calls_in_progress_whatever_the_age():
    make_call(1, age=timedelta(minutes=2))  # live
    make_call(2, age=STALE_AGE)  # open, but stale: purged
    result = maintenance.calls_purge(older_than=timedelta(seconds=1))
    assert result.calls == 1
    assert list(Call.objects.values_list("call_sid", flat=True)) == [f"CA{1:032d}"]


def test_purge_works_in_batches(monkeypatch):
    monkeypatch.setattr(maintenance, "PURGE_BATCH", 2)
    for n in range(5):
        with_conversation(make_call(n, age=timedelta(days=2), ended=True), turns=1, tool_calls=0)
    assert maintenance.calls_purge(older_than=timedelta(days=1)) == maintenance.PurgeResult(5, 5, 0, 0)
    assert not Call.objects.exists()


@pytest.mark.parametrize("age", ["", "30", "30x", "0d"])
def test_purge_needs_a_valid_age(age):
    with pytest.raises(CommandError, match="--older-than"):
        call_command("purge_calls", "--older-than", age)


def test_purge_needs_an_age():
    with pytest.raises(CommandError, match="--older-than"):
        call_command("purge_calls")


@pytest.mark.django_db(transaction=True)
def test_files_in_any_file_field_are_deleted_through_their_storage_after_commit(tmp_path):
    """Not only Call.recording: the purge finds the files of any FileField, on any model."""
    storage = FileSystemStorage(location=tmp_path)
    with isolate_apps("calls"):

        class Recording(models.Model):
            audio = models.FileField(storage=storage, blank=True)
            transcript = models.FileField(storage=storage, blank=True)

            class Meta:
                app_label = "calls"
                db_table = "test_purge_recording"

    with connection.schema_editor() as editor:
        editor.create_model(Recording)
    try:
        names = [storage.save(f"call-{n}.wav", ContentFile(b"RIFF")) for n in range(3)]
        Recording.objects.create(audio=names[0], transcript=names[1])
        Recording.objects.create(audio=names[2])
        kept = Recording.objects.create(audio=storage.save("kept.wav", ContentFile(b"RIFF")))

        per_model, files = maintenance.delete_with_files(Recording.objects.exclude(pk=kept.pk))

        assert (per_model, files) == ({"calls.Recording": 2}, 3)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.wav"]
    finally:
        with connection.schema_editor() as editor:
            editor.delete_model(Recording)


def test_a_file_that_cannot_be_deleted_is_logged_and_the_others_go(tmp_path, caplog):
    class ReadOnly(FileSystemStorage):
        def delete(self, name: str) -> None:
            raise OSError("read-only file system")

    storage = FileSystemStorage(location=tmp_path)
    name = storage.save("b.wav", ContentFile(b"RIFF"))
    maintenance._delete_files([(ReadOnly(location=tmp_path), "a.wav"), (storage, name)])
    assert not storage.exists(name)
    assert "Could not delete the file a.wav: read-only file system" in caplog.text


def test_purge_deletes_the_recordings_of_the_calls_it_deletes(
    tmp_path, settings, django_capture_on_commit_callbacks
):
    fields = maintenance._file_fields(Call)
    assert [field.name for field in fields] == ["recording"]
    settings.MEDIA_ROOT = tmp_path
    old, recent = make_call(1, age=timedelta(days=2), ended=True), make_call(2, ended=True)
    names = {}
    for call in (old, recent):
        for field in fields:
            name = field.storage.save(f"{field.name}-{call.pk}.wav", ContentFile(b"RIFF"))
            Call.objects.filter(pk=call.pk).update(**{field.attname: name})
            names[call.pk, field.name] = name

    with django_capture_on_commit_callbacks(execute=True):
        result = maintenance.calls_purge(older_than=timedelta(days=1))

    assert result.files == len(fields)
    for field in fields:
        assert not field.storage.exists(names[old.pk, field.name])
        assert field.storage.exists(names[recent.pk, field.name])


def test_close_stale_calls_stores_the_recordings_dead_processes_left_behind(tmp_path, settings):
    """A partial WAV (header never finished, last frame cut) of a call that has ended is
    repaired and stored; files of live or unknown calls are left alone."""
    settings.MEDIA_ROOT = tmp_path / "media"
    work = settings.RECORDING_WORK_DIR = tmp_path / "in-progress"
    work.mkdir()
    dead = make_call(1, age=STALE_AGE)  # its process died: still open, closed below
    failed_upload = make_call(2, ended=True)  # ended, but its recording never reached storage
    live = make_call(3)
    for call in (dead, failed_upload, live):
        wav = WavFile(work / f"{call.call_sid}.wav")  # what the consumer writes as it goes
        wav.append(b"\x01\x00\x02\x00" * 8000 + b"\x03\x00")  # a second, then half a frame
    (work / f"CA{9:032d}.wav").write_bytes(b"RIFF")  # no such call

    out = run("close_stale_calls")
    assert "Closed 1 stale call." in out and "Stored 2 recordings left behind." in out

    for call in (dead, failed_upload):
        call.refresh_from_db()
        with call.recording.open("rb") as stored, wave.open(stored) as wav:
            assert wav.getnchannels() == 2 and wav.getnframes() == 8000
            assert wav.readframes(1) == b"\x01\x00\x02\x00"
        assert not (work / f"{call.call_sid}.wav").exists()
    live.refresh_from_db()
    assert not live.recording and (work / f"{live.call_sid}.wav").exists()
    assert (work / f"CA{9:032d}.wav").exists()
    assert maintenance.recordings_recover() == []  # nothing twice
