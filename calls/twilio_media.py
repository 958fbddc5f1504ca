"""Twilio Media Streams wire format (bidirectional ``<Connect><Stream>``), sans-IO.

Inbound frames are parsed into small typed events; outbound messages are built as JSON
text directly. The hot path (``media``) keeps the base64 payload as the string Twilio
sent: the bridge forwards it to OpenAI untouched, so no decode/encode happens per frame.
"""

from __future__ import annotations

import binascii
import json
import re
from dataclasses import dataclass, field
from typing import TypeVar

from calls.audio import base64_size

# Twilio's SIDs are two letters and 32 hex digits; anything else never reaches a JSON template.
_SID = re.compile(r"[A-Z]{2}[0-9a-fA-F]{32}")
# Caps what one frame may carry; Twilio's media frames are about 300 bytes.
MAX_FRAME_CHARS = 64 * 1024
# Twilio sends the caller's audio in 20 ms frames (160 bytes of 8 kHz mu-law).
INBOUND_FRAME_MS = 20
MARK_NAME_MAX = 64
# Media timestamps are milliseconds since the stream started; a day is far beyond any call.
MAX_TIMESTAMP_MS = 24 * 3600 * 1000


class TwilioFrameError(ValueError):
    """A frame that does not follow the Media Streams protocol; the socket stays open."""


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    custom_parameters: dict[str, str] = field(default_factory=dict)
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000


@dataclass(frozen=True, slots=True)
class Media:
    payload: str  # base64 mu-law exactly as received
    timestamp_ms: int
    stream_sid: str

    @property
    def size(self) -> int:
        return base64_size(self.payload)


@dataclass(frozen=True, slots=True)
class Dtmf:
    digit: str
    stream_sid: str


@dataclass(frozen=True, slots=True)
class Mark:
    name: str
    stream_sid: str


@dataclass(frozen=True, slots=True)
class Stop:
    stream_sid: str


TwilioEvent = Connected | Start | Media | Dtmf | Mark | Stop


# A JSON object as ``json.loads`` makes it: what its values are is for the parser to check.
_Json = dict[str, object]
T = TypeVar("T")


def _require(mapping: object, key: str, kind: type[T]) -> T:
    if not isinstance(mapping, dict):
        raise TwilioFrameError(f"missing or invalid {key!r}")
    value = mapping.get(key)
    if not isinstance(value, kind):
        raise TwilioFrameError(f"missing or invalid {key!r}")
    return value


def parse_frame(text: str | bytes | None) -> TwilioEvent:
    """Parse one WebSocket frame from Twilio; raise ``TwilioFrameError`` if it is not one."""
    if not isinstance(text, str):
        raise TwilioFrameError("binary frame (Twilio sends JSON text frames)")
    if len(text) > MAX_FRAME_CHARS:
        raise TwilioFrameError(f"frame of {len(text)} characters exceeds {MAX_FRAME_CHARS}")
    try:
        message: object = json.loads(text)
    except (ValueError, RecursionError):
        raise TwilioFrameError("frame is not JSON (or nested too deeply)") from None
    if not isinstance(message, dict):
        raise TwilioFrameError("missing or invalid 'event'")
    event = _require(message, "event", str)
    if event == "media":
        media: _Json = _require(message, "media", dict)
        payload = _require(media, "payload", str)
        try:
            # Validation only (C, a third of the regex's cost); the payload is forwarded as sent.
            binascii.a2b_base64(payload, strict_mode=True)
        except (binascii.Error, ValueError):
            raise TwilioFrameError("media payload is not base64") from None
        timestamp = _timestamp(media.get("timestamp", 0))
        return Media(payload=payload, timestamp_ms=timestamp, stream_sid=str(message.get("streamSid", "")))
    if event == "mark":
        mark = _require(message, "mark", dict)
        return Mark(name=_require(mark, "name", str), stream_sid=str(message.get("streamSid", "")))
    if event == "start":
        start: _Json = _require(message, "start", dict)
        params = start.get("customParameters") or {}
        if not isinstance(params, dict):
            raise TwilioFrameError("customParameters is not an object")
        media_format = start.get("mediaFormat") or {}
        if not isinstance(media_format, dict):
            raise TwilioFrameError("mediaFormat is not an object")
        sample_rate = media_format.get("sampleRate", 8000)
        if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or not 0 < sample_rate <= 192000:
            raise TwilioFrameError("invalid sampleRate")
        return Start(
            stream_sid=_require(start, "streamSid", str),
            call_sid=_require(start, "callSid", str),
            account_sid=str(start.get("accountSid", "")),
            custom_parameters={str(k): str(v) for k, v in params.items()},
            encoding=str(media_format.get("encoding", "audio/x-mulaw")),
            sample_rate=sample_rate,
        )
    if event == "dtmf":
        dtmf = _require(message, "dtmf", dict)
        digit = _require(dtmf, "digit", str)
        if len(digit) != 1 or digit not in "0123456789*#ABCD":
            raise TwilioFrameError("invalid DTMF digit")
        return Dtmf(digit=digit, stream_sid=str(message.get("streamSid", "")))
    if event == "stop":
        return Stop(stream_sid=str(message.get("streamSid", "")))
    if event == "connected":
        return Connected(protocol=str(message.get("protocol", "")))
    raise TwilioFrameError(f"unknown event {event[:32]!r}")


def _timestamp(value: object) -> int:
    """Twilio sends a string of digits; anything else that is not a sane ms count is refused."""
    if isinstance(value, bool):
        raise TwilioFrameError("media timestamp is not a number")
    try:
        number = int(value) if isinstance(value, str | int) else None
    except ValueError:
        number = None
    if number is None or not 0 <= number <= MAX_TIMESTAMP_MS:
        raise TwilioFrameError("media timestamp is not a number of milliseconds in range")
    return number


def valid_sid(value: str) -> bool:
    return bool(_SID.fullmatch(value))


# Outbound messages. ``stream_sid`` was validated at ``start`` and payloads are base64
# (no characters that need JSON escaping), so plain formatting produces valid JSON.


def media_message(stream_sid: str, payload: str) -> str:
    return f'{{"event":"media","streamSid":"{stream_sid}","media":{{"payload":"{payload}"}}}}'


def mark_message(stream_sid: str, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name[:MARK_NAME_MAX]}})


def clear_message(stream_sid: str) -> str:
    return f'{{"event":"clear","streamSid":"{stream_sid}"}}'
