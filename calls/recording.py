"""Call recordings: a stereo WAV (caller left, agent right), aligned to what the caller heard.

``Mixer`` is pure: it places caller frames at their Twilio timestamps and agent audio at
the moment it starts playing, cuts agent audio a barge-in cleared, and hands back finished
PCM a little behind real time (late caller frames still land in place; agent audio that may
yet be cleared is not committed). ``WavFile`` appends that PCM to a file on local disk as
the call goes, with a header that keeps a partial file playable, and the consumer stores
the finished file through Django's storage API. Memory stays bounded by the look-behind
window plus the agent audio queued ahead of playback.
"""

from __future__ import annotations

import base64
import struct
import warnings
from pathlib import Path
from typing import BinaryIO, NamedTuple

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # deprecated in 3.11-3.12; audioop-lts on 3.13+
    import audioop

from calls.audio import BYTES_PER_SECOND

SILENCE = b"\xff"  # mu-law zero
# Caller frames may arrive this late (network jitter) and still be placed correctly.
LOOK_BEHIND_SECONDS = 0.5
# A caller frame stamped further ahead than this is not believed (memory is only spent on
# what can be written soon).
MAX_AHEAD_SAMPLES = 30 * BYTES_PER_SECOND
CHANNELS = 2
SAMPLE_WIDTH = 2


class _CallerAudio(NamedTuple):
    payload: str
    timestamp_ms: int


class _AgentAudio(NamedTuple):
    payload: str
    starts: float


class _AgentCut(NamedTuple):
    at: float


# What the event loop noted, for ``Recorder.flush``; tuples, as cheap to make as the plain ones.
RecorderEvent = _CallerAudio | _AgentAudio | _AgentCut


class Recorder:
    """The call's recording as the event loop sees it: noting what happened is an append;
    decoding, mixing, converting and writing happen in ``flush``, in a worker thread, about
    once a second. (Decoding and placing every 20 ms frame on the loop cost ~5 % of it.)"""

    def __init__(self, mixer: Mixer, wav: WavFile) -> None:
        self.mixer = mixer
        self.wav = wav
        self._pending: list[RecorderEvent] = []

    def caller(self, payload: str, timestamp_ms: int) -> None:
        self._pending.append(_CallerAudio(payload, timestamp_ms))

    def agent(self, payload: str, starts: float) -> None:
        self._pending.append(_AgentAudio(payload, starts))

    def cut_agent(self, at: float) -> None:
        self._pending.append(_AgentCut(at))

    def batch(self) -> list[RecorderEvent]:
        """What happened since the last batch, in order; hand it to ``flush``."""
        batch, self._pending = self._pending, []
        return batch

    def flush(self, batch: list[RecorderEvent], now: float | None) -> None:
        """Apply a batch and write what is final (everything if ``now`` is None: the call is
        over). Blocking; batches must be flushed one at a time, in order."""
        mixer = self.mixer
        for event in batch:
            if isinstance(event, _CallerAudio):
                mixer.caller(event.payload, event.timestamp_ms)
            elif isinstance(event, _AgentAudio):
                mixer.agent(event.payload, event.starts)
            else:
                mixer.cut_agent(event.at)
        self.wav.append_mulaw(*(mixer.take_all() if now is None else mixer.take(now)))


class Mixer:
    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        self.written = 0  # samples already handed out
        self._caller = bytearray()  # mu-law from ``written`` on
        self._agent = bytearray()
        self._agent_end = 0  # where agent audio ends (samples): later audio never overlaps it

    def _sample(self, at: float) -> int:
        return max(0, round((at - self.started_at) * BYTES_PER_SECOND))

    @staticmethod
    def _place(track: bytearray, offset: int, data: bytes) -> None:
        if offset < 0:  # older than what was already written: keep only the new part
            data = data[-offset:]
            offset = 0
        if len(track) < offset:
            track.extend(SILENCE * (offset - len(track)))
        track[offset : offset + len(data)] = data

    def caller(self, payload: str, timestamp_ms: int) -> None:
        offset = timestamp_ms * 8 - self.written
        if offset > MAX_AHEAD_SAMPLES:
            return
        self._place(self._caller, offset, base64.b64decode(payload))

    def agent(self, payload: str, starts: float) -> None:
        data = base64.b64decode(payload)
        start = max(self._sample(starts), self._agent_end)
        self._place(self._agent, start - self.written, data)
        self._agent_end = start + len(data)

    def cut_agent(self, at: float) -> None:
        """Twilio emptied its buffer at ``at``: the agent audio planned after it never played."""
        cut = self._sample(at)
        keep = max(0, cut - self.written)
        del self._agent[keep:]
        self._agent_end = min(self._agent_end, max(cut, self.written))

    def take(self, now: float) -> tuple[bytes, bytes]:
        """Finished audio up to ``now`` minus the look-behind window, as mu-law (caller,
        agent) of equal length: converting to PCM is left to ``WavFile``'s thread."""
        return self._take(self._sample(now - LOOK_BEHIND_SECONDS))

    def take_all(self) -> tuple[bytes, bytes]:
        """The call is over: everything placed so far."""
        return self._take(self.written + max(len(self._caller), len(self._agent)))

    def _take(self, until: int) -> tuple[bytes, bytes]:
        count = until - self.written
        if count <= 0:
            return b"", b""
        left = bytes(self._caller[:count]).ljust(count, SILENCE)
        right = bytes(self._agent[:count]).ljust(count, SILENCE)
        del self._caller[:count]
        del self._agent[:count]
        self.written = until
        return left, right


def interleave(left_mulaw: bytes, right_mulaw: bytes) -> bytes:
    """Two mu-law channels of equal length -> 16-bit little-endian stereo PCM."""
    left = audioop.ulaw2lin(left_mulaw, SAMPLE_WIDTH)
    right = audioop.ulaw2lin(right_mulaw, SAMPLE_WIDTH)
    return audioop.add(
        audioop.tostereo(left, SAMPLE_WIDTH, 1, 0), audioop.tostereo(right, SAMPLE_WIDTH, 0, 1), SAMPLE_WIDTH
    )


def wav_header(data_bytes: int) -> bytes:
    """A PCM WAV header; with ``0xFFFFFFFF`` sizes a file cut short by a crash still plays."""
    riff = min(36 + data_bytes, 0xFFFFFFFF)
    byte_rate = BYTES_PER_SECOND * CHANNELS * SAMPLE_WIDTH
    return (
        b"RIFF"
        + struct.pack("<I", riff)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, CHANNELS, BYTES_PER_SECOND, byte_rate, CHANNELS * SAMPLE_WIDTH, 16)
        + b"data"
        + struct.pack("<I", min(data_bytes, 0xFFFFFFFF))
    )


def repair_wav(path: Path) -> int:
    """A recording its call never closed (the process died): cut it to whole stereo frames
    and write the real sizes into its header. Returns the bytes of audio it holds."""
    header = len(wav_header(0))
    with path.open("r+b") as handle:
        handle.seek(0, 2)
        data_bytes = max(0, handle.tell() - header) // (CHANNELS * SAMPLE_WIDTH) * (CHANNELS * SAMPLE_WIDTH)
        handle.truncate(header + data_bytes)
        handle.seek(0)
        handle.write(wav_header(data_bytes))
    return data_bytes


class WavFile:
    """Appends PCM to a WAV file on local disk. Blocking: call it from a worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: BinaryIO = path.open("wb")
        self._file.write(wav_header(0xFFFFFFFF))
        self._file.flush()
        self.data_bytes = 0

    def append_mulaw(self, left: bytes, right: bytes) -> None:
        """Append two mu-law channels (from ``Mixer.take``) as stereo PCM."""
        if left:
            self.append(interleave(left, right))

    def append(self, pcm: bytes) -> None:
        if pcm:
            self._file.write(pcm)
            self._file.flush()
            self.data_bytes += len(pcm)

    def close(self) -> None:
        """Write the real sizes into the header."""
        if self._file.closed:
            return
        self._file.seek(0)
        self._file.write(wav_header(self.data_bytes))
        self._file.close()

    @property
    def seconds(self) -> float:
        return self.data_bytes / (BYTES_PER_SECOND * CHANNELS * SAMPLE_WIDTH)
