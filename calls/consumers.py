"""The media socket: authenticates Twilio, then runs the bridge between the two sockets.

Thin on purpose: protocol decisions live in ``calls.bridge`` (sans-IO). This module
accepts, authenticates, forwards, runs the relay tasks and ends the call. Twilio frames
are handled in one plain loop and forwarded to OpenAI as they come; events from OpenAI are
read by the session runner's task (``calls.openai_link``), channel-layer messages by another,
and turns and the recording are stored by ``calls.call_store``, never in the audio path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from asgiref.typing import ASGIReceiveCallable, ASGISendCallable, WebSocketSendEvent
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError, DataError, IntegrityError

from calls import live, preconnect, realtime, services, tools, twilio_media, twilio_rest, twiml
from calls.bridge import MAX_EARLY_FRAMES, CallBridge
from calls.bridge.actions import (
    Action,
    AgentAudio,
    AgentCut,
    CallSummary,
    EndCall,
    RecordError,
    RecycleSession,
    RunTool,
    SaveToolCall,
    SaveTurn,
    SendOpenAI,
    SendTwilio,
    ToolCallRecord,
    Transfer,
)
from calls.call_store import CallRecording, TurnWriter, in_db_thread, in_thread, retry_delays
from calls.models import EndedReason
from calls.openai_link import OpenAISessionRunner
from calls.signatures import websocket_signature_valid

if TYPE_CHECKING:
    from channels.consumer import _ChannelScope  # the scope type channels-stubs gives consumers

logger = logging.getLogger(__name__)

# Close codes sent to Twilio (4000-4999 are application codes).
CLOSE_UNAUTHENTICATED = 4403
CLOSE_NO_START = 4408
CLOSE_BAD_STREAM = 4400
# The call ended because of an error on our side or OpenAI's (daphne allows 1000 or 3000-4999).
CLOSE_CALL_FAILED = 4500
# "Service restart" (RFC 6455 7.4.1): what uvicorn closes every WebSocket with, and tells the
# application, when it stops. Daphne cancels the application instead (_server_stopping).
CLOSE_SERVER_STOPPING = 1012
START_TIMEOUT = 5.0
# Before ``start`` the socket is only signature-checked (and that signature is the same for
# every call): keep real-sized frames only, so early buffering stays bounded (~150 KB).
MAX_EARLY_PAYLOAD_CHARS = 1024
# After ``stop``, how long to wait for transcriptions of what the caller said last.
TRANSCRIPT_GRACE_SECONDS = 2.0
LOGGED_BAD_FRAMES = 5
# When the server stops, each call gets this long to store what is left and close cleanly.
SHUTDOWN_GRACE_SECONDS = 5.0
# A call cannot start without the database (its token, its agent): while the database is away
# (a restart, a failover) the stream waits this long for it, then is closed with 4500.
AUTH_DATABASE_WAIT_SECONDS = 5.0
# At the end of a call the caller may still be on the line: Twilio's <Connect action> reads the
# call's ended reason, so it is stored first, but a database that is away must not keep the
# caller in silence. After this long the call is closed; storing goes on until it answers.
END_STORED_WAIT_SECONDS = 3.0
TICK_SECONDS = 0.25
# The recording is written once a second: each write is a hop to a worker thread.
RECORD_EVERY_TICKS = 4


class MediaStreamConsumer(AsyncWebsocketConsumer):
    call_sid = "-"
    server_stopping = False

    async def __call__(
        self, scope: _ChannelScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        """Channels' loop (``await_many_dispatch``) creates a task and runs ``asyncio.wait``
        for every message, a fifth of the event loop's time at 100 calls. Here socket
        messages are read in a plain loop, and the channel layer (rare: hang-up requests)
        by a task of its own, whose failure costs live control, never the call."""
        self.scope = scope
        self.base_send = send
        # None without CHANNEL_LAYERS, which channels-stubs does not allow for.
        self.channel_layer = get_channel_layer(self.channel_layer_alias)  # type: ignore[assignment]
        from_layer: asyncio.Task[None] | None = None
        if self.channel_layer is not None:
            self.channel_name = await self.channel_layer.new_channel()
            from_layer = asyncio.create_task(self._receive_from_layer())
        try:
            while True:
                # ASGI events are TypedDicts; channels' dispatch takes them as plain dicts.
                await self.dispatch(cast("dict[str, Any]", await receive()))
        except StopConsumer:
            pass
        except asyncio.CancelledError:
            await self._server_stopping()
            raise
        finally:
            if from_layer is not None:
                from_layer.cancel()
                await asyncio.gather(from_layer, return_exceptions=True)

    async def _server_stopping(self) -> None:
        """Daphne cancels every connection when the server stops (SIGTERM, a deploy): end the
        call properly instead of leaving it open. What was said and recorded is stored, OpenAI
        is closed, and the 4500 close makes Twilio fetch ``<Connect action>`` (served by a
        worker still running), so the caller hears an apology rather than dead air. (uvicorn
        closes the sockets itself, with 1012: ``disconnect``.)

        A server also cancels a consumer still running after its socket closed (daphne's
        ``--application-close-timeout``, uvicorn's ``--timeout-graceful-shutdown``): the call's
        end is then still being stored (a database retrying, a slow recording upload). That
        goes on in its own, shielded task."""
        if getattr(self, "bridge", None) is None:
            return
        if not self.server_stopping and not (self.twilio_closed and self.finishing is not None):
            self.server_stopping = True
            logger.warning("call %s: server stopping; ending the call", self.call_sid)
            self._request_end(EndCall("server_restart", "the server stopped during the call"))
        elif not self.server_stopping:
            logger.info(
                "call %s: cancelled by the server while the call's end was being stored; storing goes on",
                self.call_sid,
            )
        await self._finish_before_exit(
            "the server began stopping" if self.server_stopping else "the server cancelled it"
        )

    async def _finish_before_exit(self, since: str) -> None:
        """Wait a bounded time for the call's end to be stored: the process is about to exit."""
        assert self.finishing is not None
        try:
            async with asyncio.timeout(SHUTDOWN_GRACE_SECONDS):
                await asyncio.shield(self.finishing)
        except TimeoutError:
            # Said plainly: what exiting now loses. The next start's close_stale_calls closes
            # the call, but turns still in memory are gone.
            logger.error(
                "call %s: not finished %.0f s after %s (database %s); not stored yet: %s;"
                " kept until the database answers, lost if the process exits first",
                self.call_sid,
                SHUTDOWN_GRACE_SECONDS,
                since,
                "unavailable" if self.store.outage.paused else "slow",
                self.store.unstored_description(),
            )

    async def _receive_from_layer(self) -> None:
        while True:
            try:
                message = await self.channel_layer.receive(self.channel_name)
            except Exception:
                logger.warning("call %s: channel layer unavailable", self.call_sid, exc_info=True)
                return
            try:
                await super().dispatch(message)
            except Exception:
                logger.exception("call %s: failed on channel layer message", self.call_sid)

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels runs ``aclose_old_connections`` in its single shared worker thread before
        # every handler. Media frames never touch the database on this path (writes go
        # through ``in_thread`` in other threads), and that hop cost a quarter of a core and most
        # of the inbound p99 at 50 calls (bench/README.md): skip it for frames.
        if message["type"] == "websocket.receive":
            await self.receive(message.get("text"), message.get("bytes"))
        else:
            await super().dispatch(message)

    async def connect(self) -> None:
        self.call_sid = "-"
        self.bridge: CallBridge | None = None
        self.early: list[twilio_media.Media] = []
        self.bad_frames = 0
        self.twilio_closed = False
        self.ticker: asyncio.Task[None] | None = None
        self.in_call_group = False
        self.transcripts_settled = asyncio.Event()
        self.side_tasks: set[asyncio.Task[None]] = set()  # tools and REST calls in flight
        self.finishing: asyncio.Task[None] | None = None
        if not await self._handshake_allowed():
            # No start yet, so no call SID: a pre-connected session of the call Twilio meant is
            # closed by the status callback saying the call ended, or else by its TTL.
            logger.warning("Refused media socket %s: not authenticated", self.scope["path"])
            await self.close()  # before accept: the handshake is refused with HTTP 403
            return
        await self.accept()
        self.start_timer = asyncio.get_running_loop().call_later(START_TIMEOUT, self._start_timed_out)

    async def _handshake_allowed(self) -> bool:
        """Twilio signs the upgrade; the web phone overrides this with the Django session."""
        if not settings.TWILIO_VALIDATE_SIGNATURES:
            return True
        signature = dict(self.scope.get("headers", [])).get(b"x-twilio-signature", b"").decode("latin-1")
        if websocket_signature_valid(self.scope["path"], signature):
            return True
        logger.warning("Media socket %s: missing or invalid x-twilio-signature", self.scope["path"])
        return False

    def _start_timed_out(self) -> None:
        if self.bridge is None and self.finishing is None:
            logger.warning("Media socket sent no valid start within %.0f s; closing", START_TIMEOUT)
            self.timeout_close = asyncio.ensure_future(self._close(CLOSE_NO_START))

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            event = twilio_media.parse_frame(text_data if text_data is not None else bytes_data)
        except twilio_media.TwilioFrameError as exc:
            self._bad_frame(str(exc))
            return
        except Exception as exc:  # a parser bug must cost one frame, never the call
            logger.exception("call %s: unexpected error parsing a Twilio frame", self.call_sid)
            self._bad_frame(type(exc).__name__)
            return
        if self.bridge is None:
            await self._before_start(event)
            return
        if getattr(event, "stream_sid", self.bridge.stream_sid) not in ("", self.bridge.stream_sid):
            self._bad_frame("streamSid of another stream")
            return
        recorder = self.recording.recorder
        if recorder is not None and isinstance(event, twilio_media.Media):
            recorder.caller(event.payload, event.timestamp_ms)
        try:
            actions = self.bridge.on_twilio(event, time.monotonic())
        except Exception:
            logger.exception("call %s: bridge failed on a Twilio event", self.call_sid)
            self._request_end(EndCall("error", "internal error in the bridge (see server log)"))
            return
        await self._perform(actions)

    def _bad_frame(self, reason: str) -> None:
        self.bad_frames += 1
        level = logging.WARNING if self.bad_frames <= LOGGED_BAD_FRAMES else logging.DEBUG
        logger.log(level, "call %s: dropped a Twilio frame: %s", self.call_sid, reason)

    async def _before_start(self, event: twilio_media.TwilioEvent) -> None:
        if isinstance(event, twilio_media.Start):
            await self._start(event)
        elif (
            isinstance(event, twilio_media.Media)
            and len(self.early) < MAX_EARLY_FRAMES
            and len(event.payload) <= MAX_EARLY_PAYLOAD_CHARS
        ):
            self.early.append(event)  # some deployments see media before start; keep it
        elif isinstance(event, twilio_media.Stop):
            await self._close(1000)

    async def _reject(self, reason: str, code: int = CLOSE_UNAUTHENTICATED) -> None:
        logger.warning("call %s: refused media socket: %s", self.call_sid, reason)
        self.start_timer.cancel()
        await self._close(code)

    def _release_preconnected(self, start: twilio_media.Start, reason: str) -> None:
        """This stream was refused after ``start``: close the OpenAI session the webhook opened
        for its call, which would otherwise stay open until its TTL (issue 12, defect 5).

        Whose word is this? The upgrade's signature passed, but it covers only our Stream URL,
        the same for every call; the call SID is what the start says. So act only on a start
        that is self-consistent, as every start Twilio sends is (its parameters, from our
        TwiML, name the call it names): one naming another call in them proves nothing about
        either, and must not cost a real call its session. A replayed start of a call whose
        stream already claimed its session finds nothing pending (claims are single use).
        What remains is a forger holding a valid upgrade signature and the SID of a call
        in the few hundred ms between its webhook and its stream (SIDs are 128 random bits,
        known only to Twilio and us), or a replay racing the real stream between its token
        and its claim: the real stream then connects afresh, as before pre-connect existed,
        which is slower by one handshake but never a lost call."""
        if start.custom_parameters.get(twiml.PARAM_CALL_SID) != start.call_sid:
            return
        preconnect.discard(start.call_sid, f"its media socket was refused ({reason})")

    async def _start(self, start: twilio_media.Start) -> None:
        self.call_sid = start.call_sid[:64]
        # What the call is made of, each owning its state (the bridge comes once authenticated).
        self.openai = OpenAISessionRunner(
            self.call_sid,
            on_connected=self._openai_connected,
            on_event=self._openai_event,
            on_lost=self._openai_lost,
            request_end=self._request_end,
            ending=self._ending,
        )
        self.store = TurnWriter(self.call_sid)
        self.recording = CallRecording(self.call_sid)
        if not twilio_media.valid_sid(start.stream_sid) or start.encoding != "audio/x-mulaw":
            self._release_preconnected(start, "unexpected stream")
            await self._reject(f"unexpected stream ({start.encoding})", CLOSE_BAD_STREAM)
            return
        # From here the stream is answered by what follows, not by the start timeout: waiting
        # for a database that is away can take longer.
        self.start_timer.cancel()
        try:
            call = await self._authenticate(start)
            if call is None:
                return
            await self._begin(call, start)
        except DatabaseError as exc:
            if self.bridge is not None:
                raise
            logger.error(
                "call %s: database unavailable during authentication for %.0f s (%s); closing the stream",
                self.call_sid,
                AUTH_DATABASE_WAIT_SECONDS,
                type(exc).__name__,
            )
            await self._close(CLOSE_CALL_FAILED)

    async def _before_the_call(self, service: Callable[..., Any], **kwargs: Any) -> Any:
        """A database service the call cannot start without, retried for a moment while the
        database is away; DatabaseError if it stays away. (A retried token redeem whose first
        attempt was lost with the connection after committing reads as already used: a
        window of microseconds, and the call is refused, never answered twice.)"""
        deadline = time.monotonic() + AUTH_DATABASE_WAIT_SECONDS
        for attempt, delay in enumerate(retry_delays()):
            try:
                return await in_db_thread(service)(**kwargs)
            except (IntegrityError, DataError):
                raise
            except DatabaseError as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise
                if attempt == 0:
                    logger.warning(
                        "call %s: database unavailable during authentication (%s); retrying for up to %.0f s",
                        self.call_sid,
                        type(exc).__name__,
                        AUTH_DATABASE_WAIT_SECONDS,
                    )
                await asyncio.sleep(min(delay, remaining))
        raise AssertionError("unreachable")

    async def _authenticate(self, start: twilio_media.Start) -> Any:
        """The call this stream belongs to, proven by the webhook's single-use token; None
        (and the socket closed) otherwise. The web phone authenticates differently."""
        if start.custom_parameters.get(twiml.PARAM_CALL_SID) != start.call_sid:
            await self._reject("start parameters are not for this call")
            return None
        token = start.custom_parameters.get(twiml.PARAM_TOKEN, "")
        call = await self._before_the_call(services.stream_token_redeem, call_sid=start.call_sid, token=token)
        if call is None:
            self._release_preconnected(start, "bad or already used stream token")
            await self._reject("missing, expired or already used stream token")
            return None
        # Ours now: claimed before anything else can run, so a replay of this start (refused
        # above, its token spent) cannot close the session this call is about to use.
        self.openai.claim_preconnected(start.call_sid)
        return call

    async def _begin(self, call: Any, start: twilio_media.Start) -> None:
        """An authenticated stream: set up the bridge and the relay tasks."""
        try:
            agent = await self._before_the_call(
                services.call_stream_started, call=call, stream_sid=start.stream_sid
            )
        except services.WebhookError as exc:
            await self.openai.discard_preconnected(str(exc))  # authenticated: it was this call's
            await self._reject(str(exc), CLOSE_BAD_STREAM)
            return
        self.tool_context = tools.ToolContext(
            call_sid=call.call_sid,
            from_number=call.from_number,
            to_number=call.to_number,
            agent_name=call.agent.name if call.agent else "",
        )
        now = time.monotonic()
        self.bridge = CallBridge(
            agent,
            stream_sid=start.stream_sid,
            call_sid=self.call_sid,
            now=now,
            frames_per_append=settings.OPENAI_AUDIO_APPEND_MS // twilio_media.INBOUND_FRAME_MS,
        )
        actions = self.bridge.start(now)
        if agent.record and await self.recording.start(now):
            self.bridge.record_audio = True
        recorder = self.recording.recorder
        for media in self.early:
            if recorder is not None:
                recorder.caller(media.payload, media.timestamp_ms)
            actions += self.bridge.on_twilio(media, now)
        self.early.clear()
        await self._join_call_group(call)
        logger.info("call %s: stream %s started (model %s)", self.call_sid, start.stream_sid, agent.model)
        self.openai.start(agent)
        self.store.start()
        self.ticker = asyncio.create_task(self._tick())
        await self._perform(actions)

    async def _join_call_group(self, call: Any) -> None:
        """Be reachable by the live page's hang-up from any worker, and announce the call."""
        if self.channel_layer is None:
            return
        try:
            await self.channel_layer.group_add(live.call_group(self.call_sid), self.channel_name)
            self.in_call_group = True
        except Exception:
            logger.warning(
                "call %s: channel layer unavailable; no live monitoring", self.call_sid, exc_info=True
            )
            return
        self._side_task(
            live.publish(
                {
                    "kind": "call_started",
                    "call_sid": self.call_sid,
                    "from": call.from_number,
                    "to": call.to_number,
                    "agent": self.tool_context.agent_name,
                    "direction": call.direction,
                    "started_at": call.started_at.isoformat() if call.started_at else None,
                }
            )
        )

    async def call_hangup(self, event: dict[str, Any]) -> None:
        """``call.hangup`` from the live page, through the channel layer."""
        if self.bridge is None:
            return
        logger.info("call %s: hung up by %s", self.call_sid, str(event.get("by", "an operator"))[:64])
        self._request_end(EndCall("operator_hung_up", hang_up=True))

    async def _perform(self, actions: list[Action]) -> None:
        """Carry out what the bridge decided, without waiting on OpenAI or the database."""
        assert self.bridge is not None
        # Only while ending: the check scans the conversation, too costly for every frame.
        if self.finishing is not None and not self.bridge.awaiting_transcripts:
            self.transcripts_settled.set()
        for action in actions:
            if isinstance(action, SendTwilio):
                await self._send_twilio(action.text)
            elif isinstance(action, SendOpenAI):
                await self.openai.send(action.text)
            elif isinstance(action, AgentAudio):
                if self.recording.recorder is not None:
                    self.recording.recorder.agent(action.payload, action.starts)
            elif isinstance(action, AgentCut):
                if self.recording.recorder is not None:
                    self.recording.recorder.cut_agent(action.at)
            elif isinstance(action, SaveTurn):
                self.store.store_later(action)
                if self.in_call_group:
                    self._side_task(live.publish(live.turn_event(action.turn, self.call_sid)))
            elif isinstance(action, SaveToolCall | RecordError):
                self.store.store_later(action)
            elif isinstance(action, RunTool):
                self._side_task(self._run_tool(action))
            elif isinstance(action, Transfer):
                self._side_task(self._transfer(action))
            elif isinstance(action, RecycleSession):
                self._side_task(self.openai.recycle())
            elif isinstance(action, EndCall):
                self._request_end(action)

    async def _close(self, code: int) -> None:
        if self.twilio_closed:
            return
        try:
            await self.close(code=code)
        except Exception as exc:  # already closed by the peer
            logger.info("call %s: Twilio socket already closed (%s)", self.call_sid, type(exc).__name__)
        self.twilio_closed = True

    async def _send_twilio(self, text: str) -> None:
        """The Twilio socket can close between a decision and its send (a tick, a late OpenAI
        event): that send is moot, and the disconnect handler ends the call."""
        if self.twilio_closed:
            return
        try:
            # Without the "bytes": None asgiref's type asks for: channels' test communicator
            # refuses a message holding both keys.
            event = cast("WebSocketSendEvent", {"type": "websocket.send", "text": text})
            await self.base_send(event)  # two layers fewer
        except Exception as exc:  # daphne raises autobahn's Disconnected
            self.twilio_closed = True
            logger.info("call %s: Twilio socket already closed (%s)", self.call_sid, type(exc).__name__)

    def _side_task(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self.side_tasks.add(task)
        task.add_done_callback(self.side_tasks.discard)

    async def _tick(self) -> None:
        """Time-based decisions (limits, key-press pauses) are the bridge's; this only ticks."""
        ticks = 0
        while True:
            await asyncio.sleep(TICK_SECONDS)
            assert self.bridge is not None
            now = time.monotonic()
            await self._perform(self.bridge.on_tick(now))
            ticks += 1
            if ticks % RECORD_EVERY_TICKS == 0:
                await self.recording.record(now)

    async def _run_tool(self, action: RunTool) -> None:
        outcome = await tools.run_tool(action.name, action.arguments, self.tool_context)
        record = ToolCallRecord(
            position=action.position,
            name=action.name,
            call_id=action.call_id,
            arguments=action.arguments,
            result=outcome.output,
            error=outcome.error,
            duration_ms=outcome.duration_ms,
        )
        assert self.bridge is not None
        await self._perform(
            self.bridge.on_tool_result(action.call_id, outcome.as_model_output(), record, time.monotonic())
        )

    async def _transfer(self, action: Transfer) -> None:
        document = twiml.dial(action.number, caller_id=self.tool_context.from_number)
        try:
            await in_thread(twilio_rest.call_update_twiml)(self.call_sid, document)
            ok, error = True, ""
            logger.info("call %s: transferred to %s", self.call_sid, action.number)
        except (twilio_rest.TwilioRestError, twilio_rest.TwilioNotConfigured) as exc:
            ok, error = False, str(exc)
            logger.warning("call %s: transfer to %s failed: %s", self.call_sid, action.number, exc)
        assert self.bridge is not None
        await self._perform(self.bridge.on_transfer_result(ok, error, time.monotonic()))

    async def _openai_connected(self, configured: bool) -> None:
        assert self.bridge is not None
        await self._perform(self.bridge.on_openai_connected(configured=configured))

    async def _openai_event(self, event: realtime.ServerEvent) -> None:
        assert self.bridge is not None
        try:
            actions = self.bridge.on_openai(event, time.monotonic())
        except Exception:
            logger.exception("call %s: bridge failed on OpenAI event %s", self.call_sid, type(event).__name__)
            self._request_end(EndCall("error", "internal error in the bridge (see server log)"))
            return
        await self._perform(actions)

    async def _openai_lost(self, detail: str, planned: bool) -> None:
        assert self.bridge is not None
        await self._perform(self.bridge.on_openai_lost(time.monotonic(), detail, planned=planned))

    def _ending(self) -> bool:
        """No new OpenAI session for a call that is ending."""
        return self.finishing is not None or (self.bridge is not None and self.bridge.ended is not None)

    def _request_end(self, end: EndCall) -> None:
        if self.finishing is None:
            self.finishing = asyncio.create_task(self._finish(end))

    async def _finish(self, end: EndCall) -> None:
        """End the call once, whichever side ended it: store the rest, close both sockets."""
        bridge = self.bridge
        if bridge is not None and bridge.awaiting_transcripts and self.openai.connected:
            # The caller often hangs up right after speaking ("thanks, bye"): their words are
            # still being transcribed. Give that a moment before closing the session.
            self.transcripts_settled.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TRANSCRIPT_GRACE_SECONDS):
                    await self.transcripts_settled.wait()
        if bridge is not None:
            await self._perform(bridge.finish(time.monotonic()))
        for task in (self.ticker, *self.side_tasks):
            if task is not None:
                task.cancel()
        await self.openai.close()
        # Everything queued so far is written before the call is finalised.
        summary = bridge.summary(end) if bridge is not None else CallSummary(end.reason, end.error)
        storing = asyncio.ensure_future(self.store.store_the_end(summary, self.recording))
        if not self.twilio_closed or end.hang_up:
            try:
                async with asyncio.timeout(END_STORED_WAIT_SECONDS):
                    await asyncio.shield(storing)
            except TimeoutError:
                logger.warning(
                    "call %s: ending the call before it is stored (not yet stored: %s); storing goes on",
                    self.call_sid,
                    self.store.unstored_description(),
                )
        if end.hang_up:
            await self._hang_up()
        if not self.twilio_closed:
            await self._tell_ending(end)
            # Nothing follows </Connect> in our TwiML: closing the socket ends the call.
            failed = end.reason in (EndedReason.ERROR, EndedReason.SERVER_RESTART)
            await self._close(CLOSE_CALL_FAILED if failed else 1000)
        await storing
        if self.in_call_group:
            await live.publish(
                {"kind": "call_ended", "call_sid": self.call_sid, "reason": end.reason, "error": end.error}
            )
            with contextlib.suppress(Exception):
                await self.channel_layer.group_discard(live.call_group(self.call_sid), self.channel_name)

    async def _tell_ending(self, end: EndCall) -> None:
        """Twilio's protocol has no message for why a call ends; the web phone sends one."""
        return

    async def _hang_up(self) -> None:
        """Complete the call through Twilio's REST API: authoritative, unlike a socket close."""
        try:
            ended_now = await in_thread(twilio_rest.call_complete)(self.call_sid)
            logger.info("call %s: %s", self.call_sid, "hung up" if ended_now else "had already ended")
        except twilio_rest.TwilioNotConfigured:
            logger.info(
                "call %s: no Twilio credentials; ending the call by closing the stream", self.call_sid
            )
        except twilio_rest.TwilioRestError as exc:
            logger.warning("call %s: could not hang up through the REST API: %s", self.call_sid, exc)

    async def disconnect(self, code: int) -> None:
        bridge = getattr(self, "bridge", None)
        actions: list[Action] = []
        if bridge is not None and not self.twilio_closed:
            # The socket closed under us: nothing is left to send to the caller.
            actions = bridge.on_stream_closed(time.monotonic())
        self.twilio_closed = True
        timer = getattr(self, "start_timer", None)
        if timer is not None:
            timer.cancel()
        if bridge is None:
            return
        await self._perform(actions)
        if code == CLOSE_SERVER_STOPPING and self.finishing is None:
            # uvicorn stopping (SIGTERM, a deploy) closes every socket with 1012 itself.
            # Stored as a restart: Twilio's <Connect action>, served by a worker still
            # running, then apologises to the caller (services.call_apology).
            self.server_stopping = True
            logger.warning("call %s: server stopping; ending the call", self.call_sid)
            self._request_end(EndCall("server_restart", "the server stopped during the call"))
            await self._finish_before_exit("the server began stopping")
            return
        if self.finishing is None:
            self._request_end(EndCall("caller_hung_up"))
        assert self.finishing is not None
        # Shielded: a server may cancel a consumer that outlives its socket (daphne's
        # --application-close-timeout, uvicorn's --timeout-graceful-shutdown), and that must
        # not cancel the storing of the call (turns queued, recording, finalising).
        await asyncio.shield(self.finishing)
