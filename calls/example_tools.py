"""Example tools for a restaurant line: enable them on an agent in the admin to try tools.

Copy this module into your own app, replace the bodies with your booking system, and list
it in ``VOICE_AGENT_TOOLS``.
"""

from __future__ import annotations

from datetime import date
from typing import Literal

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
