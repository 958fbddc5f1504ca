"""WAV files of any common shape become 8 kHz mono mu-law, and mu-law becomes a playable WAV."""

from __future__ import annotations

import io
import itertools
import math
import struct
import wave

import pytest

from calls.fakes import mulaw, wav


def wav_bytes(frames: bytes, *, rate: int, channels: int = 1, width: int = 2) -> bytes:
    """A WAV file written by the standard library (an independent writer)."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(frames)
    return out.getvalue()


def riff(tag: int, body: bytes, *, rate: int, channels: int = 1, bits: int = 8, data_size: int | None = None):
    """A hand-made WAV with any format tag, for the encodings ``wave`` cannot write."""
    align = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * align, align, bits)
    size = len(body) if data_size is None else data_size
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def pcm16(samples: list[int]) -> bytes:
    return struct.pack(f"<{len(samples)}h", *samples)


def sine(freq: float, rate: int, seconds: float, amplitude: int = 10000) -> list[int]:
    return [round(amplitude * math.sin(2 * math.pi * freq * n / rate)) for n in range(int(rate * seconds))]


def rms(samples: list[int]) -> float:
    return math.sqrt(sum(s * s for s in samples) / len(samples))


def zero_crossings(samples: list[int]) -> int:
    return sum(1 for a, b in itertools.pairwise(samples) if (a < 0) != (b < 0))


def test_16_bit_mono_at_8_khz_is_only_mu_law_encoded():
    samples = sine(440, 8000, 0.5)
    assert wav.wav_to_mulaw(wav_bytes(pcm16(samples), rate=8000)) == mulaw.encode(samples)


def test_8_bit_wav_is_unsigned_around_128():
    rate, [channel] = wav.parse_wav(wav_bytes(bytes([128, 255, 0, 192]), rate=8000, width=1))
    assert (rate, channel) == (8000, [0, 127 << 8, -32768, 64 << 8])


def test_24_and_32_bit_wav_keep_the_top_16_bits():
    values = [0, 1234, -1234, 32767, -32768]
    frames24 = b"".join((v << 8).to_bytes(3, "little", signed=True) for v in values)
    frames32 = b"".join((v << 16).to_bytes(4, "little", signed=True) for v in values)
    assert wav.parse_wav(wav_bytes(frames24, rate=16000, width=3)) == (16000, [values])
    assert wav.parse_wav(wav_bytes(frames32, rate=16000, width=4)) == (16000, [values])


def test_float_mu_law_and_a_law_wav_decode():
    floats = struct.pack("<3f", 0.0, 0.5, -1.0)
    assert wav.parse_wav(riff(3, floats, rate=8000, bits=32))[1] == [[0, 16384, -32767]]
    codes = mulaw.encode([0, 1000, -1000])
    assert wav.parse_wav(riff(7, codes, rate=8000))[1] == [mulaw.decode(codes)]
    alaw = mulaw.encode([0, 1000, -1000], mulaw.ALAW)
    assert wav.parse_wav(riff(6, alaw, rate=8000))[1] == [mulaw.decode(alaw, mulaw.ALAW)]


def test_extensible_wav_uses_its_sub_format():
    data = bytearray(riff(1, pcm16([5, -5]), rate=8000, bits=16))
    struct.pack_into("<H", data, 20, 0xFFFE)  # the format tag; the sub-format GUID follows
    fmt_end = 20 + 16
    extension = struct.pack("<HHI", 22, 16, 4) + struct.pack("<H", 1) + bytes(14)
    body = bytes(data[:fmt_end]) + extension + bytes(data[fmt_end:])
    body = body[:16] + struct.pack("<I", 16 + len(extension)) + body[20:]
    assert wav.parse_wav(body) == (8000, [[5, -5]])


def test_streamed_wav_with_an_oversized_data_chunk_is_read_to_its_end():
    # espeak-ng --stdout cannot seek back to fix the sizes: it claims about 2 GiB.
    samples = [100, -100, 200]
    assert wav.parse_wav(riff(1, pcm16(samples), rate=22050, bits=16, data_size=0x7FFFF000)) == (
        22050,
        [samples],
    )


def test_stereo_is_averaged_to_mono():
    left, right = [1000, 3000, -2000], [3000, 1000, 2000]
    frames = pcm16([s for pair in zip(left, right, strict=True) for s in pair])
    assert wav.parse_wav(wav_bytes(frames, rate=8000, channels=2)) == (8000, [left, right])
    channels = [left, right]
    assert wav.to_mono(channels) == [2000, 2000, 0]


@pytest.mark.parametrize("rate", [11025, 16000, 22050, 44100, 48000])
def test_resampling_to_8_khz_keeps_pitch_loudness_and_duration(rate):
    tone = sine(1000, rate, 1.0)
    out = wav.resample(tone, rate, 8000)
    assert len(out) == 8000
    middle = out[400:-400]  # away from the zero padding at the edges
    assert zero_crossings(middle) == pytest.approx(2 * 1000 * len(middle) / 8000, abs=2)
    assert rms(middle) == pytest.approx(rms(tone), rel=0.03)


@pytest.mark.parametrize(("rate", "freq"), [(16000, 6000), (44100, 5000), (48000, 7000)])
def test_downsampling_filters_what_8_khz_cannot_carry_instead_of_aliasing_it(rate, freq):
    out = wav.resample(sine(freq, rate, 0.5), rate, 8000)
    assert rms(out[400:-400]) < 0.01 * 10000 / math.sqrt(2)


def test_upsampling_keeps_the_tone():
    out = wav.resample(sine(500, 4000, 1.0), 4000, 8000)
    assert len(out) == 8000
    assert rms(out[400:-400]) == pytest.approx(10000 / math.sqrt(2), rel=0.03)
    assert zero_crossings(out[400:-400]) == pytest.approx(1000 * 7200 / 8000, abs=2)


def test_a_constant_signal_stays_constant():
    assert set(wav.resample([5000] * 22050, 22050, 8000)[100:-100]) == {5000}


def test_same_rate_is_untouched():
    samples = sine(300, 8000, 0.1)
    assert wav.resample(samples, 8000, 8000) == samples


def test_any_wav_becomes_8_khz_mono_mu_law_of_the_same_duration():
    left = sine(440, 44100, 2.0)
    frames = pcm16([s for s in left for _ in range(2)])  # the same tone on both channels
    line = wav.wav_to_mulaw(wav_bytes(frames, rate=44100, channels=2))
    assert len(line) == 16000
    decoded = mulaw.decode(line)[400:-400]
    assert rms(decoded) == pytest.approx(10000 / math.sqrt(2), rel=0.05)


def test_mu_law_round_trip_stays_within_one_quantisation_step():
    for x in range(-32000, 32001, 7):
        y = mulaw.decode(mulaw.encode([x]))[0]
        assert abs(y - x) <= max(16, abs(x) / 16), x
    # Every code but negative zero (0x7F, which decodes to 0 = 0xFF) survives decode + encode.
    codes = bytes(range(256))
    again = mulaw.encode(mulaw.decode(codes))
    assert [c for c in range(256) if again[c] != c] == [0x7F]


def test_mu_law_is_written_as_a_16_bit_8_khz_wav(tmp_path):
    line = mulaw.tone(300, seed=3)
    path = tmp_path / "heard.wav"
    wav.mulaw_to_wav(path, line)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 8000)
        frames = w.readframes(w.getnframes())
    assert list(struct.unpack(f"<{len(frames) // 2}h", frames)) == mulaw.decode(line)
    assert wav.wav_to_mulaw(path) == line  # and it reads back to the same line audio


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a wav file at all", "no RIFF/WAVE"),
        (riff(2, bytes(8), rate=8000, bits=4), "format tag 0x0002"),
        (b"RIFF\x04\x00\x00\x00WAVE", "no fmt chunk"),
    ],
)
def test_unreadable_files_are_refused_with_a_reason(data, message):
    with pytest.raises(wav.WavError, match=message):
        wav.parse_wav(data)
