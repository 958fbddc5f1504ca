"""Which OpenAI Realtime endpoint a call talks to: OpenAI with ``OPENAI_API_KEY``, or, on a
development server with no key, the bundled stand-in (``calls/fakes/standin.py``), so that
``make run`` lets a newcomer talk to an agent from the web phone at once (issue 13).

The rule (``settings.OPENAI_STANDIN``): the stand-in only with DEBUG on, no key and no
``OPENAI_REALTIME_URL`` of one's own; never when a key is set. With DEBUG off and no key a call
fails with "OPENAI_API_KEY is not set" and the caller hears the agent's apology: a production
server must not answer real callers with scripted replies because a key went missing.

Why served in-process, started lazily: the stand-in is a ``websockets`` server, so it runs on
the event loop of the process that needs it (daphne's, where the consumers run), on a free port
of 127.0.0.1, started by the first call that needs it and kept for the life of the process.
No second terminal, no port to configure, and it works the same under ``runserver``, ``daphne``
and N workers: each worker has its own stand-in and nothing is shared, so there is nothing to
coordinate. Rejected: starting it when the ASGI application is imported (daphne's loop is not
running yet, and every management command importing the app would start one); serving it as a
route of our own ASGI app (the fake is written against ``websockets``' server connection, and
the stand-in would then sit behind the proxy, reachable from outside).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from django.conf import settings
from websockets.asyncio.server import ServerConnection

from calls.fakes import standin
from calls.fakes.openai_realtime import FakeRealtimeServer

logger = logging.getLogger(__name__)

STANDIN_MODEL = "stand-in"  # Call.model of a call answered by the stand-in
MISSING_KEY = "OPENAI_API_KEY is not set"


class EndpointError(Exception):
    """No endpoint for the call; the message is the call's error, fit for a person."""


@dataclass(frozen=True)
class Endpoint:
    url: str  # the Realtime base URL; the model is added as ?model=
    api_key: str
    standin: bool


def uses_standin() -> bool:
    """Whether calls of this process are answered by the local stand-in."""
    return bool(settings.OPENAI_STANDIN) and not settings.OPENAI_API_KEY


def recorded_model(agent_model: str) -> str:
    """``Call.model`` for a new call: the agent's model, or ``stand-in``."""
    return STANDIN_MODEL if uses_standin() else agent_model


async def endpoint() -> Endpoint:
    """Where this call connects; EndpointError when it cannot connect anywhere."""
    if settings.OPENAI_API_KEY:
        return Endpoint(settings.OPENAI_REALTIME_URL, settings.OPENAI_API_KEY, standin=False)
    if not uses_standin():
        raise EndpointError(MISSING_KEY)
    server = await _standin()
    return Endpoint(server.url, standin.LOCAL_API_KEY, standin=True)


class _StandinServer(FakeRealtimeServer):
    """The fake keeps every session's traffic for tests' assertions; a server that lives as
    long as the process forgets each session once it has closed."""

    async def _handle(self, ws: ServerConnection) -> None:
        try:
            await super()._handle(ws)
        finally:
            self.sessions = [session for session in self.sessions if session.ws is not ws]


_starting: asyncio.Task[FakeRealtimeServer] | None = None


async def _standin() -> FakeRealtimeServer:
    """This process's stand-in, started on first use; concurrent first calls share the start."""
    global _starting
    loop = asyncio.get_running_loop()
    stale = _starting is not None and (
        _starting.get_loop() is not loop  # a loop that is gone (Django's test client: one per request)
        or (_starting.done() and (_starting.cancelled() or _starting.exception() is not None))
    )
    if _starting is None or stale:
        _starting = loop.create_task(_start(), name="openai-standin")
    try:
        return await asyncio.shield(_starting)
    except (OSError, standin.ScriptError) as exc:
        raise EndpointError(f"the local OpenAI stand-in could not start: {exc}") from exc


async def _start() -> FakeRealtimeServer:
    # espeak-ng renders the replies (a subprocess each): in a thread, off the event loop.
    script = await asyncio.to_thread(standin.load_script, None)
    server = _StandinServer(script, api_key=standin.LOCAL_API_KEY, host="127.0.0.1", port=0)
    await server.start()
    logger.warning(
        "No OPENAI_API_KEY: calls are answered by the local OpenAI stand-in at %s (scripted "
        "replies, %s), not the real model. Set OPENAI_API_KEY in .env and restart to use OpenAI.",
        server.url,
        "espeak-ng speech" if standin.espeak_available() else "tones",
    )
    return server
