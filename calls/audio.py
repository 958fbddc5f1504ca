"""Small helpers for base64 G.711 mu-law audio that avoid decoding on the hot path."""

from __future__ import annotations

# mu-law at 8 kHz: one byte per sample, 8 bytes per millisecond.
BYTES_PER_MS = 8
BYTES_PER_SECOND = 8000


def base64_size(payload: str) -> int:
    """Decoded size of a base64 string, computed from its length."""
    return len(payload) * 3 // 4 - payload.count("=", -2)


def split_base64(payload: str, chunk_chars: int) -> list[str]:
    """Split base64 text into pieces that each decode to whole bytes.

    ``chunk_chars`` must be a multiple of 4: every piece but the last then has no padding
    and decodes to ``chunk_chars * 3 // 4`` bytes. mu-law has one byte per sample, so any
    byte boundary is a sample boundary: no decoding needed to split agent audio.
    """
    if chunk_chars % 4:
        raise ValueError("chunk_chars must be a multiple of 4")
    if len(payload) <= chunk_chars:
        return [payload]
    return [payload[i : i + chunk_chars] for i in range(0, len(payload), chunk_chars)]
