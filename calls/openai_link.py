"""The media consumer's link to OpenAI Realtime: one session at a time for the call, kept up
through drops (the bridge replays the conversation), replaced on purpose before its time
limit, and given up after repeated failures or a refusal that retrying cannot fix. A mixin
of ``calls.consumers.MediaStreamConsumer``; it uses the consumer's state declared below and
is tested through it (tests/test_e2e_*.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from calls import model_endpoint, preconnect, realtime
from calls.bridge.actions import Action, EndCall
from calls.models import EndedReason

if TYPE_CHECKING:
    from calls.bridge import CallBridge

logger = logging.getLogger(__name__)

OPENAI_CONNECT_TIMEOUT = 10.0
# Reconnect after a dropped OpenAI session within about 2 s; a session that lived this long
# counts as healthy again. Close codes 3000 (bad key) and 4000 (beta shape) cannot be retried.
RECONNECT_DELAYS = (0.1, 0.5, 1.0)
STABLE_SESSION_SECONDS = 30.0
FATAL_CLOSE_CODES = frozenset({3000, 4000})
# OpenAI events handled back to back before the reader yields (a burst of deltas: ~1 ms).
OPENAI_BURST = 16


class OpenAILink:
    # The consumer state this part reads and writes (set up in MediaStreamConsumer.connect).
    call_sid: str
    bridge: CallBridge | None
    finishing: asyncio.Task[None] | None
    openai_ws: Any
    recycling: bool
    # The session the webhook opened, claimed as soon as the stream authenticated (so that a
    # replayed start racing this stream finds nothing to close); used for the first session.
    preconnected: preconnect.PendingSession | None = None

    # Provided by MediaStreamConsumer.
    async def _perform(self, actions: list[Action]) -> None:
        raise NotImplementedError

    def _request_end(self, end: EndCall) -> None:
        raise NotImplementedError

    async def _run_openai(self, agent: realtime.AgentConfig) -> None:
        """Keep the call connected to OpenAI until the call ends."""
        assert self.bridge is not None
        try:
            where = await model_endpoint.endpoint()
        except model_endpoint.EndpointError as exc:
            logger.error("call %s: %s", self.call_sid, exc)
            self._request_end(EndCall(EndedReason.ERROR, str(exc)))
            return
        url = realtime.connect_url(where.url, agent.model)
        failures = 0
        while self.finishing is None:
            started = time.monotonic()
            failure = await self._openai_session(url, where.api_key)
            if self.finishing is not None or self.bridge.ended is not None:
                return
            now = time.monotonic()
            if failure is None:  # replaced on purpose: connect again at once
                logger.info("call %s: recycling the OpenAI session", self.call_sid)
                await self._perform(self.bridge.on_openai_lost(now, "recycled", planned=True))
                continue
            fatal, detail = failure
            if now - started > STABLE_SESSION_SECONDS:
                failures = 0
            if fatal or failures >= len(RECONNECT_DELAYS):
                self._request_end(EndCall(EndedReason.ERROR, detail))
                return
            logger.warning("call %s: %s; reconnecting", self.call_sid, detail)
            await self._perform(self.bridge.on_openai_lost(now, detail))
            await asyncio.sleep(RECONNECT_DELAYS[failures])
            failures += 1

    async def _connect_openai(self, url: str, api_key: str) -> tuple[Any, bool]:
        """The call's first session may be the one its webhook opened (calls/preconnect.py),
        already configured; reconnects and recycles, or no usable one, connect afresh.
        Returns the socket and whether its session.update was already sent."""
        assert self.bridge is not None
        pending, self.preconnected = self.preconnected, None
        if pending is not None:
            ws = await pending.connection(self.bridge.agent, timeout=OPENAI_CONNECT_TIMEOUT)
            if ws is not None:
                return ws, True
        ws = await preconnect.open_session(url, api_key, timeout=OPENAI_CONNECT_TIMEOUT)
        return ws, False

    async def _openai_session(self, url: str, api_key: str) -> tuple[bool, str] | None:
        """Run one OpenAI session. None if we closed it on purpose, else (fatal, why)."""
        assert self.bridge is not None
        self.recycling = False
        try:
            ws, configured = await self._connect_openai(url, api_key)
            async with ws:
                self.openai_ws = ws
                await self._perform(self.bridge.on_openai_connected(configured=configured))
                handled = 0
                async for message in ws:
                    await self._perform(self._on_openai_message(message))
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

    def _on_openai_message(self, message: str | bytes) -> list[Action]:
        assert self.bridge is not None
        event = realtime.parse_server_event(message)
        try:
            return self.bridge.on_openai(event, time.monotonic())
        except Exception:
            logger.exception("call %s: bridge failed on OpenAI event %s", self.call_sid, type(event).__name__)
            self._request_end(EndCall("error", "internal error in the bridge (see server log)"))
            return []

    async def _send_openai(self, text: str) -> None:
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

    async def _recycle(self) -> None:
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
