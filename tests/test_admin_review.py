"""Reviewing a call in the admin: recording (staff only), latency, usage and cost, CSV export."""

from __future__ import annotations

import csv
import io
import wave
from decimal import Decimal

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile

from calls.models import Agent, Call, Role, ToolCall, Turn
from calls.review import csv_safe, latency_chart, usage_rows

pytestmark = pytest.mark.django_db

# One response.done usage, as OpenAI sends it, plus caller transcription billed by tokens.
USAGE = {
    "total_tokens": 253,
    "input_tokens": 132,
    "output_tokens": 121,
    "input_token_details": {
        "text_tokens": 119,
        "audio_tokens": 13,
        "image_tokens": 0,
        "cached_tokens": 64,
        "cached_tokens_details": {"text_tokens": 64, "audio_tokens": 0, "image_tokens": 0},
    },
    "output_token_details": {"text_tokens": 30, "audio_tokens": 91},
    "transcription": {"input_tokens": 40, "output_tokens": 12, "total_tokens": 52},
}


def wav_bytes(seconds: float = 1.0) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(b"\x00\x01\x00\xff" * int(8000 * seconds))
    return buffer.getvalue()


def body_of(response) -> bytes:
    async def collect() -> bytes:
        return b"".join([chunk async for chunk in response.streaming_content])

    return async_to_sync(collect)()


@pytest.fixture(autouse=True)
def isolated_media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


@pytest.fixture
def reviewed_call() -> Call:
    call = Call.objects.create(
        call_sid="CA" + "5" * 32,
        from_number="+15550001111",
        to_number="+15552223333",
        agent=Agent.objects.get(),
        duration_seconds=75,
        usage=USAGE,
        cost_usd=Decimal("0.0123"),
        latency_p50_ms=640,
        latency_p95_ms=1720,
        first_audio_ms=910,
        interruptions=1,
        error="OpenAI dropped the session (1011)",
    )
    Turn.objects.create(call=call, position=0, role=Role.AGENT, text="Hello!", started_ms=0)
    Turn.objects.create(call=call, position=1, role=Role.CALLER, text="A table", started_ms=2100)
    Turn.objects.create(
        call=call, position=2, role=Role.AGENT, text="For when?", started_ms=4000, latency_ms=640
    )
    Turn.objects.create(call=call, position=3, role=Role.CALLER, text="Tonight", started_ms=6000)
    Turn.objects.create(
        call=call,
        position=4,
        role=Role.AGENT,
        text="Let me",
        started_ms=8000,
        latency_ms=1720,
        interrupted=True,
    )
    ToolCall.objects.create(call=call, position=3, name="book_table", arguments={}, result={"ok": True})
    call.recording.save("call.wav", ContentFile(wav_bytes()))
    return call


def test_call_page_has_player_latency_chart_and_usage(staff_client, reviewed_call):
    body = staff_client.get(f"/admin/calls/call/{reviewed_call.pk}/change/").content.decode()
    player = f'<audio controls preload="metadata" src="/admin/calls/call/{reviewed_call.pk}/recording.wav">'
    assert player in body
    assert "/media/" not in body  # never the public media URL
    assert body.count('<rect class="va-bar') == 2
    assert 'class="va-bar va-fast"' in body and 'class="va-bar va-slow"' in body
    assert '<span class="va-latency va-fast"' in body and "640 ms" in body
    assert "<th>Audio</th><td>13</td><td>0</td><td>91</td>" in body
    assert "<th>Total</th><td>132</td><td>64</td><td>121</td>" in body
    assert "Caller transcription: 40 tokens in, 12 out" in body
    assert "Estimated cost: $0.0123" in body
    assert "OpenAI dropped the session (1011)" in body
    assert "1720" in body and "910" in body  # p95, time to first audio


def test_call_page_without_recording_or_metrics_has_empty_states(staff_client):
    call = Call.objects.create(call_sid="CA" + "7" * 32)
    body = staff_client.get(f"/admin/calls/call/{call.pk}/change/").content.decode()
    assert "No recording for this call" in body and "<audio" not in body
    assert "No response latency measured on this call." in body
    assert "No token usage recorded for this call." in body


def test_a_standin_call_is_labelled_and_its_latency_explained(staff_client):
    call = Call.objects.create(call_sid="WEB" + "7" * 32, model="stand-in", latency_p50_ms=0)
    Turn.objects.create(call=call, position=0, role=Role.AGENT, text="Hello!", latency_ms=0)
    body = staff_client.get(f"/admin/calls/call/{call.pk}/change/").content.decode()
    assert '<span class="va-standin-label">Local stand-in, not the real model</span>' in body
    assert "so its response latency is about 0 ms" in body

    Call.objects.filter(pk=call.pk).update(model="gpt-realtime")
    body = staff_client.get(f"/admin/calls/call/{call.pk}/change/").content.decode()
    assert "stand-in" not in body and "gpt-realtime" in body


def test_recording_is_streamed_to_staff_with_range_support(staff_client, reviewed_call):
    url = f"/admin/calls/call/{reviewed_call.pk}/recording.wav"
    data = wav_bytes()
    whole = staff_client.get(url)
    assert whole.status_code == 200 and whole["Content-Type"] == "audio/wav"
    assert whole["Accept-Ranges"] == "bytes" and int(whole["Content-Length"]) == len(data)
    assert body_of(whole) == data
    part = staff_client.get(url, HTTP_RANGE="bytes=10-19")
    assert part.status_code == 206 and part["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert body_of(part) == data[10:20]
    tail = staff_client.get(url, HTTP_RANGE="bytes=-4")
    assert body_of(tail) == data[-4:]
    assert staff_client.get(url, HTTP_RANGE=f"bytes={len(data)}-").status_code == 416


def test_recording_is_not_public(client, reviewed_call):
    url = f"/admin/calls/call/{reviewed_call.pk}/recording.wav"
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")
    client.force_login(get_user_model().objects.create_user("caller", password="pw-123456"))
    assert client.get(url).status_code == 302
    assert client.get("/" + reviewed_call.recording.url.lstrip("/")).status_code == 404


def test_recording_of_a_call_without_one_is_404(staff_client):
    call = Call.objects.create(call_sid="CA" + "7" * 32)
    assert staff_client.get(f"/admin/calls/call/{call.pk}/recording.wav").status_code == 404


def test_call_list_shows_duration_cost_latency_error_and_totals(staff_client, reviewed_call):
    Call.objects.create(call_sid="CA" + "6" * 32, duration_seconds=5, cost_usd=Decimal("0.0100"))
    body = staff_client.get("/admin/calls/call/").content.decode()
    assert "1:15" in body and "$0.0123" in body and "640 ms" in body
    assert 'title="OpenAI dropped the session (1011)">⚠ error<' in body
    totals = " ".join(body.split('id="va-totals">')[1].split("</p>")[0].split())
    # Totals are over calls, not over the turn rows the list's turn count joins in.
    assert totals == "2 calls, 1:20 in all, estimated cost $0.0223, 132 tokens in, 121 out."


def test_csv_export_of_selected_calls(staff_client, reviewed_call, settings):
    settings.MASK_PHONE_NUMBERS = True
    other = Call.objects.create(call_sid="CA" + "6" * 32, from_number="=HYPERLINK(1)")
    response = staff_client.post(
        "/admin/calls/call/",
        {"action": "export_csv", "_selected_action": [reviewed_call.pk, other.pk]},
    )
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    assert response["Content-Disposition"].startswith('attachment; filename="calls-')
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    row = {r["call_sid"]: r for r in rows}[reviewed_call.call_sid]
    assert row["from"] == "+1555•••1111" and row["agent"] == "Default agent"
    assert (row["turns"], row["interruptions"], row["latency_p50_ms"], row["latency_p95_ms"]) == (
        "5",
        "1",
        "640",
        "1720",
    )
    assert (row["input_tokens"], row["output_tokens"], row["cost_usd"]) == ("132", "121", "0.0123")
    assert row["duration_seconds"] == "75" and row["error"] == "OpenAI dropped the session (1011)"
    assert {r["call_sid"]: r for r in rows}[other.call_sid]["from"].startswith("'")


def test_usage_rows_keep_cached_tokens_inside_the_input():
    assert usage_rows(USAGE) == [
        ("Text", 119, 64, 30),
        ("Audio", 13, 0, 91),
        ("Total", 132, 64, 121),
    ]
    assert usage_rows({}) == [("Text", 0, 0, 0), ("Audio", 0, 0, 0), ("Total", 0, 0, 0)]


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("+15550001111", "+15550001111"),
        ("+1555•••1111", "+1555•••1111"),
        ("-12.5", "-12.5"),
        ("=1+1", "'=1+1"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("+1 555 cmd|' /C calc'!A0", "'+1 555 cmd|' /C calc'!A0"),
        ("-1+SUM(A1)", "'-1+SUM(A1)"),
        (None, ""),
        (Decimal("0.0100"), "0.0100"),
    ],
)
def test_csv_cells_never_start_a_formula(value, cell):
    assert csv_safe(value) == cell


def test_latency_chart_escapes_nothing_it_did_not_build():
    turns = [Turn(role=Role.AGENT, latency_ms=ms, started_ms=ms) for ms in (300, 1200, 2600)]
    svg = str(latency_chart(turns, p50_ms=1200))
    assert svg.count("<rect") == 3 and "p50 1200 ms" in svg
    assert "3000 ms" in svg  # the scale's top, rounded up to half a second
