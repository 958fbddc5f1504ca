"""Twilio-facing HTTP endpoints: boring function views behind a signature check."""

from __future__ import annotations

import logging

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST, require_safe

from calls import preconnect, services, twilio_rest, twiml
from calls.models import TERMINAL_STATUSES
from calls.realtime import AgentConfig
from calls.signatures import twilio_signed

logger = logging.getLogger(__name__)

NO_AGENT_MESSAGE = "Sorry, nobody can take your call right now. Please try again later."
BUSY_MESSAGE = "Sorry, all our lines are busy right now. Please call again in a few minutes. Goodbye."


def _twiml(document: str) -> HttpResponse:
    return HttpResponse(document, content_type="text/xml")


def _params(request: HttpRequest) -> dict[str, str]:
    return {key: request.POST.get(key, "") for key in request.POST}


@sync_to_async  # thread-sensitive: the same thread, and database connection, as the sync views
def _answer(params: dict[str, str]) -> tuple[services.IncomingCall, AgentConfig | None]:
    """Record the call; with pre-connect on, also the agent config its session will need."""
    incoming = services.call_start_from_webhook(params=params)
    if incoming.token is None:
        return incoming, None
    logger.info("call %s: answering for agent %s", incoming.call.call_sid, incoming.call.agent)
    agent = services.agent_config(incoming.call) if settings.OPENAI_PRECONNECT else None
    return incoming, agent


@csrf_exempt
@require_POST
@twilio_signed
async def incoming_call(request: HttpRequest) -> HttpResponse:
    """Voice webhook: record the call, then connect it to our media socket. Async so that the
    call's OpenAI session can start opening now, while Twilio opens the media socket."""
    try:
        incoming, agent = await _answer(_params(request))
    except services.WebhookError as exc:
        logger.warning("Rejected voice webhook: %s", exc)
        return HttpResponseBadRequest(str(exc))
    if incoming.busy:
        return _twiml(twiml.say_and_hang_up(BUSY_MESSAGE))
    if incoming.token is None:
        return _twiml(twiml.say_and_hang_up(NO_AGENT_MESSAGE))
    if agent is not None:
        preconnect.start(incoming.call.call_sid, agent)
    return _twiml(twiml.connect_stream(call_sid=incoming.call.call_sid, token=incoming.token))


@sync_to_async  # thread-sensitive, as ``_answer``
def _apply_status(params: dict[str, str]) -> None:
    services.call_status_apply(params=params)


@csrf_exempt
@require_POST
@twilio_signed
async def call_status(request: HttpRequest) -> HttpResponse:
    """Call status callback; unknown calls are acknowledged and ignored. Async so that it can
    close the call's pre-connected OpenAI session, which lives on this event loop."""
    params = _params(request)
    status = params.get("CallStatus", "")
    if status in TERMINAL_STATUSES:
        # Signed by Twilio, so the call really ended: its media socket will never come (issue 12,
        # defect 5). Done before the database, which an outage must not keep the socket open for.
        # Only this process's session: the registry is per process, and Twilio posts to the
        # URL set on the number, not to the worker that answered the webhook (WORKER_ROUTE
        # steers only the media socket). Elsewhere the TTL closes it (OPENAI_PRECONNECT_TTL).
        # Not signalled through the channel layer: every worker would need a standing receive
        # task, and each pending call a group joined and left in Redis, to save at most the TTL
        # of one idle socket.
        preconnect.discard(params.get("CallSid", ""), f"Twilio reports the call {status}")
    try:
        await _apply_status(params)
    except services.WebhookError as exc:
        return HttpResponseBadRequest(str(exc))
    return HttpResponse(status=200)


@csrf_exempt
@require_POST
@twilio_signed
def stream_status(request: HttpRequest) -> HttpResponse:
    """``<Stream statusCallback>``: stream started, stopped or failed."""
    services.call_stream_event_apply(params=_params(request))
    return HttpResponse(status=200)


@csrf_exempt
@require_POST
@twilio_signed
def amd_status(request: HttpRequest) -> HttpResponse:
    """Asynchronous answering-machine detection result for an outbound call."""
    try:
        services.call_answered_by(params=_params(request))
    except twilio_rest.TwilioRestError as exc:
        logger.warning("Could not act on an answering-machine result: %s", exc)
    return HttpResponse(status=200)


@csrf_exempt
@require_POST
@twilio_signed
def stream_ended(request: HttpRequest) -> HttpResponse:
    """``<Connect action>``: the media stream ended but the call did not. After a failure the
    caller hears an apology instead of silence; otherwise the call simply ends."""
    apology = services.call_apology(call_sid=request.POST.get("CallSid", ""))
    return _twiml(twiml.say_and_hang_up(apology) if apology else twiml.hang_up())


@require_safe
def health(request: HttpRequest) -> HttpResponse:
    """For a load balancer or process monitor: 200 while this worker can take calls, 503 when
    its database does not answer (no webhook could be accepted). Nothing about the calls."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        logger.warning("Health check: database unavailable (%s)", type(exc).__name__)
        return JsonResponse({"status": "database unavailable"}, status=503)
    return JsonResponse({"status": "ok"})
