"""Estimated cost of a call from its token usage.

Prices are USD per 1M tokens, as published by OpenAI for the Realtime models (see
``shared/protocols/openai-realtime.md`` §7), read on ``PRICES_AS_OF``. Override or extend
them with the ``VOICE_AGENT_PRICES`` setting (same shape; env ``VOICE_AGENT_PRICES_JSON``).
An estimate: the invoice is the truth.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.conf import settings

PRICES_AS_OF = "2026-11-24"

_FULL = {
    "text_in": 4,
    "text_cached": 0.4,
    "text_out": 16,
    "audio_in": 32,
    "audio_cached": 0.4,
    "audio_out": 64,
}
_V2 = {**_FULL, "text_out": 24}
_MINI = {
    "text_in": 0.6,
    "text_cached": 0.06,
    "text_out": 2.4,
    "audio_in": 10,
    "audio_cached": 0.3,
    "audio_out": 20,
}

DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "gpt-realtime": _FULL,
    "gpt-realtime-2025-08-28": _FULL,
    "gpt-realtime-1.5": _FULL,
    "gpt-realtime-2": _V2,
    "gpt-realtime-2.1": _V2,
    "gpt-realtime-2.1-mini": _MINI,
    "gpt-realtime-mini": _MINI,  # output and audio prices UNCONFIRMED; assumed as 2.1-mini
}
# Caller transcription is billed per minute of audio when usage comes as {"type": "duration"}.
TRANSCRIPTION_PER_MINUTE: dict[str, float] = {
    "gpt-realtime-whisper": 0.017,
    "whisper-1": 0.006,
    "gpt-4o-transcribe": 0.006,
    "gpt-4o-mini-transcribe": 0.003,
}


# Text models for post-call analysis (Responses API), USD per 1M tokens, read on
# TEXT_PRICES_AS_OF from OpenAI's pricing page as GitHub's model table quotes it. Overridable
# through VOICE_AGENT_PRICES with the keys "in", "cached" and "out".
TEXT_PRICES_AS_OF = "2026-12-07"
DEFAULT_TEXT_PRICES: dict[str, dict[str, float]] = {
    "gpt-5-mini": {"in": 0.25, "cached": 0.025, "out": 2.0},
    "gpt-5-nano": {"in": 0.05, "cached": 0.005, "out": 0.4},
    "gpt-5": {"in": 1.25, "cached": 0.125, "out": 10.0},
    "gpt-4.1-mini": {"in": 0.4, "cached": 0.1, "out": 1.6},
}


def prices_for(model: str, defaults: dict[str, dict[str, float]] = DEFAULT_PRICES) -> dict[str, float] | None:
    # The setting has the shape of DEFAULT_PRICES (settings.py); it is not validated.
    overrides: dict[str, dict[str, float]] = getattr(settings, "VOICE_AGENT_PRICES", {})
    table = {**defaults, **overrides}
    if model in table:
        return table[model]
    # Dated snapshots cost what their family costs: gpt-realtime-2.1-2026-10-01 -> gpt-realtime-2.1.
    family = max((name for name in table if model.startswith(name + "-")), key=len, default=None)
    return table[family] if family else None


def _get(usage: dict[str, Any], *path: str) -> int:
    value: Any = usage
    for key in path:
        value = value.get(key, 0) if isinstance(value, dict) else 0
    return int(value) if isinstance(value, int | float) else 0


def estimate_cost(model: str, usage: dict[str, Any], transcription_model: str = "") -> Decimal | None:
    """USD for a call's summed usage; None when the model has no known price."""
    prices = prices_for(model)
    if prices is None or not usage:
        return None
    cached_text = _get(usage, "input_token_details", "cached_tokens_details", "text_tokens")
    cached_audio = _get(usage, "input_token_details", "cached_tokens_details", "audio_tokens")
    per_million = (
        (_get(usage, "input_token_details", "text_tokens") - cached_text) * prices["text_in"]
        + cached_text * prices["text_cached"]
        + (_get(usage, "input_token_details", "audio_tokens") - cached_audio) * prices["audio_in"]
        + cached_audio * prices["audio_cached"]
        + _get(usage, "output_token_details", "text_tokens") * prices["text_out"]
        + _get(usage, "output_token_details", "audio_tokens") * prices["audio_out"]
    )
    cost = Decimal(str(per_million)) / Decimal(1_000_000)
    transcription = usage.get("transcription")
    if isinstance(transcription, dict) and transcription_model in TRANSCRIPTION_PER_MINUTE:
        seconds = Decimal(str(transcription.get("seconds", 0) or 0))
        cost += seconds / 60 * Decimal(str(TRANSCRIPTION_PER_MINUTE[transcription_model]))
    return cost.quantize(Decimal("0.0001"))


def estimate_text_cost(model: str, usage: dict[str, Any]) -> Decimal | None:
    """USD for one Responses API answer (post-call analysis); None for a model with no price."""
    prices = prices_for(model, DEFAULT_TEXT_PRICES)
    if prices is None or not usage or not {"in", "cached", "out"} <= set(prices):
        return None
    cached = _get(usage, "input_tokens_details", "cached_tokens")
    per_million = (
        (_get(usage, "input_tokens") - cached) * prices["in"]
        + cached * prices["cached"]
        + _get(usage, "output_tokens") * prices["out"]
    )
    return (Decimal(str(per_million)) / Decimal(1_000_000)).quantize(Decimal("0.000001"))
