from __future__ import annotations

import pytest

from calls.models import Call, CallStatus, EndedReason
from tests.conftest import call_params

pytestmark = pytest.mark.django_db

CALL_SID = "CA" + "1" * 32


def status(seq: int, call_status: str, **extra: str) -> dict[str, str]:
    params = call_params(
        CallStatus=call_status,
        SequenceNumber=str(seq),
        CallbackSource="call-progress-events",
        Timestamp=f"Tue, 24 Nov 2026 10:00:0{seq} +0000",
    )
    params.update(extra)
    return params


@pytest.fixture
def call(twilio) -> Call:
    assert twilio.post("/incoming-call", call_params()).status_code == 200
    return Call.objects.get()


def test_status_callbacks_in_order(twilio, call):
    assert twilio.post("/call-status", status(0, "ringing")).status_code == 200
    assert twilio.post("/call-status", status(1, "in-progress")).status_code == 200
    Call.objects.update(stream_sid="MZ" + "3" * 32)
    assert twilio.post("/call-status", status(2, "completed", CallDuration="42")).status_code == 200
    call.refresh_from_db()
    assert call.status == CallStatus.COMPLETED
    assert call.duration_seconds == 42
    assert call.answered_at.second == 1 and call.ended_at.second == 2
    assert call.ended_reason == EndedReason.CALLER_HUNG_UP


def test_status_callbacks_out_of_order_keep_newest_status(twilio, call):
    twilio.post("/call-status", status(2, "completed", CallDuration="7"))
    twilio.post("/call-status", status(1, "in-progress"))
    twilio.post("/call-status", status(0, "ringing"))
    call.refresh_from_db()
    assert call.status == CallStatus.COMPLETED
    assert call.status_sequence == 2
    assert call.duration_seconds == 7
    # The late in-progress callback still tells us when the call was answered.
    assert call.answered_at is not None and call.answered_at.second == 1


def test_completed_without_stream_explains_it(twilio, call):
    twilio.post("/call-status", status(0, "completed", CallDuration="3"))
    call.refresh_from_db()
    assert call.ended_reason == EndedReason.NO_STREAM


def test_bridge_reason_is_not_overwritten(twilio, call):
    Call.objects.update(ended_reason=EndedReason.AGENT_ENDED)
    twilio.post("/call-status", status(3, "completed"))
    call.refresh_from_db()
    assert call.ended_reason == EndedReason.AGENT_ENDED


@pytest.mark.parametrize(
    ("twilio_status", "reason"),
    [("busy", EndedReason.BUSY), ("no-answer", EndedReason.NO_ANSWER), ("failed", EndedReason.FAILED)],
)
def test_unanswered_outcomes_become_ended_reasons(twilio, call, twilio_status, reason):
    twilio.post("/call-status", status(1, twilio_status))
    call.refresh_from_db()
    assert (call.status, call.ended_reason) == (twilio_status, reason)


def test_unknown_call_is_acknowledged_without_effect(twilio):
    response = twilio.post("/call-status", status(0, "completed") | {"CallSid": "CA" + "9" * 32})
    assert response.status_code == 200
    assert not Call.objects.exists()


def test_status_callback_requires_signature(twilio, call):
    response = twilio.post("/call-status", status(5, "completed"), signature=None)
    assert response.status_code == 403
    call.refresh_from_db()
    assert call.status == CallStatus.RINGING


def test_invalid_status_is_bad_request(twilio, call):
    assert twilio.post("/call-status", status(1, "exploded")).status_code == 400


def test_stream_error_is_stored_on_the_call(twilio, call):
    params = {
        "AccountSid": call.account_sid,
        "CallSid": call.call_sid,
        "StreamSid": "MZ" + "4" * 32,
        "StreamEvent": "stream-error",
        "StreamError": "Stream - WebSocket - Handshake Error",
        "Timestamp": "2026-11-24T10:00:00Z",
    }
    assert twilio.post("/stream-status", params).status_code == 200
    call.refresh_from_db()
    assert "Handshake Error" in call.error


def test_a_call_failed_on_our_side_stays_failed_when_twilio_reports_it_completed(twilio, call):
    # The stream ended on an error (no OpenAI key, OpenAI unreachable): the caller heard the
    # apology and Twilio, which did connect the call, then reports it completed.
    Call.objects.update(status=CallStatus.FAILED, ended_reason=EndedReason.ERROR, stream_sid="MZ" + "3" * 32)
    twilio.post("/call-status", status(2, "completed", CallDuration="4"))
    call.refresh_from_db()
    assert (call.status, call.ended_reason) == (CallStatus.FAILED, EndedReason.ERROR)
    assert call.duration_seconds == 4
