"""What the caller has heard: a model of Twilio's playback buffer, sans-IO.

Twilio plays the agent audio we send in order, in real time, and echoes each ``mark``
when playback passes it. Counting echoed marks alone understates what was heard by about
two one-way link delays, and a clock started at the first delta overstates it whenever
the model streams slower than real time (see ``shared/protocols/barge-in.md``). So:

* each chunk we send is remembered with its item, size and send time;
* an echo of chunk k means playback finished it about one link delay ``d`` ago: an anchor;
* the chunks after the anchor are replayed in simulation: each starts when the previous
  one ends or when it reached Twilio (``sent + d``), whichever is later, so a buffer that
  ran dry is modelled;
* a ``clear`` sent now reaches Twilio at ``now + d``: what had played by then was heard.

``d`` is half the measured round trip. Audio sent into an empty buffer starts playing ``d``
later and plays on without a gap while more follows, so the echo of any chunk in such a
run comes back at ``run start + 2d + audio up to that chunk``, or later (the buffer ran dry,
an echo was delayed): every echo is a sample, and the smallest recent one is the link. The
bridge also sends probe marks (no audio) at the start and while idle. A mark echoed after a
``clear`` was not played (Twilio flushes every pending mark at once), so it is ignored.

All times are ``time.monotonic()`` seconds supplied by the caller of this module.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from calls.audio import BYTES_PER_SECOND

# Delays only ever add to a round trip (a busy event loop, a slow echo), so the smallest of
# the recent samples is the best estimate of the link itself.
_RTT_WINDOW = 32
_MAX_RTT = 2.0


@dataclass(slots=True)
class Chunk:
    name: str
    item_id: str
    nbytes: int
    item_end: int  # bytes of the item sent up to and including this chunk
    sent_at: float
    # When the run of back-to-back audio this chunk belongs to was started (its first chunk
    # was sent into an empty buffer), and the run's bytes up to the end of this chunk.
    run_started: float
    run_bytes: int

    @property
    def item_start(self) -> int:
        return self.item_end - self.nbytes


class Playback:
    def __init__(self) -> None:
        self.pending: deque[Chunk] = deque()
        self._names: dict[str, Chunk] = {}
        self.sent: dict[str, int] = {}  # item -> bytes sent
        self.confirmed: dict[str, int] = {}  # item -> bytes Twilio confirmed played
        self.rtt: float | None = None
        self._rtt_samples: deque[float] = deque(maxlen=_RTT_WINDOW)
        self._anchor: float | None = None  # when (Twilio side) playback passed the last echo
        self._tail: float = 0.0  # estimated end of everything sent, for start-time estimates
        self._seq = 0
        self._run_started = 0.0
        self._run_bytes = 0
        self.last_probe = float("-inf")

    @property
    def delay(self) -> float:
        """Estimated one-way delay between us and Twilio, in seconds."""
        return (self.rtt or 0.0) / 2

    @property
    def is_playing(self) -> bool:
        """Audio was sent whose playback Twilio has not confirmed (a pending probe is not audio)."""
        return any(chunk.nbytes for chunk in self.pending)

    def send(self, item_id: str, nbytes: int, now: float) -> tuple[str, float]:
        """Register a chunk about to be sent; return its mark name and estimated play start."""
        item_end = self.sent.get(item_id, 0) + nbytes
        self.sent[item_id] = item_end
        self._seq += 1
        name = f"{self._seq}:{item_id}:{item_end}"
        if not self.pending:
            self._run_started, self._run_bytes = now, 0
        self._run_bytes += nbytes
        chunk = Chunk(name, item_id, nbytes, item_end, now, self._run_started, self._run_bytes)
        self.pending.append(chunk)
        self._names[name] = chunk
        starts = max(self._tail, now + self.delay)
        self._tail = starts + nbytes / BYTES_PER_SECOND
        return name, starts

    def probe(self, now: float) -> str:
        """A mark with no audio before it: its echo measures the round trip at once."""
        self.last_probe = now
        return self.send("", 0, now)[0]

    def echo(self, name: str, now: float) -> Chunk | None:
        """Twilio echoed a mark. Returns the chunk if it was really played, else None."""
        chunk = self._names.get(name)
        if chunk is None:
            return None
        sample = now - chunk.run_started - chunk.run_bytes / BYTES_PER_SECOND
        self._rtt_samples.append(min(max(sample, 0.0), _MAX_RTT))
        self.rtt = min(self._rtt_samples)
        # Echoes come in order: everything up to this chunk has played.
        while self.pending:
            done = self.pending.popleft()
            del self._names[done.name]
            if done.item_id:
                self.confirmed[done.item_id] = done.item_end
            if done is chunk:
                break
        self._anchor = now - self.delay
        if not self.pending:
            self._tail = self._anchor
        return chunk

    def heard_at(self, now: float) -> dict[str, int]:
        """Estimated bytes heard per item with pending audio, if a clear were sent now."""
        stop_at = now + self.delay
        cursor = self._anchor
        heard: dict[str, int] = {}
        for chunk in self.pending:
            if not chunk.item_id:
                continue
            heard.setdefault(chunk.item_id, self.confirmed.get(chunk.item_id, chunk.item_start))
            arrives = chunk.sent_at + self.delay
            starts = arrives if cursor is None else max(cursor, arrives)
            if starts >= stop_at:
                break
            duration = chunk.nbytes / BYTES_PER_SECOND
            played = min(duration, stop_at - starts)
            heard[chunk.item_id] = chunk.item_start + int(played * BYTES_PER_SECOND)
            if played < duration:
                break
            cursor = starts + duration
        # Never claim more than was sent, nor less than Twilio confirmed.
        return {
            item: min(max(nbytes, self.confirmed.get(item, 0)), self.sent.get(item, 0))
            for item, nbytes in heard.items()
        }

    def clear(self, now: float) -> dict[str, int]:
        """A ``clear`` is being sent: return what each interrupted item played, forget the rest."""
        heard = self.heard_at(now)
        self.pending.clear()
        self._names.clear()
        self._anchor = now + self.delay
        self._tail = self._anchor
        for item, nbytes in heard.items():
            self.confirmed[item] = nbytes
        return heard
