"""A call's link to OpenAI Realtime: one session at a time, kept up through drops (the bridge
replays the conversation), replaced on purpose before its time limit, and given up after
repeated failures or a refusal that retrying cannot fix.

``reconnect_delay`` is the retry policy, pure so it can be tested on its own;
``OpenAISessionRunner`` owns the socket and the reconnect loop, and tells the consumer what
happened through the callbacks it was built with (the consumer feeds the bridge).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from calls import model_endpoint, preconnect, realtime
from calls.bridge.actions import EndCall

logger = logging.getLogger(__name__)

OPENAI_CONNECT_TIMEOUT = 10.0
# Reconnect after a dropped OpenAI session within about 2 s; a session that lived this long
# counts as healthy again. Close codes 3000 (bad key) and 4000 (beta shape) cannot be retried.
RECONNECT_DELAYS = (0.1, 0.5, 1.0)
STABLE_SESSION_SECONDS = 30.0
FATAL_CLOSE_CODES = frozenset({3000, 4000})
# OpenAI events handled back to back before the reader yields (a burst of deltas: ~1 ms).
OPENAI_BURST = 16


@dataclass(frozen=True, slots=True)
class Reconnect:
    """What to do after a session failed: wait ``delay`` seconds and connect again, with
    ``failures`` failures now counted in a row; or, if ``delay`` is None, end the call."""

    delay: float | None
    failures: int

    @property
    def gives_up(self) -> bool:
        return self.delay is None


def reconnect_delay(failures: int, lived_seconds: float, fatal: bool) -> Reconnect:
    """The retry policy, given the failures so far in a row, how long the failed session
    lived and whether its failure is one retrying cannot fix (a refused key)."""
    if lived_seconds > STABLE_SESSION_SECONDS:
        failures = 0  # it was healthy: this drop starts a new run of failures
    if fatal or failures >= len(RECONNECT_DELAYS):
        return Reconnect(None, failures)
    return Reconnect(RECONNECT_DELAYS[failures], failures + 1)


class OpenAISessionRunner:
    """Runs the call's OpenAI sessions, one after another, until the call ends.

    The consumer is told of each session (``on_connected``), each event (``on_event``) and
    each loss (``on_lost``), and asked to end the call (``request_end``); ``ending`` answers
    whether it already is ending, so no new session is opened for it."""

    def __init__(
        self,
        call_sid: str,
        *,
        on_connected: Callable[[bool], Awaitable[None]],
        on_event: Callable[[realtime.ServerEvent], Awaitable[None]],
        on_lost: Callable[[str, bool], Awaitable[None]],
        request_end: Callable[[EndCall], None],
        ending: Callable[[], bool],
    ) -> None:
        self.call_sid = call_sid
        self._on_connected = on_connected
        self._on_event = on_event
        self._on_lost = on_lost
        self._request_end = request_end
        self._ending = ending
        self.openai_ws: ClientConnection | None = None
        self.recycling = False
        # The session the webhook opened, claimed as soon as the stream authenticated (so that a
        # replayed start racing this stream finds nothing to close); used for the first session.
        self.preconnected: preconnect.PendingSession | None = None
        self._reader: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def connected(self) -> bool:
        return self.openai_ws is not None

    def claim_preconnected(self, call_sid: str) -> None:
        self.preconnected = preconnect.claim(call_sid)

    async def discard_preconnected(self, why: str) -> None:
        """The call will not run: close the session its webhook opened, if this stream has it."""
        if self.preconnected is not None:
            logger.info("call %s: closing its pre-connected OpenAI session: %s", self.call_sid, why)
            pending, self.preconnected = self.preconnected, None
            await pending.discard()

    def start(self, agent: realtime.AgentConfig) -> None:
        self._reader = asyncio.create_task(self._run(agent))

    async def close(self) -> None:
        """The call is over: close the session (1000: it must not linger) and stop reading."""
        self._closed = True  # that close is not a drop to reconnect after
        if self.openai_ws is not None:
            await self.openai_ws.close()
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)

    async def _run(self, agent: realtime.AgentConfig) -> None:
        """Keep the call connected to OpenAI until the call ends."""
        try:
            where = await model_endpoint.endpoint()
        except model_endpoint.EndpointError as exc:
            logger.error("call %s: %s", self.call_sid, exc)
            self._request_end(EndCall("error", str(exc)))
            return
        url = realtime.connect_url(where.url, agent.model)
        failures = 0
        while not (self._closed or self._ending()):
            started = time.monotonic()
            failure = await self._session(url, where.api_key, agent)
            if self._closed or self._ending():
                return
            if failure is None:  # replaced on purpose: connect again at once
                logger.info("call %s: recycling the OpenAI session", self.call_sid)
                await self._on_lost("recycled", True)
                continue
            fatal, detail = failure
            decision = reconnect_delay(failures, time.monotonic() - started, fatal)
            if decision.delay is None:
                self._request_end(EndCall("error", detail))
                return
            logger.warning("call %s: %s; reconnecting", self.call_sid, detail)
            await self._on_lost(detail, False)
            await asyncio.sleep(decision.delay)
            failures = decision.failures

    async def _connect(
        self, url: str, api_key: str, agent: realtime.AgentConfig
    ) -> tuple[ClientConnection, bool]:
        """The call's first session may be the one its webhook opened (calls/preconnect.py),
        already configured; reconnects and recycles, or no usable one, connect afresh.
        Returns the socket and whether its session.update was already sent."""
        pending, self.preconnected = self.preconnected, None
        if pending is not None:
            ws = await pending.connection(agent, timeout=OPENAI_CONNECT_TIMEOUT)
            if ws is not None:
                return ws, True
        ws = await preconnect.open_session(url, api_key, timeout=OPENAI_CONNECT_TIMEOUT)
        return ws, False

    async def _session(self, url: str, api_key: str, agent: realtime.AgentConfig) -> tuple[bool, str] | None:
        """Run one OpenAI session. None if we closed it on purpose, else (fatal, why)."""
        self.recycling = False
        try:
            ws, configured = await self._connect(url, api_key, agent)
            async with ws:
                self.openai_ws = ws
                await self._on_connected(configured)
                # websockets ends the loop quietly only on 1000/1001; any other close (1011,
                # OpenAI's 3000 for a bad key, 4000 for the beta shape, a drop without a close
                # frame: 1006) raises. Its code is on ``ws``, read below: caught here, a fatal
                # code ends the call at once instead of being retried as unreachable.
                with contextlib.suppress(ConnectionClosed):
                    handled = 0
                    async for message in ws:
                        # Parsed here, never raising; the bridge's decisions are carried out in it.
                        await self._on_event(realtime.parse_server_event(message))
                        handled += 1
                        if handled % OPENAI_BURST == 0:
                            # Let the transport flush and other calls' audio through. Yielding
                            # after every event put each delta of a burst a whole loop round
                            # behind the last: at 200 calls, OpenAI->caller p99 555-1570 ms
                            # against 208-230 ms this way.
                            await asyncio.sleep(0)
        except InvalidStatus as exc:
            status = exc.response.status_code
            refused = "the API key" if status == 401 else "the connection"
            return status in (401, 403), f"OpenAI refused {refused} (HTTP {status})"
        except (OSError, TimeoutError, websockets.WebSocketException) as exc:
            return False, f"cannot reach the OpenAI API: {unreachable_reason(exc, url)}"
        finally:
            self.openai_ws = None
        if self.recycling:
            return None
        code, reason = ws.close_code, ws.close_reason
        if code == 3000:  # OpenAI's close for a bad key after the upgrade: invalid_api_key
            return True, f"OpenAI refused the API key ({code} {reason})".strip()
        return code in FATAL_CLOSE_CODES, f"OpenAI closed the session ({code} {reason})".strip()

    async def send(self, text: str) -> None:
        """Sent in the order the bridge decided, without a queue and sender task (their wake-up
        per frame cost ~6 % of the loop at 100 calls). Without a live session the message is
        moot: the bridge keeps caller audio and replays the conversation when one is back."""
        ws = self.openai_ws
        if ws is None:
            return
        try:
            await ws.send(text)
        except ConnectionClosed:  # imported, not ``websockets.X``: that is a lazy import each time
            return  # the session reader sees the close and reconnects

    async def recycle(self) -> None:
        """Replace the session now (the bridge asks before OpenAI's session time limit)."""
        if self.openai_ws is not None:
            self.recycling = True
            await self.openai_ws.close()


def unreachable_reason(exc: BaseException, url: str) -> str:
    """Why the socket to ``url`` could not be opened, for the call's error (never the key:
    neither the OS nor websockets puts request headers in these texts)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if isinstance(exc, socket.gaierror):
        return f"{host} not found ({exc.strerror or exc})"
    if isinstance(exc, ConnectionRefusedError) or "Connect call failed" in str(exc):
        return f"{host}:{parts.port or (443 if parts.scheme == 'wss' else 80)} refused the connection"
    if isinstance(exc, TimeoutError):
        return f"no answer from {host} within {OPENAI_CONNECT_TIMEOUT:.0f} s"
    return f"{type(exc).__name__}: {exc}"[:300] if str(exc) else type(exc).__name__
