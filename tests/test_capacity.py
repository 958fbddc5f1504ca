"""MAX_CONCURRENT_CALLS: past the cap, callers hear a busy message instead of the agent."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest
from django.utils import timezone

from calls import services
from calls.models import Agent, Call, CallStatus, EndedReason
from calls.views import BUSY_MESSAGE
from tests.conftest import call_params

pytestmark = pytest.mark.django_db


def sid(n: int) -> str:
    return f"CA{n:032d}"


def in_progress(*numbers: int, age: timedelta = timedelta(0)) -> None:
    """Calls whose stream is up (on any worker process)."""
    for n in numbers:
        call = Call.objects.create(call_sid=sid(n), started_at=timezone.now(), status=CallStatus.IN_PROGRESS)
        Call.objects.filter(pk=call.pk).update(created_at=timezone.now() - age)


def verbs(response) -> list[tuple[str, str]]:
    assert response.status_code == 200
    return [(el.tag, el.text or "") for el in ET.fromstring(response.content)]


def test_at_the_cap_the_caller_hears_busy_and_the_call_is_recorded(twilio, settings, caplog):
    settings.MAX_CONCURRENT_CALLS = 2
    in_progress(1, 2)

    with caplog.at_level(logging.WARNING, logger="calls"):
        response = twilio.post("/incoming-call", call_params(sid(3)))

    assert verbs(response) == [("Say", BUSY_MESSAGE), ("Hangup", "")]
    call = Call.objects.get(call_sid=sid(3))
    assert call.ended_reason == EndedReason.BUSY and call.ended_at is not None
    assert call.error == "Refused: 2 calls in progress (MAX_CONCURRENT_CALLS=2)."
    assert call.stream_token_hash == ""  # no socket can ever start for it
    assert f"call {sid(3)}: Refused: 2 calls in progress" in caplog.text


def test_below_the_cap_the_call_connects(twilio, settings):
    settings.MAX_CONCURRENT_CALLS = 3
    in_progress(1, 2)
    response = twilio.post("/incoming-call", call_params(sid(3)))
    assert [tag for tag, _ in verbs(response)] == ["Connect"]
    assert Call.objects.get(call_sid=sid(3)).ended_reason == ""


def test_zero_means_no_limit(twilio, settings):
    settings.MAX_CONCURRENT_CALLS = 0
    in_progress(*range(1, 30))
    assert [tag for tag, _ in verbs(twilio.post("/incoming-call", call_params(sid(99))))] == ["Connect"]


def test_ended_and_stale_calls_do_not_hold_a_line(twilio, settings):
    settings.MAX_CONCURRENT_CALLS = 1
    in_progress(1, age=timedelta(hours=3))  # left open by a crash: no longer counted
    Call.objects.create(call_sid=sid(2), started_at=timezone.now(), ended_at=timezone.now())
    assert [tag for tag, _ in verbs(twilio.post("/incoming-call", call_params(sid(3))))] == ["Connect"]


def test_calls_admitted_but_not_yet_streaming_count(twilio, settings):
    """A burst of calls cannot all slip in before the first stream connects."""
    settings.MAX_CONCURRENT_CALLS = 1
    assert [tag for tag, _ in verbs(twilio.post("/incoming-call", call_params(sid(1))))] == ["Connect"]
    assert verbs(twilio.post("/incoming-call", call_params(sid(2))))[0] == ("Say", BUSY_MESSAGE)


def test_a_retried_webhook_is_not_refused_because_of_itself(twilio, settings):
    settings.MAX_CONCURRENT_CALLS = 1
    twilio.post("/incoming-call", call_params(sid(1)))
    assert [tag for tag, _ in verbs(twilio.post("/incoming-call", call_params(sid(1))))] == ["Connect"]


def test_a_refused_call_stays_refused_when_twilio_retries(twilio, settings):
    settings.MAX_CONCURRENT_CALLS = 1
    in_progress(1)
    twilio.post("/incoming-call", call_params(sid(2)))
    Call.objects.filter(call_sid=sid(1)).update(ended_at=timezone.now())  # a line frees up
    assert verbs(twilio.post("/incoming-call", call_params(sid(2))))[0] == ("Say", BUSY_MESSAGE)


def test_the_status_callback_keeps_the_busy_reason(twilio, settings):
    settings.MAX_CONCURRENT_CALLS = 1
    in_progress(1)
    twilio.post("/incoming-call", call_params(sid(2)))
    twilio.post(
        "/call-status", call_params(sid(2), CallStatus="completed", CallDuration="4", SequenceNumber="2")
    )
    call = Call.objects.get(call_sid=sid(2))
    assert (call.status, call.ended_reason, call.duration_seconds) == ("completed", EndedReason.BUSY, 4)


def test_no_outbound_call_is_placed_at_the_cap(settings):
    """The callee would only hear the busy message: nobody is rung (no Twilio request)."""
    settings.MAX_CONCURRENT_CALLS = 1
    in_progress(1)
    agent = Agent.objects.get()
    agent.phone_number = "+15559990000"
    with pytest.raises(ValueError, match="all 1 lines are busy"):
        services.call_place(to="+15551234567", agent=agent)
    assert Call.objects.count() == 1
