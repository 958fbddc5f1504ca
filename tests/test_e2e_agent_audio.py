"""Agent tests' audio mode: the test as a phone call through our real server and bridge. The
simulated Twilio caller speaks each caller turn (espeak-ng), the stand-in answers with the
test's replies in speech, the example tools run in the server; the run is checked against the
call as it was stored."""

from __future__ import annotations

import pytest

from calls import agent_testing
from calls.example_tools import restaurant_agent
from calls.models import Call
from tests.test_agent_testing import booking_call

pytestmark = pytest.mark.e2e


def test_a_test_made_from_a_call_runs_as_a_phone_call(transactional_db):
    restaurant = restaurant_agent()
    test = agent_testing.make_test_from_call(booking_call(restaurant))

    run = agent_testing.run_test(test, audio=True)
    assert run.error == "" and run.passed, run.outcomes
    assert run.audio and run.mode == "offline"
    speakers = [line["speaker"] for line in run.transcript]
    assert speakers.count("caller") == 2 and speakers[0] == "agent"  # the greeting first
    [booked] = [line for line in run.transcript if line["speaker"] == "tool" and line["name"] == "book_table"]
    assert booked["output"]["booked"] is True  # the example tool ran in the server, for real
    call = Call.objects.exclude(pk=test.source_call_id).get()
    assert call.ended_reason == "agent_ended" and call.agent == restaurant
    # What the agent does once its instructions change is tested in text
    # (tests/test_agent_testing.py): the runs share everything but the transport.
