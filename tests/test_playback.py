"""The playback model: what the caller heard, from marks and send times (no sockets)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from calls.bridge.playback import Playback

CHUNK = 960  # 120 ms


def test_echoed_marks_confirm_bytes_in_order():
    playback = Playback()
    first, _ = playback.send("item_a", CHUNK, now=0.0)
    second, _ = playback.send("item_a", CHUNK, now=0.0)
    assert playback.echo(second, now=0.3) is not None  # an echo implies every earlier chunk played
    assert playback.confirmed["item_a"] == 2 * CHUNK
    assert not playback.is_playing
    assert playback.echo(first, now=0.31) is None


def test_round_trip_measured_from_a_mark_sent_into_an_empty_buffer():
    playback = Playback()
    probe = playback.probe(now=10.0)
    playback.echo(probe, now=10.08)
    assert abs(playback.rtt - 0.08) < 1e-9
    # A chunk into an empty buffer: echo = send + rtt + its own duration.
    name, _ = playback.send("item_a", CHUNK, now=11.0)
    playback.echo(name, now=11.0 + 0.08 + 0.12)
    assert abs(playback.rtt - 0.08) < 1e-9


def test_clear_estimates_what_played_since_the_last_echo():
    playback = Playback()
    playback.rtt = 0.08  # 40 ms each way
    names = [playback.send("item_a", CHUNK, now=0.0)[0] for _ in range(10)]  # 1.2 s sent at once
    # Audio reaches Twilio at 0.04; chunk 2 finishes at 0.04 + 0.24; its echo arrives 40 ms later.
    playback.echo(names[1], now=0.04 + 0.24 + 0.04)
    # A clear sent at 0.50 reaches Twilio at 0.54: 0.50 s of playback.
    heard = playback.clear(now=0.50)
    assert abs(heard["item_a"] - 0.50 * 8000) <= 8
    assert not playback.is_playing


def test_buffer_that_ran_dry_is_not_counted_as_playing():
    """The model streamed slower than real time: playback paused between chunks."""
    playback = Playback()
    playback.rtt = 0.0
    playback.send("item_a", CHUNK, now=0.0)  # plays 0.00-0.12
    playback.send("item_a", CHUNK, now=1.0)  # arrives late: plays 1.00-1.12
    heard = playback.clear(now=1.06)
    # A clock since the first delta would claim 1.06 s; the caller heard 0.18 s.
    assert heard["item_a"] == int((0.12 + 0.06) * 8000)


def test_marks_echoed_after_clear_are_not_playback():
    playback = Playback()
    names = [playback.send("item_a", CHUNK, now=0.0)[0] for _ in range(3)]
    heard = playback.clear(now=0.05)
    for name in names:  # Twilio flushes every pending mark at once
        assert playback.echo(name, now=0.06) is None
    assert playback.confirmed["item_a"] == heard["item_a"] < 3 * CHUNK


def test_nothing_sent_means_nothing_heard():
    playback = Playback()
    assert playback.clear(now=1.0) == {}


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["item_a", "item_b"]),
            st.integers(min_value=1, max_value=4000),
            st.floats(min_value=0, max_value=0.5),
        ),
        min_size=1,
        max_size=30,
    ),
    st.floats(min_value=0, max_value=0.3),
    st.integers(min_value=0, max_value=30),
    st.floats(min_value=0, max_value=3),
)
def test_truncation_never_exceeds_sent_audio_nor_undercuts_confirmed(sends, rtt, echoes, clear_after):
    playback = Playback()
    playback.rtt = rtt
    now = 0.0
    names = []
    for item, nbytes, gap in sends:
        now += gap
        names.append(playback.send(item, nbytes, now)[0])
    for name in names[: min(echoes, len(names))]:
        now += 0.01
        playback.echo(name, now)
    confirmed_before = dict(playback.confirmed)
    heard = playback.clear(now + clear_after)
    for item, nbytes in heard.items():
        assert nbytes <= playback.sent[item]
        assert nbytes >= confirmed_before.get(item, 0)
    # Every mark is accounted for: confirmed, or flushed by the clear.
    for name in names:
        assert playback.echo(name, now + 5) is None
    assert not playback.is_playing
