"""A simulated Twilio phone call, over real sockets.

`SimulatedCaller` plays Twilio's part of one call against our real server:
it posts the signed incoming-call webhook, reads the TwiML, opens the
signed Media Stream WebSocket, streams caller audio (paced like a phone),
and plays the agent's audio back in real time the way Twilio's buffer
does (marks echoed when playback passes them, `clear` flushes the buffer
and echoes every pending mark at once). End-to-end tests use it to check
what the caller actually *heard* and when, which is what barge-in
truncation has to estimate (see shared/protocols/barge-in.md).

Deliberately free of Django: it talks to the server only over HTTP and
WebSocket, like Twilio does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import math
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

__all__ = [
    "BYTES_PER_MS",
    "DEFAULT_ACCOUNT_SID",
    "FRAME_BYTES",
    "FRAME_MS",
    "CallerConfig",
    "HeardSegment",
    "MarkEcho",
    "SimulatedCaller",
    "StreamClosed",
    "StreamRejected",
    "WebhookResult",
    "linear_to_mulaw",
    "mulaw_decode",
    "mulaw_encode",
    "mulaw_silence",
    "mulaw_to_linear",
    "mulaw_tone",
    "twilio_signature",
]

SAMPLE_RATE = 8000
BYTES_PER_MS = 8  # 8 kHz, one byte per mu-law sample
FRAME_MS = 20
FRAME_BYTES = FRAME_MS * BYTES_PER_MS  # 160: the inbound frame size Twilio is observed to use
MULAW_SILENCE = 0xFF
DEFAULT_ACCOUNT_SID = "AC" + "5eed" * 8
HTTP_TIMEOUT = 15.0  # Twilio's hard read timeout for call-processing webhooks (error 31408)
USER_AGENT = "TwilioProxy/1.1"
TWIML_CONTENT_TYPES = ("text/xml", "application/xml", "text/html")

# ---------------------------------------------------------------------------
# mu-law (G.711) - our own encoder, since audioop is gone in Python 3.13
# ---------------------------------------------------------------------------

_MULAW_BIAS = 0x84
_MULAW_CLIP = 32635


def linear_to_mulaw(sample: int) -> int:
    """Encode one signed 16-bit sample as a G.711 mu-law byte.

    Negative samples take the one's complement (-1 becomes 0), as the ITU-T
    reference coder does, so the code is symmetric around zero.
    """
    sign = 0
    if sample < 0:
        sign = 0x80
        sample = ~sample
    sample = min(sample, _MULAW_CLIP) + _MULAW_BIAS
    exponent = sample.bit_length() - 8  # 0..7, since 0x84 <= sample <= 0x7FFF
    mantissa = (sample >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def mulaw_to_linear(byte: int) -> int:
    """Decode one mu-law byte to a signed 16-bit sample."""
    byte = ~byte & 0xFF
    exponent = (byte >> 4) & 0x07
    magnitude = ((((byte & 0x0F) << 3) + _MULAW_BIAS) << exponent) - _MULAW_BIAS
    return -magnitude if byte & 0x80 else magnitude


def mulaw_encode(samples: Iterable[int]) -> bytes:
    """Encode signed 16-bit samples (8 kHz) as mu-law bytes."""
    return bytes(linear_to_mulaw(s) for s in samples)


def mulaw_decode(data: bytes) -> list[int]:
    """Decode mu-law bytes to signed 16-bit samples (handy for test assertions)."""
    return [mulaw_to_linear(b) for b in data]


def mulaw_silence(ms: int) -> bytes:
    """`ms` milliseconds of 8 kHz mu-law digital silence (0xFF)."""
    return bytes([MULAW_SILENCE]) * (ms * BYTES_PER_MS)


def mulaw_tone(ms: int, freq: float = 440.0, amplitude: float = 8000) -> bytes:
    """A sine tone as 8 kHz mu-law: loud enough to pass for speech in VAD-ish tests."""
    amplitude = max(-32767.0, min(32767.0, amplitude))
    step = 2 * math.pi * freq / SAMPLE_RATE
    return mulaw_encode(round(amplitude * math.sin(step * i)) for i in range(ms * BYTES_PER_MS))


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str]) -> str:
    """`X-Twilio-Signature` for `url` + `params`, exactly as Twilio computes it."""
    return RequestValidator(auth_token).compute_signature(url, params)


# ---------------------------------------------------------------------------
# Data types
# ---------------------------------------------------------------------------


@dataclass
class CallerConfig:
    """Who is calling, and where the server really is versus where Twilio thinks it is."""

    base_url: str  # where to actually connect, e.g. "http://127.0.0.1:8123"
    public_base_url: str  # the server's PUBLIC_BASE_URL; signatures are computed over it
    auth_token: str
    account_sid: str = DEFAULT_ACCOUNT_SID
    call_sid: str | None = None  # default: "CA" + 32 random hex
    from_number: str = "+15550001111"
    to_number: str = "+15552223333"
    direction: str = "inbound"
    webhook_path: str = "/incoming-call"
    extra_params: dict[str, str] = field(default_factory=dict)
    sign: bool = True  # False: send no signature header at all
    bad_signature: bool = False  # True: send a signature made with the wrong token
    link_delay: float = 0.0  # one-way network delay (s), applied both ways on the stream
    # True: like a real phone line, send a frame every 20 ms for the whole call
    # (silence when the test is not speaking), so media timestamps track wall time.
    continuous: bool = False
    stream_sid: str | None = None  # default: "MZ" + 32 random hex


@dataclass
class WebhookResult:
    """What our server answered to the incoming-call webhook, plus what we sent."""

    status: int
    content_type: str  # full Content-Type header, "" if absent
    body: str
    headers: dict[str, str]
    url: str  # where the POST actually went
    signed_url: str  # the public URL the signature was computed over
    params: dict[str, str]
    signature: str | None
    twiml: str | None = None  # raw XML when the response is TwiML
    verbs: list[str] = field(default_factory=list)  # top-level TwiML verbs, in order
    stream_url: str | None = None  # <Connect><Stream url>, resolved if relative
    stream_parameters: dict[str, str] = field(default_factory=dict)
    stream_name: str | None = None
    stream_status_callback: str | None = None
    stream_status_callback_method: str | None = None
    connect_action: str | None = None
    twiml_error: str | None = None  # why Twilio would fail this response (error 11200 etc.)


@dataclass
class HeardSegment:
    """One uninterrupted run of agent audio played to the caller."""

    start: float  # time.monotonic() when this run started playing
    end: float  # time.monotonic() when the last byte so far finished playing
    audio: bytearray = field(default_factory=bytearray)

    @property
    def duration_ms(self) -> float:
        return len(self.audio) / BYTES_PER_MS


@dataclass
class MarkEcho:
    """A mark the caller echoed, with enough context to check it against playback."""

    name: str
    played: bool  # False when flushed by `clear` (its audio was never played)
    time: float  # time.monotonic() when the echo was generated (before link delay)
    position: int  # offset in the received agent audio at which the mark was queued
    heard_bytes: int  # len(heard) at echo time


class StreamRejected(Exception):
    """The server refused the WebSocket upgrade (Twilio would log error 31920)."""

    def __init__(self, status: int, body: bytes = b"") -> None:
        super().__init__(f"server rejected the Media Stream handshake: HTTP {status}")
        self.status = status
        self.body = body


class StreamClosed(ConnectionError):
    """Tried to send on a stream that is closed (by the server, or by hang_up)."""


# ---------------------------------------------------------------------------
# HTTP helpers (stdlib only; run in a thread)
# ---------------------------------------------------------------------------


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Surface 3xx answers instead of following them: a redirected webhook is a bug."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _http_post_form(
    url: str, body: bytes, headers: dict[str, str], timeout: float
) -> tuple[int, dict[str, str], bytes]:
    # ProxyHandler({}) so an http_proxy in the environment never intercepts loopback calls.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers.items()), exc.read()


def _to_ws_scheme(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urllib.parse.urlunsplit(parts._replace(scheme=scheme))


def _map_origin(stream_url: str, base_url: str) -> str:
    """Swap the public origin of the Stream URL for where the server really listens."""
    stream = urllib.parse.urlsplit(stream_url)
    base = urllib.parse.urlsplit(base_url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}[base.scheme]
    return urllib.parse.urlunsplit((scheme, base.netloc, stream.path or "/", stream.query, ""))


def _parse_twiml(result: WebhookResult, raw: bytes) -> None:
    """Fill the TwiML fields of `result`, or say why Twilio would reject it."""
    media_type = result.content_type.split(";", 1)[0].strip().lower()
    if media_type not in TWIML_CONTENT_TYPES:
        result.twiml_error = (
            f"Content-Type {result.content_type!r} is not TwiML "
            "(text/plain is read aloud; others fail with 11200)"
        )
        return
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        result.twiml_error = f"invalid XML: {exc}"
        return
    if root.tag != "Response":
        result.twiml_error = f"root element is <{root.tag}>, not <Response>"
        return
    result.twiml = result.body
    result.verbs = [child.tag for child in root]
    connect_el = root.find("Connect")
    if connect_el is None:
        return
    result.connect_action = connect_el.get("action")
    stream = connect_el.find("Stream")
    if stream is None:
        return
    url = stream.get("url")
    if url is not None and not urllib.parse.urlsplit(url).scheme:
        url = _to_ws_scheme(urllib.parse.urljoin(result.signed_url, url))
    result.stream_url = url
    result.stream_name = stream.get("name")
    result.stream_status_callback = stream.get("statusCallback")
    result.stream_status_callback_method = stream.get("statusCallbackMethod")
    result.stream_parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}


def _frames(mulaw: bytes) -> list[bytes]:
    """160-byte frames, the last padded with mu-law silence."""
    frames = [mulaw[i : i + FRAME_BYTES] for i in range(0, len(mulaw), FRAME_BYTES)]
    if frames and len(frames[-1]) < FRAME_BYTES:
        frames[-1] = frames[-1] + bytes([MULAW_SILENCE]) * (FRAME_BYTES - len(frames[-1]))
    return frames


_CLOSED = object()  # inbound-queue sentinel: the server's socket closed

_ALLOWED_FIELDS = {
    "media": {"event", "streamSid", "media"},
    "mark": {"event", "streamSid", "mark"},
    "clear": {"event", "streamSid"},
}


# ---------------------------------------------------------------------------
# The caller
# ---------------------------------------------------------------------------


class SimulatedCaller:
    """Does what Twilio does for one phone call: webhook, Media Stream, playback.

    Not thread-safe; use from one event loop. Do not run two `send_audio`
    calls concurrently (a phone has one microphone).
    """

    def __init__(self, config: CallerConfig) -> None:
        self.config = config
        self.call_sid = config.call_sid or "CA" + secrets.token_hex(16)
        self.stream_sid = config.stream_sid or "MZ" + secrets.token_hex(16)
        self.link_delay = config.link_delay
        self.webhook: WebhookResult | None = None
        self.after_stream: WebhookResult | None = None  # TwiML of <Connect action>, if followed

        # What the caller experienced (public, read by tests).
        self.heard = bytearray()
        self.heard_segments: list[HeardSegment] = []
        self.received_media = bytearray()
        self.marks_echoed: list[tuple[str, bool]] = []
        self.mark_echoes: list[MarkEcho] = []
        self.clears: list[float] = []
        self.protocol_errors: list[str] = []
        self.warnings: list[str] = []  # things real Twilio would refuse but we tolerate locally
        self.received: list[tuple[float, Any]] = []  # every server message, as delivered
        self.sent_messages: list[dict[str, Any]] = []  # every JSON message we sent, in order
        self.stream_started_at: float | None = None
        self.close_code: int | None = None
        self.closed_by_server: bool | None = None
        self.unplayed_at_close: int | None = None  # bytes still buffered when the server closed

        self._ws: ClientConnection | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._mic_task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._closed = False  # socket closed (either side)
        self._caller_closing = False  # hang_up()/aclose() started the close
        self._shut = False  # aclose() ran

        # outbound pipeline: (due time, data, index)
        self._seq = 0
        self._chunk = 0
        self._next_ts = 0
        self._out: deque[tuple[float, str | bytes, int]] = deque()
        self._out_event = asyncio.Event()
        self._out_count = 0
        self._sent_index = 0
        self._first_failed: int | None = None
        self._mic: deque[tuple[bytes, asyncio.Future[None] | None]] = deque()

        # inbound pipeline: (due time, message)
        self._in: deque[tuple[float, object]] = deque()
        self._in_event = asyncio.Event()

        # playback model; offsets count bytes of received agent audio
        self._pending = bytearray()  # received, not yet played nor cleared
        self._consumed = 0  # offset of _pending[0]
        self._marks: deque[tuple[str, int]] = deque()  # (name, offset) not yet echoed
        self._run: HeardSegment | None = None  # the segment playing now, if any
        self._run_t0 = 0.0
        self._run_pos0 = 0
        self._playback_over = False
        self._playback_wake = asyncio.Event()

    # -- context manager -----------------------------------------------------

    async def __aenter__(self) -> SimulatedCaller:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the socket (no `stop`) and cancel every task we started."""
        self._stop_playback(time.monotonic())
        self._fail_mic("caller closed")
        if self._ws is not None and not self._closed:
            self._caller_closing = True
            with contextlib.suppress(Exception):
                await self._ws.close(1000)
        self._shut = True
        tasks = [t for t in [*self._tasks, self._mic_task] if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._notify()

    # -- webhook ---------------------------------------------------------------

    def webhook_params(self) -> dict[str, str]:
        """The form Twilio posts for an incoming call (legacy Caller/Called included)."""
        cfg = self.config
        params = {
            "AccountSid": cfg.account_sid,
            "ApiVersion": "2010-04-01",
            "CallSid": self.call_sid,
            "CallStatus": "ringing",
            "Called": cfg.to_number,
            "Caller": cfg.from_number,
            "Direction": cfg.direction,
            "From": cfg.from_number,
            "To": cfg.to_number,
        }
        params.update(cfg.extra_params)
        return params

    async def post_webhook(self) -> WebhookResult:
        """POST the signed incoming-call webhook and parse the TwiML answer."""
        result = await self._post_signed(self.config.webhook_path, self.webhook_params())
        self.webhook = result
        return result

    async def follow_connect_action(self) -> WebhookResult:
        """What Twilio does when ``<Connect>`` ends while the call goes on (our server closed
        the stream): request the ``action`` URL and play the TwiML it returns."""
        if self.webhook is None or not self.webhook.connect_action:
            raise RuntimeError("the TwiML had no <Connect action>")
        public = self.config.public_base_url.rstrip("/")
        action = self.webhook.connect_action
        path = action[len(public) :] if action.startswith(public) else action
        params = self.webhook_params() | {"CallStatus": "in-progress"}
        self.after_stream = await self._post_signed(path, params)
        return self.after_stream

    async def _post_signed(self, path: str, params: dict[str, str]) -> WebhookResult:
        cfg = self.config
        url = cfg.base_url.rstrip("/") + path
        signed_url = cfg.public_base_url.rstrip("/") + path
        signature = self._signature(signed_url, params)
        headers = {
            "Content-Type": "application/x-www-form-urlencoded; charset=UTF-8",
            "User-Agent": USER_AGENT,
            "Accept": "*/*",
        }
        if signature is not None:
            headers["X-Twilio-Signature"] = signature
        body = urllib.parse.urlencode(params).encode()
        status, resp_headers, raw = await asyncio.to_thread(_http_post_form, url, body, headers, HTTP_TIMEOUT)
        content_type = next((v for k, v in resp_headers.items() if k.lower() == "content-type"), "")
        result = WebhookResult(
            status=status,
            content_type=content_type,
            body=raw.decode("utf-8", errors="replace"),
            headers=resp_headers,
            url=url,
            signed_url=signed_url,
            params=params,
            signature=signature,
        )
        if status == 200:
            _parse_twiml(result, raw)
        return result

    # -- stream ------------------------------------------------------------------

    async def connect_stream(
        self,
        *,
        stream_url: str | None = None,
        signature: str | Literal["auto"] | None = "auto",
        parameters: Mapping[str, str] | None = None,
    ) -> None:
        """Open the Media Stream like Twilio, then send `connected` and `start`.

        The signature covers the Stream URL exactly as written in the TwiML,
        with empty params; the socket goes to the same path on `base_url`.
        If the server accepts and then closes at once, this returns normally:
        check `wait_closed_by_server()`.
        """
        if self._ws is not None:
            raise RuntimeError("stream already connected")
        if stream_url is None:
            if self.webhook is None or self.webhook.stream_url is None:
                raise RuntimeError("no Stream URL: call post_webhook() first or pass stream_url")
            stream_url = self.webhook.stream_url
        if parameters is None:
            parameters = self.webhook.stream_parameters if self.webhook else {}
        self._check_stream_url(stream_url)
        if signature == "auto":
            signature = self._signature(stream_url, {})
        headers = {} if signature is None else {"x-twilio-signature": signature}
        try:
            self._ws = await connect(
                _map_origin(stream_url, self.config.base_url),
                additional_headers=headers,
                user_agent_header=USER_AGENT,
                compression=None,
                proxy=None,
                ping_interval=None,
                open_timeout=10,
                close_timeout=2,
                max_size=8 * 2**20,
            )
        except InvalidStatus as exc:
            raise StreamRejected(exc.response.status_code, exc.response.body or b"") from exc

        self._spawn(self._sender_loop(), "sender")
        self._spawn(self._reader_loop(), "reader")
        self._spawn(self._delivery_loop(), "delivery")
        self._spawn(self._playback_loop(), "playback")

        self._send_json({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        self.stream_started_at = time.monotonic()
        start = {
            "event": "start",
            "sequenceNumber": self._next_seq(),
            "start": {
                "accountSid": self.config.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": dict(parameters),
            },
            "streamSid": self.stream_sid,
        }
        index = self._send_json(start)
        if self.config.continuous:
            self._mic_task = asyncio.create_task(
                self._mic_loop(self.stream_started_at), name=self._task_name("mic")
            )
        with contextlib.suppress(StreamClosed):
            await self._wait_sent(index)

    async def send_audio(self, mulaw: bytes, *, realtime: bool = True) -> None:
        """Speak: send `mulaw` as 160-byte `media` frames, paced like a phone if `realtime`.

        Realtime frames follow an absolute schedule (frame k at t0 + k*20 ms).
        Media timestamps advance 20 ms per frame; after an idle gap (no
        `continuous` line) they jump forward to the wall-clock time since the
        stream started, the way lost frames would look.
        """
        frames = _frames(mulaw)
        if not frames:
            return
        self._require_open()
        if self.config.continuous:
            if not realtime:
                raise ValueError("a continuous caller always speaks in real time")
            if self._mic_task is None or self._mic_task.done():
                raise StreamClosed("the call's audio line is closed")
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            for i, frame in enumerate(frames):
                self._mic.append((frame, done if i == len(frames) - 1 else None))
            await done
            return
        assert self.stream_started_at is not None
        t0 = time.monotonic()
        elapsed_ms = int((t0 - self.stream_started_at) * 1000)
        base_ts = max(self._next_ts, elapsed_ms // FRAME_MS * FRAME_MS)
        self._next_ts = base_ts + FRAME_MS * len(frames)
        index = 0
        for k, frame in enumerate(frames):
            if realtime:
                delay = t0 + k * FRAME_MS / 1000 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            index = self._send_media_frame(frame, base_ts + k * FRAME_MS)
        await self._wait_sent(index)

    async def send_silence(self, ms: int, *, realtime: bool = True) -> None:
        """Send `ms` of mu-law silence (the caller is listening)."""
        await self.send_audio(mulaw_silence(ms), realtime=realtime)

    async def press(self, digit: str) -> None:
        """Press a key: a `dtmf` event, as bidirectional streams deliver them."""
        if len(digit) != 1 or digit not in "0123456789*#":
            raise ValueError(f"not a DTMF digit: {digit!r}")
        self._require_open()
        index = self._send_json(
            {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "sequenceNumber": self._next_seq(),
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )
        await self._wait_sent(index)

    async def send_raw(self, data: str | bytes) -> None:
        """Send an arbitrary text (str) or binary (bytes) frame, for hostile-input tests."""
        self._require_open()
        await self._wait_sent(self._enqueue(data))

    async def hang_up(self) -> None:
        """End the call: send `stop`, then close the socket with 1000.

        A no-op if the server already closed the stream (the call moved on).
        """
        if self._ws is None:
            raise RuntimeError("stream not connected: call connect_stream() first")
        if self._closed:
            return
        self._caller_closing = True
        self._stop_playback(time.monotonic())
        self._fail_mic("caller hung up")
        if self._mic_task is not None:
            self._mic_task.cancel()
            await asyncio.gather(self._mic_task, return_exceptions=True)
        index = self._send_json(
            {
                "event": "stop",
                "sequenceNumber": self._next_seq(),
                "stop": {"accountSid": self.config.account_sid, "callSid": self.call_sid},
                "streamSid": self.stream_sid,
            }
        )
        with contextlib.suppress(StreamClosed):
            await self._wait_sent(index)
        assert self._ws is not None
        await self._ws.close(1000)
        await self.wait_for(lambda: self._closed, timeout=5)

    async def wait_closed_by_server(self, timeout: float = 10) -> int | None:
        """Wait until the socket is closed; return the server's close code.

        None if the connection dropped without a close frame. Also returns
        if it was the caller who closed; see `closed_by_server`.
        """
        await self.wait_for(lambda: self._closed, timeout=timeout)
        return self.close_code

    async def wait_heard(self, nbytes: int, timeout: float = 10) -> None:
        """Wait until at least `nbytes` of agent audio have been played to the caller."""
        await self.wait_for(lambda: len(self.heard) >= nbytes, timeout=timeout)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float | None = 10) -> None:
        """Wait until `predicate()` holds; re-checked on every change of caller state."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed = self._changed
                    if predicate():
                        return
                    await changed.wait()
        except TimeoutError:
            raise TimeoutError(f"condition not met within {timeout}s ({self.describe()})") from None

    @property
    def heard_ms(self) -> float:
        return len(self.heard) / BYTES_PER_MS

    @property
    def buffered_bytes(self) -> int:
        """Agent audio received but not yet played (what a `clear` would drop)."""
        return len(self._pending)

    def describe(self) -> str:
        """One-line state summary, for failure messages."""
        return (
            f"heard={len(self.heard)}B received={len(self.received_media)}B "
            f"buffered={len(self._pending)}B marks={self.marks_echoed} "
            f"pending_marks={[n for n, _ in self._marks]} clears={len(self.clears)} "
            f"protocol_errors={self.protocol_errors} closed={self._closed} "
            f"close_code={self.close_code}"
        )

    # -- internals: helpers ------------------------------------------------------

    def _signature(self, url: str, params: Mapping[str, str]) -> str | None:
        if not self.config.sign:
            return None
        token = self.config.auth_token
        if self.config.bad_signature:
            token = token + "-not-the-auth-token"
        return twilio_signature(token, url, params)

    def _check_stream_url(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "wss":
            self.warnings.append(f"31922: Twilio only connects to wss:// Stream URLs, got {url}")
        if parts.query:
            self.warnings.append(f"31920: Stream URL must not carry a query string: {url}")

    def _task_name(self, role: str) -> str:
        return f"SimulatedCaller[{self.call_sid}]-{role}"

    def _spawn(self, coro: Any, role: str) -> None:
        self._tasks.append(asyncio.create_task(coro, name=self._task_name(role)))

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _require_open(self) -> None:
        if self._ws is None:
            raise RuntimeError("stream not connected: call connect_stream() first")
        if self._closed or self._shut:
            raise StreamClosed(f"stream closed (close code {self.close_code})")

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    # -- internals: outbound -------------------------------------------------------

    def _enqueue(self, data: str | bytes) -> int:
        """Queue a frame for the wire (after the link delay); returns its index."""
        if self._first_failed is not None or self._closed:
            raise StreamClosed(f"stream closed (close code {self.close_code})")
        self._out_count += 1
        self._out.append((time.monotonic() + max(0.0, self.link_delay), data, self._out_count))
        self._out_event.set()
        return self._out_count

    def _send_json(self, message: dict[str, Any]) -> int:
        self.sent_messages.append(message)
        return self._enqueue(json.dumps(message, separators=(",", ":")))

    def _send_media_frame(self, frame: bytes, timestamp: int) -> int:
        self._chunk += 1
        return self._send_json(
            {
                "event": "media",
                "sequenceNumber": self._next_seq(),
                "media": {
                    "track": "inbound",
                    "chunk": str(self._chunk),
                    "timestamp": str(timestamp),
                    "payload": base64.b64encode(frame).decode("ascii"),
                },
                "streamSid": self.stream_sid,
            }
        )

    async def _wait_sent(self, index: int) -> None:
        await self.wait_for(lambda: self._sent_index >= index or self._shut, timeout=None)
        if self._shut or (self._first_failed is not None and index >= self._first_failed):
            raise StreamClosed(f"stream closed (close code {self.close_code})")

    async def _sender_loop(self) -> None:
        assert self._ws is not None
        while True:
            while not self._out:
                self._out_event.clear()
                await self._out_event.wait()
            due, data, index = self._out[0]
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._out.popleft()
            if self._first_failed is None:
                try:
                    await self._ws.send(data)
                except ConnectionClosed:
                    self._first_failed = index
                except Exception as exc:  # never die silently: senders wait on us
                    self.warnings.append(f"send failed: {exc!r}")
                    self._first_failed = index
            self._sent_index = index
            self._notify()

    async def _mic_loop(self, t0: float) -> None:
        """A phone line: one frame every 20 ms from stream start, silence when idle."""
        silence = bytes([MULAW_SILENCE]) * FRAME_BYTES
        k = 0
        try:
            while True:
                delay = t0 + k * FRAME_MS / 1000 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                frame, done = self._mic.popleft() if self._mic else (silence, None)
                self._send_media_frame(frame, k * FRAME_MS)
                self._next_ts = (k + 1) * FRAME_MS
                if done is not None and not done.done():
                    done.set_result(None)
                k += 1
        except StreamClosed:
            self._fail_mic("stream closed")

    def _fail_mic(self, reason: str) -> None:
        while self._mic:
            _, done = self._mic.popleft()
            if done is not None and not done.done():
                done.set_exception(StreamClosed(reason))

    # -- internals: inbound ----------------------------------------------------------

    async def _reader_loop(self) -> None:
        assert self._ws is not None
        ws = self._ws
        try:
            async for message in ws:
                self._inbound(message)
        except ConnectionClosed:
            pass
        await ws.wait_closed()
        self._inbound(_CLOSED)

    def _inbound(self, item: object) -> None:
        if self.link_delay <= 0 and not self._in:
            self._deliver(item)
        else:
            self._in.append((time.monotonic() + max(0.0, self.link_delay), item))
            self._in_event.set()

    async def _delivery_loop(self) -> None:
        while True:
            while not self._in:
                self._in_event.clear()
                await self._in_event.wait()
            due, item = self._in[0]
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            self._in.popleft()
            self._deliver(item)

    def _deliver(self, item: object) -> None:
        now = time.monotonic()
        if item is _CLOSED:
            self._on_closed(now)
        elif isinstance(item, bytes):
            self.received.append((now, item))
            self._protocol_error(f"31950: binary frame from server ({len(item)} bytes)")
        elif isinstance(item, str):
            self._on_text(item, now)
        self._notify()

    def _protocol_error(self, text: str) -> None:
        self.protocol_errors.append(text)

    def _on_text(self, text: str, now: float) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            self.received.append((now, text))
            self._protocol_error(f"31951: invalid JSON: {text[:80]!r}")
            return
        self.received.append((now, message))
        if not isinstance(message, dict):
            self._protocol_error(f"31951: message is not a JSON object: {text[:80]!r}")
            return
        event = message.get("event")
        if event not in _ALLOWED_FIELDS:
            self._protocol_error(f"31951: unknown event {event!r}")
            return
        if "streamSid" not in message:
            self._protocol_error(f"31951: {event} without streamSid")
            return
        if message["streamSid"] != self.stream_sid:
            self._protocol_error(f"31951: {event} for wrong streamSid {message['streamSid']!r}")
            return
        extra = set(message) - _ALLOWED_FIELDS[event]
        if extra:
            self._protocol_error(f"31951: {event} with unexpected fields {sorted(extra)}")
            return
        if event == "media":
            self._on_media_message(message.get("media"), now)
        elif event == "mark":
            mark = message.get("mark")
            if not isinstance(mark, dict) or set(mark) != {"name"} or not isinstance(mark["name"], str):
                self._protocol_error(f"31951: mark needs exactly mark.name (string): {mark!r}")
                return
            self._on_mark(mark["name"], now)
        else:
            self._on_clear(now)

    def _on_media_message(self, media: object, now: float) -> None:
        if not isinstance(media, dict) or set(media) != {"payload"}:
            self._protocol_error(f"31951: media needs exactly media.payload: {media!r:.80}")
            return
        payload = media["payload"]
        if not isinstance(payload, str):
            self._protocol_error("31951: media.payload is not a string")
            return
        try:
            audio = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            self._protocol_error(f"31951: media.payload is not valid base64: {payload[:40]!r}")
            return
        self._on_audio(audio, now)

    def _on_closed(self, now: float) -> None:
        ws = self._ws
        assert ws is not None
        self._advance(now)
        if not self._playback_over:
            # Twilio moves on to the next TwiML verb: whatever is still buffered is not played.
            self.unplayed_at_close = len(self._pending)
        self._stop_playback(now)
        close_rcvd = ws.protocol.close_rcvd
        self.close_code = close_rcvd.code if close_rcvd is not None else None
        self.closed_by_server = not self._caller_closing
        self._closed = True
        self._fail_mic("stream closed")

    # -- internals: playback model ---------------------------------------------------

    def _on_audio(self, audio: bytes, now: float) -> None:
        self._advance(now)
        self.received_media += audio
        if self._playback_over or not audio:
            return
        self._pending += audio
        if self._run is None:
            self._run = HeardSegment(start=now, end=now)
            self.heard_segments.append(self._run)
            self._run_t0 = now
            self._run_pos0 = self._consumed
        self._playback_wake.set()

    def _on_mark(self, name: str, now: float) -> None:
        self._advance(now)
        if self._playback_over:
            return
        position = self._consumed + len(self._pending)
        if self._pending:
            self._marks.append((name, position))
            self._playback_wake.set()
        else:
            self._echo(name, True, now, position)

    def _on_clear(self, now: float) -> None:
        self._advance(now)
        self.clears.append(now)
        self._run = None
        self._consumed += len(self._pending)
        self._pending.clear()
        while self._marks:
            name, position = self._marks.popleft()
            self._echo(name, False, now, position)
        self._playback_wake.set()

    def _echo(self, name: str, played: bool, now: float, position: int) -> None:
        self.marks_echoed.append((name, played))
        self.mark_echoes.append(MarkEcho(name, played, now, position, len(self.heard)))
        with contextlib.suppress(StreamClosed):
            self._send_json(
                {
                    "event": "mark",
                    "sequenceNumber": self._next_seq(),
                    "streamSid": self.stream_sid,
                    "mark": {"name": name},
                }
            )
        self._notify()

    def _advance(self, now: float) -> None:
        """Play everything due by `now` at 8 bytes/ms, then echo marks playback passed."""
        run = self._run
        if run is None:
            return
        target = self._run_pos0 + int((now - self._run_t0) * SAMPLE_RATE + 1e-6)
        n = min(target - self._consumed, len(self._pending))
        if n > 0:
            chunk = bytes(self._pending[:n])
            del self._pending[:n]
            self._consumed += n
            self.heard += chunk
            run.audio += chunk
            run.end = self._run_t0 + (self._consumed - self._run_pos0) / SAMPLE_RATE
            self._notify()
        while self._marks and self._marks[0][1] <= self._consumed:
            name, position = self._marks.popleft()
            self._echo(name, True, now, position)
        if not self._pending:
            self._run = None  # ran dry: playback pauses until more audio arrives

    def _stop_playback(self, now: float) -> None:
        """The call is over for the caller's ear: play up to `now`, then nothing more."""
        self._advance(now)
        self._playback_over = True
        self._run = None
        self._playback_wake.set()

    def _next_playback_event(self, now: float) -> float | None:
        """When playback next needs attention: 20 ms tick, a mark, or running dry."""
        if self._run is None:
            return None
        t0, pos0 = self._run_t0, self._run_pos0
        tick = t0 + (math.floor((now - t0) / (FRAME_MS / 1000) + 1e-9) + 1) * FRAME_MS / 1000
        dry = t0 + (self._consumed + len(self._pending) - pos0) / SAMPLE_RATE
        due = min(tick, dry)
        if self._marks:
            due = min(due, t0 + (self._marks[0][1] - pos0) / SAMPLE_RATE)
        return due

    async def _playback_loop(self) -> None:
        while True:
            now = time.monotonic()
            self._advance(now)
            due = self._next_playback_event(now)
            self._playback_wake.clear()
            timeout = None if due is None else max(0.0, due - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._playback_wake.wait()
