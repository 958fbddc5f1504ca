"""Example tools for a restaurant line: enable them on an agent in the admin to try tools.

Copy this module into your own app, replace the bodies with your booking system, and list
it in ``VOICE_AGENT_TOOLS``.
"""

from __future__ import annotations

import logging
from datetime import date
from typing import Any, Literal

from django.conf import settings
from django.core.mail import send_mail
from django.dispatch import receiver

from calls.models import Agent, Call, CallAnalysis
from calls.signals import call_analysed
from calls.tools import ToolContext, tool

OPENING_HOURS = {"weekday": ("12:00", "22:00"), "weekend": ("11:00", "23:00")}


@tool
def opening_hours(day: Literal["weekday", "weekend"] = "weekday") -> dict[str, str]:
    """Tell when the restaurant is open.

    Args:
        day: Weekday or weekend hours.
    """
    opens, closes = OPENING_HOURS[day]
    return {"opens": opens, "closes": closes}


@tool
def book_table(name: str, party_size: int, day: date, time: str, context: ToolContext) -> dict[str, object]:
    """Book a table. Confirm the details with the caller before calling this.

    Args:
        name: Name the booking is under.
        party_size: Number of guests, 1 to 12.
        day: Date of the booking (YYYY-MM-DD).
        time: Time of the booking, 24-hour clock, for example 19:30.
    """
    if not 1 <= party_size <= 12:
        return {"booked": False, "reason": "We take bookings for 1 to 12 guests."}
    if day < date.today():
        return {"booked": False, "reason": "That date has passed."}
    reference = f"R-{context.call_sid[-6:].upper()}"
    return {
        "booked": True,
        "reference": reference,
        "name": name,
        "party_size": party_size,
        "day": day.isoformat(),
        "time": time,
    }


# --- after the call (issue 16) -------------------------------------------------------------
# Post-call analysis hands your code each call's checked, extracted data through the
# ``call_analysed`` signal. Here: a caller who asked to be called back, or whose call failed
# its success criteria, becomes an email to the staff (FOLLOW_UP_EMAIL) with what the
# analysis found. The fields read here are the default agent's plan (migration 0009); in your
# project, connect receivers like this one in your app's AppConfig.ready().

follow_up_logger = logging.getLogger("calls.example_tools")


@receiver(call_analysed, dispatch_uid="calls.example_tools.follow_up")
def follow_up(
    sender: object, *, analysis: CallAnalysis, call: Call, data: dict[str, Any], **kwargs: Any
) -> None:
    """Email the staff about calls that need a human: a callback asked for, or a failed call."""
    wants_callback = data.get("callback_requested") is True
    if not wants_callback and analysis.success is not False:
        return
    why = "asked to be called back" if wants_callback else f"did not succeed: {analysis.reason}"
    follow_up_logger.info("call %s needs a follow-up: the caller %s", call.call_sid, why)
    recipient = getattr(settings, "FOLLOW_UP_EMAIL", "")
    if not recipient:
        return
    number = data.get("callback_number") or call.from_number
    send_mail(
        subject=f"Follow up: call {call.call_sid}",
        message=(
            f"The caller {why}.\n\nCall back: {number}\nCaller: {data.get('caller_name') or 'unknown'}\n"
            f"About: {data.get('topic') or 'unknown'}\n\nSummary: {analysis.summary}\n"
        ),
        from_email=None,
        recipient_list=[recipient],
    )


# --- the agent these tools serve, and its tests (issue 17) --------------------------------
# tests/test_example_restaurant_agent.py holds the restaurant agent's tests, written with
# ``calls.testing.agent_conversation``: copy them next to your own agent.

RESTAURANT_INSTRUCTIONS = (
    "You answer the phone for Trattoria Example. Be brief and warm. Give the opening hours "
    "with opening_hours. To book, ask for the name, the number of guests, the day and the "
    "time, repeat them back, and once the caller agrees call book_table; then give the "
    "reference. When the caller is done, say goodbye and call end_call."
)


def restaurant_agent(name: str = "Restaurant", phone_number: str = "+15550009999") -> Agent:
    """The example restaurant agent, with the tools above (made if missing)."""
    agent, _ = Agent.objects.get_or_create(
        name=name,
        defaults={
            "phone_number": phone_number,
            "instructions": RESTAURANT_INSTRUCTIONS,
            "greeting": "Trattoria Example, good evening! How can I help?",
            "tools": ["opening_hours", "book_table", "end_call"],
        },
    )
    return agent
