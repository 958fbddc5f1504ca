"""The web phone: staff talk to an agent from the browser's microphone, through the same
consumer and bridge as a phone call.

The page (``/admin/phone/``, ``static/calls/phone.js``) speaks Twilio's Media Streams protocol
over ``/ws/phone``: it encodes 8 kHz µ-law itself, plays the agent's audio, echoes marks once
their audio has played and honours ``clear``. Only the authentication differs from Twilio's:
the Django session of staff who may view calls, and SIDs minted here. On accepting the socket
the server sends one message of its own, ``assigned``, with the call's SIDs; the page's
``start`` must carry exactly those (and the chosen agent as a custom parameter), so a browser
can never attach to another call. Before closing, the server sends ``ended`` with why the
call ended and its error, which the page shows (Twilio reads these from the call log).
"""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any, Literal, TypedDict

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib import admin
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from calls import model_endpoint, services, twilio_media
from calls.bridge.actions import EndCall
from calls.consumers import MediaStreamConsumer
from calls.live_page import can_monitor
from calls.models import Agent

logger = logging.getLogger(__name__)

PARAM_AGENT = "agent"  # the start message's customParameters: the chosen agent's id
CLOSE_AGENT_UNAVAILABLE = 4404
WEB_SID_PREFIX = "WEB"


class Assigned(TypedDict):
    """Sent once, on accept: the only message that is not Twilio's."""

    event: Literal["assigned"]
    callSid: str
    streamSid: str


class Ended(TypedDict):
    """Sent just before the server closes the socket: why the call ended, and its error."""

    event: Literal["ended"]
    reason: str
    error: str


def can_call(user: AbstractBaseUser | AnonymousUser | None) -> bool:
    """The call is stored in the call log, with its transcript: staff who may view calls."""
    return can_monitor(user)


def new_call_sid() -> str:
    return WEB_SID_PREFIX + secrets.token_hex(16)


def phone_page(request: HttpRequest) -> HttpResponse:
    """Wrapped by ``admin.site.admin_view`` in the URLconf: staff only, login redirect."""
    if not can_call(request.user):
        raise PermissionDenied
    context = {
        **admin.site.each_context(request),
        "title": "Web phone",
        "agents": Agent.objects.filter(enabled=True).order_by("name"),
        "standin": model_endpoint.uses_standin(),
        "missing_key": not settings.OPENAI_API_KEY and not model_endpoint.uses_standin(),
    }
    return TemplateResponse(request, "admin/calls/phone.html", context)


class WebPhoneConsumer(MediaStreamConsumer):
    """``MediaStreamConsumer`` authenticated by the Django session (``AuthMiddlewareStack`` and
    an Origin check on this route only)."""

    async def connect(self) -> None:
        self.username = ""
        self.assigned = Assigned(
            event="assigned", callSid=new_call_sid(), streamSid="MZ" + secrets.token_hex(16)
        )
        await super().connect()
        if self.username:  # accepted
            await self.send(text_data=json.dumps(self.assigned))

    async def _handshake_allowed(self) -> bool:
        user = self.scope.get("user")
        if not await database_sync_to_async(can_call)(user):
            logger.warning("Refused web phone socket: no session of staff who may view calls")
            return False
        assert user is not None
        self.username = user.get_username()
        return True

    async def _authenticate(self, start: twilio_media.Start) -> Any:
        if (start.call_sid, start.stream_sid) != (self.assigned["callSid"], self.assigned["streamSid"]):
            await self._reject("start is not for the SIDs this socket was given")
            return None
        try:
            return await database_sync_to_async(services.call_start_web)(
                call_sid=self.assigned["callSid"],
                username=self.username,
                agent_id=start.custom_parameters.get(PARAM_AGENT, ""),
            )
        except ValueError as exc:
            await self._reject(str(exc), CLOSE_AGENT_UNAVAILABLE)
            return None

    def _release_preconnected(self, start: twilio_media.Start, reason: str) -> None:
        # Web calls are never pre-connected, and a browser's start must not reach a phone call's.
        return

    async def _tell_ending(self, end: EndCall) -> None:
        ended = Ended(event="ended", reason=str(end.reason), error=end.error)
        await self._send_twilio(json.dumps(ended))

    async def _hang_up(self) -> None:
        # No phone network to tell: closing the socket, which ``_finish`` does next, ends it.
        logger.info("call %s: web call ended by the server", self.call_sid)
