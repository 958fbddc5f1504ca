"""Argument types shared by the management commands."""

from __future__ import annotations

import argparse
from datetime import timedelta

from calls import maintenance


def age(value: str) -> timedelta:
    """``--older-than 30d``: a whole number of days, hours, minutes or seconds."""
    try:
        return maintenance.parse_age(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
