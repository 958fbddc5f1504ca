"""Open a call's OpenAI Realtime session from the webhook, before its media socket exists.

Why: Twilio opens the media socket a few hundred ms after ``/incoming-call`` answers, and
the OpenAI handshake (TCP, TLS, upgrade) plus ``session.update`` costs about as much
again. Starting both at the webhook hides one behind the other: when ``start`` arrives, the
consumer claims a socket that is already open and configured, and the greeting starts at once.

The registry is per process and holds no policy: the caller passes the URL, key, time to live
and cap. A media socket that lands on another worker process finds nothing here and connects
as before; the session opened here is then closed unused (code 1000) when its TTL runs out.
A session the call will not use (its stream was refused, Twilio reports the call ended) is
closed at once with ``discard``, but only by the process holding it: see ``calls.views``.
Events OpenAI sends meanwhile (``session.created``, ``session.updated``) wait in the socket's
receive buffer and reach the bridge once the consumer reads them.
"""

from __future__ import annotations

import asyncio
import logging
import time

import websockets
from django.conf import settings
from websockets.asyncio.client import ClientConnection

from calls import realtime
from calls.realtime import AgentConfig

logger = logging.getLogger(__name__)

# As the consumer's own connect: a pre-connect is never allowed to take longer than a connect.
CONNECT_TIMEOUT = 10.0
# Cap when MAX_CONCURRENT_CALLS is 0 (no limit): a webhook flood must not open sockets unbounded.
DEFAULT_MAX_PENDING = 100


async def open_session(url: str, api_key: str, *, timeout: float = CONNECT_TIMEOUT) -> ClientConnection:
    """The OpenAI Realtime socket with the options the bridge relies on, whoever opens it."""
    return await websockets.connect(
        url,
        additional_headers=realtime.connect_headers(api_key),
        open_timeout=timeout,
        max_size=16 * 1024 * 1024,
        compression=None,
        close_timeout=2,
    )


def _describe(exc: BaseException) -> str:
    # Exception texts from websockets and the OS name the host and status, never the headers.
    return f"{type(exc).__name__}: {exc}"[:300] if str(exc) else type(exc).__name__


class PendingSession:
    """One call's session, opening or open and configured, waiting for its media socket."""

    def __init__(self, call_sid: str, agent: AgentConfig, task: asyncio.Task[ClientConnection]) -> None:
        self.call_sid = call_sid
        self.agent = agent
        self.task = task
        self.started = time.monotonic()
        self.expiry: asyncio.TimerHandle | None = None

    async def connection(self, agent: AgentConfig, *, timeout: float) -> ClientConnection | None:
        """The open socket, configured for ``agent``; None if the pre-connect failed, took
        longer than ``timeout`` or configured another agent (edited since the webhook).
        Nothing stays open on None: the caller then connects afresh."""
        try:
            async with asyncio.timeout(timeout):
                ws = await self.task  # a cancelled wait cancels the connect with it
        except Exception as exc:
            logger.info("call %s: pre-connected OpenAI session unusable (%s)", self.call_sid, _describe(exc))
            return None
        if agent != self.agent:
            logger.info("call %s: agent changed since the webhook; not using its session", self.call_sid)
            await ws.close()
            return None
        return ws

    async def discard(self) -> None:
        """Close the socket (1000) or stop the connect; the session is no longer wanted."""
        if not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
            return
        if not self.task.cancelled() and self.task.exception() is None:
            await self.task.result().close()


class Registry:
    """Pending sessions of this process by call SID: bounded, single use, expiring."""

    def __init__(self, *, ttl: float, max_pending: int) -> None:
        self.ttl = ttl
        self.max_pending = max_pending
        self._pending: dict[str, PendingSession] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._pending)

    def __contains__(self, call_sid: object) -> bool:
        return call_sid in self._pending

    def start(
        self,
        call_sid: str,
        agent: AgentConfig,
        *,
        url: str,
        api_key: str,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> PendingSession | None:
        """Start opening ``call_sid``'s session in the background (call from the event loop).
        None if one is already pending (Twilio retried the webhook) or the registry is full."""
        if call_sid in self._pending:
            logger.info("call %s: OpenAI session already pre-connecting", call_sid)
            return None
        if len(self._pending) >= self.max_pending:
            logger.warning(
                "call %s: %d OpenAI sessions already pre-connected; this call connects at stream start",
                call_sid,
                len(self._pending),
            )
            return None
        loop = asyncio.get_running_loop()
        task = loop.create_task(
            self._open(url, api_key, agent, connect_timeout), name=f"preconnect-{call_sid}"
        )
        session = PendingSession(call_sid, agent, task)
        session.expiry = loop.call_later(self.ttl, self._expire, session)
        self._pending[call_sid] = session
        task.add_done_callback(lambda done: self._opened(session, done))
        return session

    def claim(self, call_sid: str) -> PendingSession | None:
        """Take ``call_sid``'s pending session (once); None if there is none in this process."""
        session = self._pending.pop(call_sid, None)
        if session is None:
            return None
        if session.expiry is not None:
            session.expiry.cancel()
        if session.task.get_loop() is not asyncio.get_running_loop():
            return None  # opened on a loop that is gone (Django's test client runs one per request)
        logger.info(
            "call %s: claimed the pre-connected OpenAI session (%.0f ms after the webhook)",
            call_sid,
            (time.monotonic() - session.started) * 1000,
        )
        return session

    def discard(self, call_sid: str, why: str) -> bool:
        """Close ``call_sid``'s pending session now: the call will not use it (call from the
        event loop). False if none is pending in this process, e.g. already claimed."""
        session = self._pending.pop(call_sid, None)
        if session is None:
            return False
        if session.expiry is not None:
            session.expiry.cancel()
        logger.info("call %s: closing its pre-connected OpenAI session: %s", call_sid, why)
        self._close_unused(session)
        return True

    @staticmethod
    async def _open(url: str, api_key: str, agent: AgentConfig, timeout: float) -> ClientConnection:
        ws = await open_session(url, api_key, timeout=timeout)
        try:
            # Exactly what the bridge would send first: the bridge then skips its own.
            await ws.send(realtime.dumps(realtime.session_update(agent)))
        except BaseException:
            await ws.close()
            raise
        return ws

    def _forget(self, session: PendingSession) -> None:
        if self._pending.get(session.call_sid) is session:
            del self._pending[session.call_sid]
            if session.expiry is not None:
                session.expiry.cancel()

    def _opened(self, session: PendingSession, task: asyncio.Task[ClientConnection]) -> None:
        if task.cancelled():
            self._forget(session)
            return
        exc = task.exception()
        if exc is not None:
            self._forget(session)
            logger.warning(
                "call %s: could not pre-connect to OpenAI (%s); the media socket will connect itself",
                session.call_sid,
                _describe(exc),
            )
            return
        logger.info(
            "call %s: OpenAI session pre-connected in %.0f ms",
            session.call_sid,
            (time.monotonic() - session.started) * 1000,
        )

    def _expire(self, session: PendingSession) -> None:
        if self._pending.get(session.call_sid) is not session:
            return
        del self._pending[session.call_sid]
        logger.info(
            "call %s: pre-connected OpenAI session not claimed within %.1f s; closing it",
            session.call_sid,
            self.ttl,
        )
        self._close_unused(session)

    def _close_unused(self, session: PendingSession) -> None:
        loop = asyncio.get_running_loop()
        if session.task.get_loop() is not loop:
            return  # opened on a loop that is gone (Django's test client runs one per request)
        closer = loop.create_task(session.discard())
        self._closing.add(closer)
        closer.add_done_callback(self._closing.discard)


_registry: Registry | None = None


def registry() -> Registry:
    """This process's registry, sized from the settings on first use."""
    global _registry
    if _registry is None:
        _registry = Registry(
            ttl=settings.OPENAI_PRECONNECT_TTL,
            max_pending=settings.MAX_CONCURRENT_CALLS or DEFAULT_MAX_PENDING,
        )
    return _registry


def start(call_sid: str, agent: AgentConfig) -> PendingSession | None:
    """Pre-connect ``call_sid`` to OpenAI with the configured endpoint and key. Not without a
    key: the call then fails, or talks to the local stand-in (calls/model_endpoint.py), whose
    handshake costs nothing to hide."""
    if not settings.OPENAI_API_KEY:
        return None
    return registry().start(
        call_sid,
        agent,
        url=realtime.connect_url(settings.OPENAI_REALTIME_URL, agent.model),
        api_key=settings.OPENAI_API_KEY,
    )


def claim(call_sid: str) -> PendingSession | None:
    return registry().claim(call_sid)


def discard(call_sid: str, why: str) -> bool:
    """Close ``call_sid``'s session pending in this process, if any; ``why`` is logged."""
    return registry().discard(call_sid, why)
