"""WAV files to and from the audio of a phone line: 8 kHz mono G.711 mu-law.

Why: a simulated caller says a recorded WAV file of whatever shape the user has (8/16/24/32-bit
PCM, float, mu-law or A-law; any rate; mono or stereo) and ``espeak-ng`` writes 22.05 kHz WAV,
while a Twilio line is 8 kHz mono mu-law. Pure Python, because ``audioop`` left the standard
library in 3.13: the G.711 codec is ``calls.fakes.mulaw``, resampling is a windowed-sinc
low-pass interpolator below. The RIFF chunks are read here rather than with ``wave``, which
only knows integer PCM and trusts the data size (``espeak-ng --stdout`` cannot seek back, so
its header claims about 2 GiB); writing uses ``wave``.
"""

from __future__ import annotations

import functools
import math
import operator
import struct
import sys
import wave
from array import array
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from calls.fakes import mulaw

LINE_RATE = 8000  # Hz: Twilio Media Streams, audio/x-mulaw

_PCM, _FLOAT, _ALAW, _ULAW, _EXTENSIBLE = 0x0001, 0x0003, 0x0006, 0x0007, 0xFFFE
_SUPPORTED = frozenset(
    {(_PCM, 8), (_PCM, 16), (_PCM, 24), (_PCM, 32), (_FLOAT, 32), (_FLOAT, 64), (_ALAW, 8), (_ULAW, 8)}
)
_ZERO_CROSSINGS = 8  # of the sinc kernel on each side: quality versus pure-Python speed
_PHASES = 256  # fractional positions the kernel is tabulated at
_PASSBAND = 0.9  # cutoff as a fraction of the lower Nyquist frequency (room for the transition)


class WavError(ValueError):
    """The data is not a WAV file this module can read."""


def parse_wav(data: bytes) -> tuple[int, list[list[int]]]:
    """Decode a WAV file to its sample rate and one list of signed 16-bit samples per channel."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise WavError("not a WAV file (no RIFF/WAVE header)")
    fmt: bytes | None = None
    body: bytes | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        start = pos + 8
        if chunk_id == b"fmt ":
            fmt = data[start : start + size]
        elif chunk_id == b"data":
            body = data[start : start + size]  # a size past the end (streamed WAV) is clamped
            if start + size >= len(data):
                break
        pos = start + size + (size & 1)
    if fmt is None or len(fmt) < 16:
        raise WavError("no fmt chunk")
    if body is None:
        raise WavError("no data chunk")
    tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", fmt)
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = struct.unpack_from("<H", fmt, 24)[0]  # the first two bytes of the sub-format GUID
    if (tag, bits) not in _SUPPORTED:
        raise WavError(f"unsupported WAV encoding (format tag {tag:#06x}, {bits} bits)")
    if channels < 1 or rate < 1 or block_align != channels * bits // 8:
        raise WavError(f"inconsistent fmt chunk ({channels} channels, {rate} Hz, {bits} bits)")
    body = body[: len(body) - len(body) % block_align]
    samples = _decode(body, tag, bits)
    return rate, [samples[c::channels] for c in range(channels)]


def _decode(body: bytes, tag: int, bits: int) -> list[int]:
    if tag == _ULAW:
        return mulaw.decode(body, mulaw.ULAW)
    if tag == _ALAW:
        return mulaw.decode(body, mulaw.ALAW)
    if tag == _FLOAT:
        return [_clip(round(x * 32767)) for x in _native(array("f" if bits == 32 else "d"), body)]
    if bits == 8:  # 8-bit PCM is unsigned, centred on 128
        return [(b - 128) << 8 for b in body]
    if bits == 16:
        return list(_native(array("h"), body))
    if bits == 24:
        return [int.from_bytes(body[i : i + 3], "little", signed=True) >> 8 for i in range(0, len(body), 3)]
    return [s >> 16 for s in _native(array("i"), body)]


def _native(values: array, body: bytes) -> array:  # type: ignore[type-arg]
    values.frombytes(body)
    if sys.byteorder == "big":
        values.byteswap()
    return values


def _clip(sample: int) -> int:
    return -32768 if sample < -32768 else 32767 if sample > 32767 else sample


def to_mono(channels: Sequence[Sequence[int]]) -> list[int]:
    """Average the channels (a phone line has one)."""
    if len(channels) == 1:
        return list(channels[0])
    count = len(channels)
    return [round(sum(frame) / count) for frame in zip(*channels, strict=True)]


@functools.lru_cache(maxsize=8 * _PHASES)
def _kernel(cutoff: float, phase: int) -> tuple[float, ...]:
    """Hann-windowed sinc taps for an output point ``phase / _PHASES`` of a sample past an
    input sample; ``cutoff`` in cycles per input sample. Normalised: a constant passes unchanged."""
    frac = phase / _PHASES
    width = _ZERO_CROSSINGS / (2 * cutoff)  # half the kernel's length, in input samples
    reach = math.ceil(width)
    taps = []
    for k in range(2 * reach):
        x = k - reach + 1 - frac  # distance from the output point, in input samples
        if abs(x) >= width:
            taps.append(0.0)
            continue
        arg = 2 * cutoff * x
        sinc = 1.0 if arg == 0 else math.sin(math.pi * arg) / (math.pi * arg)
        taps.append(sinc * 0.5 * (1 + math.cos(math.pi * x / width)))
    total = sum(taps)
    return tuple(t / total for t in taps)


def resample(samples: Sequence[int], from_rate: int, to_rate: int) -> list[int]:
    """Change the sample rate, low-passing below the lower Nyquist frequency (no aliasing)."""
    if from_rate == to_rate or not samples:
        return list(samples)
    step = from_rate / to_rate  # input samples per output sample
    cutoff = 0.5 * _PASSBAND * min(1.0, 1 / step)
    reach = math.ceil(_ZERO_CROSSINGS / (2 * cutoff))
    padded = [0] * reach + list(samples) + [0] * (reach + 1)
    out = []
    for n in range(len(samples) * to_rate // from_rate):
        position = n * step
        base = math.floor(position)
        phase = round((position - base) * _PHASES)
        if phase == _PHASES:
            base, phase = base + 1, 0
        taps = _kernel(cutoff, phase)
        out.append(_clip(round(sum(map(operator.mul, taps, padded[base + 1 : base + 1 + len(taps)])))))
    return out


def to_line(rate: int, channels: Sequence[Sequence[int]]) -> bytes:
    """Samples of any rate and channel count as 8 kHz mono mu-law."""
    return mulaw.encode(resample(to_mono(channels), rate, LINE_RATE), mulaw.ULAW)


def wav_to_mulaw(source: bytes | str | Path) -> bytes:
    """A WAV file (its bytes or its path) as 8 kHz mono mu-law, ready to send down the line."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    return to_line(*parse_wav(data))


def write_wav(target: str | Path | BinaryIO, samples: Sequence[int], rate: int) -> None:
    """Write mono signed 16-bit PCM."""
    frames = array("h", samples)
    if sys.byteorder == "big":
        frames.byteswap()
    with wave.open(str(target) if isinstance(target, Path) else target, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(frames.tobytes())


def mulaw_to_wav(target: str | Path | BinaryIO, audio: bytes) -> None:
    """Write 8 kHz mu-law (what a caller hears) as a 16-bit PCM WAV any player opens."""
    write_wav(target, mulaw.decode(audio, mulaw.ULAW), LINE_RATE)
