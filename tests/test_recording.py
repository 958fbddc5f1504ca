"""The recording mixer and WAV writer, and the cost estimate (no sockets)."""

from __future__ import annotations

import base64
import struct
import wave
from decimal import Decimal

from calls import pricing
from calls.recording import Mixer, Recorder, WavFile, interleave, wav_header

FRAME = 160  # 20 ms of mu-law


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def channels(pcm: bytes) -> tuple[list[int], list[int]]:
    samples = struct.unpack(f"<{len(pcm) // 2}h", pcm)
    return list(samples[0::2]), list(samples[1::2])


def test_caller_frames_land_at_their_timestamps_even_late_and_out_of_order():
    mixer = Mixer(started_at=100.0)
    mixer.caller(b64(b"\x00" * FRAME), timestamp_ms=40)  # loud (mu-law 0x00 = -32124)
    mixer.caller(b64(b"\x80" * FRAME), timestamp_ms=0)  # arrives late
    left, right = channels(interleave(*mixer.take(now=101.0)))  # 0.5 s ready (1 s minus the look-behind)
    assert len(left) == 4000
    assert left[0] > 30000 and left[160] == 0 and left[320] < -30000 and left[480] == 0
    assert set(right) == {0}


def test_agent_audio_is_placed_when_it_plays_and_cut_at_a_barge_in():
    mixer = Mixer(started_at=0.0)
    mixer.agent(b64(b"\x00" * 8000), starts=0.25)  # one second, playing from 0.25 s
    mixer.cut_agent(at=0.75)  # the caller barged in: only 0.5 s was heard
    mixer.agent(b64(b"\x80" * 800), starts=0.5)  # the next answer cannot start before the cut
    _, right = channels(interleave(*mixer.take_all()))
    heard = [i for i, v in enumerate(right) if v != 0]
    assert heard[0] == 2000 and heard[-1] == 2000 + 4000 + 800 - 1
    assert right[6000] > 30000 and right[6000 + 1] > 30000  # the first answer, then the second


def test_nothing_is_written_twice_and_memory_stays_bounded():
    mixer = Mixer(started_at=0.0)
    total = 0
    for k in range(500):  # ten seconds of caller frames
        mixer.caller(b64(b"\x00" * FRAME), timestamp_ms=20 * k)
        total += len(interleave(*mixer.take(now=(k + 1) * 0.02)))
    total += len(interleave(*mixer.take_all()))
    assert total == 500 * FRAME * 4  # stereo, 16-bit
    assert len(mixer._caller) == 0


def test_wav_file_is_playable_while_partial_and_exact_when_closed(tmp_path):
    path = tmp_path / "call.wav"
    wav = WavFile(path)
    wav.append(b"\x01\x00\x02\x00" * 8000)  # one second of stereo
    assert path.read_bytes()[:4] == b"RIFF"  # partial: placeholder sizes, still a WAV
    wav.close()
    with wave.open(str(path)) as reader:
        assert (reader.getnchannels(), reader.getframerate(), reader.getsampwidth()) == (2, 8000, 2)
        assert reader.getnframes() == 8000
    assert wav.seconds == 1.0
    assert len(wav_header(0)) == 44


def test_cost_from_a_known_usage():
    usage = {
        "input_token_details": {
            "text_tokens": 1_000_000,
            "audio_tokens": 1_000_000,
            "cached_tokens_details": {"text_tokens": 500_000, "audio_tokens": 0},
        },
        "output_token_details": {"text_tokens": 100_000, "audio_tokens": 200_000},
        "transcription": {"seconds": 120},
    }
    # 0.5M text at $4 + 0.5M cached at $0.40 + 1M audio at $32 + 0.1M text out at $24
    # + 0.2M audio out at $64 + 2 minutes of transcription at $0.017.
    expected = (
        Decimal("2") + Decimal("0.2") + Decimal("32") + Decimal("2.4") + Decimal("12.8") + Decimal("0.034")
    )
    assert pricing.estimate_cost("gpt-realtime-2.1", usage, "gpt-realtime-whisper") == expected
    # A dated snapshot is priced like its family; an unknown model has no estimate.
    assert pricing.estimate_cost("gpt-realtime-2.1-2026-10-01", usage) == expected - Decimal("0.034")
    assert pricing.estimate_cost("some-other-model", usage) is None


def test_prices_can_be_overridden(settings):
    settings.VOICE_AGENT_PRICES = {"my-model": {**pricing.DEFAULT_PRICES["gpt-realtime"], "audio_out": 1}}
    usage = {"output_token_details": {"audio_tokens": 1_000_000}}
    assert pricing.estimate_cost("my-model", usage) == Decimal("1.0000")


def test_recorder_batches_give_the_same_file_as_mixing_on_the_spot(tmp_path):
    """The loop only notes events; flushing them in batches (in a thread) must write exactly
    what a mixer fed event by event would."""
    direct = Mixer(started_at=0.0)
    recorder = Recorder(Mixer(started_at=0.0), WavFile(tmp_path / "batched.wav"))
    expected = bytearray()

    def note(kind: str, *args):
        getattr(direct, kind)(*args)
        getattr(recorder, kind)(*args)

    for k in range(100):  # two seconds of caller frames, an answer, a barge-in
        note("caller", b64(bytes([k % 256]) * FRAME), 20 * k)
        if k == 10:
            note("agent", b64(b"\x00" * 8000), 0.3)
        if k == 60:
            note("cut_agent", 1.0)
        if k % 50 == 49:  # a flush every second, as the consumer does
            now = (k + 1) * 0.02
            recorder.flush(recorder.batch(), now)
            expected += interleave(*direct.take(now))
    recorder.flush(recorder.batch(), None)
    expected += interleave(*direct.take_all())
    recorder.wav.close()
    with wave.open(str(tmp_path / "batched.wav")) as wav:
        assert wav.readframes(wav.getnframes()) == bytes(expected)
    assert len(expected) == 2 * 8000 * 4
