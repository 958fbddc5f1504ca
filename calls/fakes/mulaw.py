"""G.711 (mu-law / A-law) codecs, frame RMS and a deterministic test tone.

Why: the fake Realtime server needs a byte-exact energy detector (VAD) and reproducible synthetic
speech; ``audioop`` is gone in Python 3.13, so the few table-driven routines we need live here.
"""

from __future__ import annotations

import functools
import math
import struct

ULAW = "audio/pcmu"
ALAW = "audio/pcma"
PCM = "audio/pcm"

#: Bytes of audio per millisecond for each GA audio format (8 kHz G.711; 24 kHz 16-bit PCM).
BYTES_PER_MS: dict[str, int] = {ULAW: 8, ALAW: 8, PCM: 48}
#: Sample rate per format.
RATES: dict[str, int] = {ULAW: 8000, ALAW: 8000, PCM: 24000}

_ULAW_BIAS = 0x84
_ULAW_CLIP = 32635


def _ulaw_to_linear(byte: int) -> int:
    """Decode one mu-law byte (bits are stored inverted; 3-bit segment, 4-bit mantissa)."""
    u = ~byte & 0xFF
    magnitude = (((u & 0x0F) << 3) + _ULAW_BIAS) << ((u & 0x70) >> 4)
    return _ULAW_BIAS - magnitude if u & 0x80 else magnitude - _ULAW_BIAS


def _alaw_to_linear(byte: int) -> int:
    """Decode one A-law byte (even bits toggled with 0x55; sign bit set means positive)."""
    a = byte ^ 0x55
    segment = (a & 0x70) >> 4
    value = (a & 0x0F) << 4
    if segment == 0:
        value += 8
    else:
        value = (value + 0x108) << (segment - 1)
    return value if a & 0x80 else -value


ULAW_TO_LINEAR: tuple[int, ...] = tuple(_ulaw_to_linear(b) for b in range(256))
ALAW_TO_LINEAR: tuple[int, ...] = tuple(_alaw_to_linear(b) for b in range(256))
_ULAW_SQUARES: tuple[int, ...] = tuple(s * s for s in ULAW_TO_LINEAR)
_ALAW_SQUARES: tuple[int, ...] = tuple(s * s for s in ALAW_TO_LINEAR)


def _segment(value: int, first_end: int) -> int:
    """Index of the G.711 segment holding ``value``; segment ``n`` ends at ``first_end << n``."""
    seg = 0
    while seg < 8 and value > (first_end << seg) + (1 << seg) - 1:
        seg += 1
    return seg


def linear_to_ulaw(sample: int) -> int:
    """Encode one signed 16-bit sample to mu-law (on its 14-bit magnitude, as G.711 specifies)."""
    value = sample >> 2
    mask = 0xFF
    if value < 0:
        value, mask = -value, 0x7F
    value = min(value, 8159) + (_ULAW_BIAS >> 2)
    seg = _segment(value, 0x3F)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((value >> (seg + 1)) & 0x0F)) ^ mask


def linear_to_alaw(sample: int) -> int:
    """Encode one signed 16-bit sample to A-law (on its 13-bit magnitude, as G.711 specifies)."""
    value = sample >> 3
    mask = 0xD5
    if value < 0:
        value, mask = -value - 1, 0x55
    seg = _segment(value, 0x1F)
    if seg >= 8:
        return 0x7F ^ mask
    shift = 1 if seg < 2 else seg
    return ((seg << 4) | ((value >> shift) & 0x0F)) ^ mask


def decode(data: bytes, fmt: str = ULAW) -> list[int]:
    """Decode audio in a GA format to signed 16-bit samples."""
    if fmt == ULAW:
        return [ULAW_TO_LINEAR[b] for b in data]
    if fmt == ALAW:
        return [ALAW_TO_LINEAR[b] for b in data]
    usable = len(data) - len(data) % 2
    return list(struct.unpack(f"<{usable // 2}h", data[:usable]))


def encode(samples: list[int], fmt: str = ULAW) -> bytes:
    """Encode signed 16-bit samples to a GA format."""
    if fmt == ULAW:
        return bytes(linear_to_ulaw(s) for s in samples)
    if fmt == ALAW:
        return bytes(linear_to_alaw(s) for s in samples)
    return struct.pack(f"<{len(samples)}h", *(max(-32768, min(32767, s)) for s in samples))


def rms(data: bytes, fmt: str = ULAW) -> float:
    """Root-mean-square of the decoded 16-bit signal (0.0 for empty input)."""
    if not data:
        return 0.0
    if fmt == ULAW:
        total = sum(_ULAW_SQUARES[b] for b in data)
        return math.sqrt(total / len(data))
    if fmt == ALAW:
        total = sum(_ALAW_SQUARES[b] for b in data)
        return math.sqrt(total / len(data))
    samples = decode(data, fmt)
    return math.sqrt(sum(s * s for s in samples) / len(samples)) if samples else 0.0


@functools.lru_cache(maxsize=256)
def tone(duration_ms: int, seed: int = 0, fmt: str = ULAW, amplitude: int = 8000) -> bytes:
    """A deterministic sine tone whose pitch depends on ``seed`` (stands in for synthesised speech).

    Cached: synthesis is pure-Python CPU work, and a fake that blocks its event loop to make
    audio would delay everything sharing that loop (the simulated caller in tests)."""
    rate = RATES[fmt]
    freq = 220.0 + (seed % 23) * 30.0
    count = duration_ms * rate // 1000
    step = 2.0 * math.pi * freq / rate
    return encode([round(amplitude * math.sin(step * n)) for n in range(count)], fmt)


def silence(duration_ms: int, fmt: str = ULAW) -> bytes:
    """Digital silence in a GA format."""
    return encode([0] * (duration_ms * RATES[fmt] // 1000), fmt)
