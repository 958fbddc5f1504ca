"""Hostile frames the Media Streams parser must refuse with ``TwilioFrameError`` (the consumer
drops those and the call goes on). Any other exception escapes the consumer: daphne logs
"Exception inside application", closes the socket with 1011, and the call is never finalised
while its OpenAI session stays open (see tests/test_e2e_hostile_frames.py).

The crashing frames below were found by tests/test_e2e_fuzz.py, one frame each; they are
regression tests now (the consumer also drops any unexpected parser error as a bad frame).
"""

from __future__ import annotations

import json

import pytest

from calls import twilio_media

SID = "MZ" + "0" * 32
CALL = "CA" + "0" * 32


def start_frame(media_format: object) -> str:
    return json.dumps(
        {"event": "start", "start": {"streamSid": SID, "callSid": CALL, "mediaFormat": media_format}}
    )


def media_frame(timestamp_literal: str) -> str:
    frame = json.dumps({"event": "media", "streamSid": SID, "media": {"payload": "AAAA", "timestamp": 0}})
    return frame.replace('"timestamp": 0', f'"timestamp": {timestamp_literal}')


CRASHING_FRAMES = {
    # AttributeError: 'str' object has no attribute 'get'
    "mediaFormat is a string": start_frame("audio/x-mulaw"),
    # AttributeError: 'list' object has no attribute 'get'
    "mediaFormat is a list": start_frame(["audio/x-mulaw"]),
    # ValueError from int(): not a TwilioFrameError, so not caught
    "sampleRate is not a number": start_frame({"encoding": "audio/x-mulaw", "sampleRate": "fast"}),
    # TypeError from int()
    "sampleRate is a list": start_frame({"encoding": "audio/x-mulaw", "sampleRate": [8000]}),
    # OverflowError: cannot convert float infinity to integer (Python's json reads 1e999 as inf)
    "sampleRate is infinite": start_frame({"sampleRate": 1e999}),
    "media timestamp is 1e999": media_frame("1e999"),
    "media timestamp is -Infinity": media_frame("-Infinity"),
    # RecursionError from json.loads, well under MAX_FRAME_CHARS
    "deeply nested JSON": "[" * 5000,
    "deeply nested object": '{"a":' * 5000,
}


@pytest.mark.parametrize("frame", CRASHING_FRAMES.values(), ids=CRASHING_FRAMES.keys())
def test_parser_refuses_hostile_frame_with_a_frame_error(frame):
    with pytest.raises(twilio_media.TwilioFrameError):
        twilio_media.parse_frame(frame)


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        b"\x00binary",
        "x" * (twilio_media.MAX_FRAME_CHARS + 1),
        "[" * 500,  # nested, but not deep enough to hit the recursion limit
        json.dumps([1, 2]),
        json.dumps({"event": 7}),
        json.dumps({"event": "media", "media": {"payload": "AAAA", "timestamp": float("nan")}}),
        json.dumps({"event": "media", "media": {"payload": "AAAA", "timestamp": {"a": 1}}}),
        json.dumps({"event": "media", "media": {"payload": "AAA"}}),
        json.dumps({"event": "start", "start": {"streamSid": SID, "callSid": CALL, "customParameters": [1]}}),
        json.dumps({"event": "dtmf", "dtmf": {"digit": "12"}}),
        json.dumps({"event": "mark", "mark": {"name": 5}}),
        json.dumps({"event": "clear"}),
    ],
)
def test_parser_refuses_malformed_frames_with_a_frame_error(frame):
    with pytest.raises(twilio_media.TwilioFrameError):
        twilio_media.parse_frame(frame)
