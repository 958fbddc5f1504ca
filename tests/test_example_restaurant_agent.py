"""The example restaurant agent's tests, written with ``calls.testing.agent_conversation``:
what a team writes in its own suite. Offline: the stand-in answers with ``replies``; the
agent's configuration and its tools (calls/example_tools.py) run for real.

The last tests are the helper's own: a failed assertion says what happened, and tools run
in the test's transaction."""

from __future__ import annotations

import pytest

from calls.example_tools import restaurant_agent
from calls.models import Agent
from calls.testing import agent_conversation
from calls.tools import ToolContext, tool

pytestmark = pytest.mark.django_db

GREETING = "Trattoria Example, good evening! How can I help?"
ROSSI = {"name": "Rossi", "party_size": 2, "day": "2031-06-01", "time": "20:00"}


@pytest.fixture
def restaurant() -> Agent:
    return restaurant_agent()


def test_books_a_table_and_gives_the_reference(restaurant):
    replies = [
        GREETING,
        "Two people on June first at eight, under Rossi: shall I book it?",
        {"transcript": "Booking it now.", "function_call": {"name": "book_table", "arguments": ROSSI}},
        "You're booked. Your reference is R-AGENT-.",
    ]
    with agent_conversation(restaurant, replies=replies) as talk:
        talk.say("A table for two on the first of June 2031 at eight, name Rossi.")
        talk.assert_not_called("book_table")  # it confirms first, as its instructions say
        answer = talk.say("Yes please.")
        booking = talk.assert_called("book_table", party_size=2, name="Rossi")
        assert booking.output["booked"] is True  # the real tool ran
        assert "reference" in answer
        assert talk.ended == "open"


def test_gives_the_weekend_opening_hours(restaurant):
    replies = [
        GREETING,
        {"function_call": {"name": "opening_hours", "arguments": {"day": "weekend"}}},
        "On weekends we open at eleven and close at eleven at night.",
    ]
    with agent_conversation(restaurant, replies=replies) as talk:
        talk.say("When are you open on Saturday?")
        hours = talk.assert_called("opening_hours", day="weekend")
        assert hours.output == {"opens": "11:00", "closes": "23:00"}
        talk.assert_said("eleven")


def test_a_party_too_large_is_not_booked(restaurant):
    replies = [
        GREETING,
        {"function_call": {"name": "book_table", "arguments": {**ROSSI, "party_size": 20}}},
        "I'm sorry, we take bookings for up to twelve guests.",
    ]
    with agent_conversation(restaurant, replies=replies) as talk:
        talk.say("A table for twenty on June first 2031 at eight, Rossi.")
        booking = talk.assert_called("book_table", party_size=20)
        assert booking.output == {"booked": False, "reason": "We take bookings for 1 to 12 guests."}
        talk.assert_not_said("you're booked")
        talk.assert_said("twelve guests")


def test_says_goodbye_and_ends_the_call(restaurant):
    replies = [
        GREETING,
        {
            "transcript": "Thank you for calling, goodbye!",
            "function_call": {"name": "end_call", "arguments": {}},
        },
    ]
    with agent_conversation(restaurant, replies=replies) as talk:
        talk.say("That's all, thanks.")
        assert talk.ended == "agent_ended"
        talk.assert_said("goodbye")
        talk.assert_judged("The agent said goodbye politely.")  # offline: the fake judge


def test_a_booking_system_outage_is_handled(restaurant):
    replies = [
        GREETING,
        {"function_call": {"name": "book_table", "arguments": ROSSI}},
        "I'm sorry, I cannot book right now; please call again later.",
    ]
    with agent_conversation(
        restaurant, replies=replies, tool_results={"book_table": {"error": "timeout"}}
    ) as talk:
        talk.say("Book a table for two on June first 2031 at eight, Rossi.")
        assert talk.assert_called("book_table").fixed
        talk.assert_said("call again later")


# --- the helper's own tests ----------------------------------------------------------------


def test_a_failed_assertion_says_what_happened(restaurant):
    replies = [GREETING, {"function_call": {"name": "opening_hours", "arguments": {}}}, "We open at noon."]
    with agent_conversation(restaurant, replies=replies) as talk:
        assert talk.say("When do you open?") == "We open at noon."
        with pytest.raises(AssertionError) as failed:
            talk.assert_called("book_table")
        message = str(failed.value)
        assert message.startswith("book_table was never called (called: opening_hours({}))")
        assert "caller: When do you open?" in message and "agent: We open at noon." in message
        with pytest.raises(AssertionError, match="the agent said 'noon'"):
            talk.assert_not_said("noon")
        with pytest.raises(AssertionError, match="the agent never said 'closed'"):
            talk.assert_said("closed")
        with pytest.raises(AssertionError, match="opening_hours was called 1 time"):
            talk.assert_not_called("opening_hours")


@tool
def count_agents(context: ToolContext) -> dict[str, int]:
    """How many agents there are (reads the database)."""
    return {"agents": Agent.objects.count(), "mine": Agent.objects.filter(name=context.agent_name).count()}


def test_tools_see_the_tests_own_rows(restaurant):
    restaurant.tools = [*restaurant.tools, "count_agents"]
    restaurant.save()
    Agent.objects.create(name="Made by this test", phone_number="+15550008888", instructions="-")
    replies = [GREETING, {"function_call": {"name": "count_agents", "arguments": {}}}, "Two."]
    with agent_conversation("Restaurant", replies=replies) as talk:
        talk.say("How many agents?")
        assert talk.assert_called("count_agents").output == {"agents": Agent.objects.count(), "mine": 1}


def test_real_mode_needs_a_key(restaurant, settings):
    settings.OPENAI_API_KEY = ""
    with pytest.raises(RuntimeError, match="OPENAI_API_KEY"), agent_conversation(restaurant, real=True):
        pass
