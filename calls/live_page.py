"""The staff live page: calls in progress with their transcript as it grows, and a hang-up button.

The page lists the active calls from the database; ``LiveCallsConsumer`` (``/ws/live``) then
forwards the events of ``calls.live`` to the browser and turns the browser's hang-up into a
``call.hangup`` sent to the call's group, wherever the call runs.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Literal, TypedDict

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from django.contrib import admin
from django.contrib.auth.models import AbstractBaseUser, AbstractUser, AnonymousUser
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from calls import live
from calls.admin import listed_number
from calls.models import Call, EndedReason

logger = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4403
MAX_LISTED = 200  # calls on the page; more than this is not a page a person reads


class HangUp(TypedDict):
    action: Literal["hang_up"]
    call_sid: str


def can_monitor(user: AbstractBaseUser | AnonymousUser | None) -> bool:
    """Staff who may see calls: live transcripts are as private as the call log."""
    # Django's User (AUTH_USER_MODEL) or the anonymous one; a session's lazy user passes
    # isinstance as the user it wraps.
    if not isinstance(user, AbstractUser | AnonymousUser):
        return False
    return user.is_active and user.is_staff and user.has_perm("calls.view_call")


def call_event(call: Call) -> dict[str, Any]:
    return {
        "kind": "call_started",
        "call_sid": call.call_sid,
        "from": call.from_number,
        "to": call.to_number,
        "agent": call.agent.name if call.agent else "",
        "direction": call.direction,
        "started_at": call.started_at.isoformat() if call.started_at else None,
    }


def for_display(event: dict[str, Any]) -> dict[str, Any]:
    """Numbers as the admin's lists show them (masked with MASK_PHONE_NUMBERS)."""
    if event.get("kind") != "call_started":
        return event
    shown = {key: listed_number(event.get(key) or "") for key in ("from", "to")}
    return {**event, **shown}


def active_calls() -> list[dict[str, Any]]:
    """Calls whose media stream started and that have not ended, oldest first, with their turns."""
    calls = (
        Call.objects.filter(started_at__isnull=False, ended_at__isnull=True)
        .select_related("agent")
        .prefetch_related("turns")
        .order_by("started_at")[:MAX_LISTED]
    )
    return [
        {
            **for_display(call_event(call)),
            "turns": [live.turn_event(t, call.call_sid) for t in call.turns.all()],
        }
        for call in calls
    ]


def live_calls(request: HttpRequest) -> HttpResponse:
    """Wrapped by ``admin.site.admin_view`` in the URLconf: staff only, login redirect."""
    if not can_monitor(request.user):
        raise PermissionDenied
    context = {
        **admin.site.each_context(request),
        "title": "Live calls",
        "live_state": {"calls": active_calls(), "reasons": dict(EndedReason.choices)},
    }
    return TemplateResponse(request, "admin/calls/live.html", context)


class LiveCallsConsumer(AsyncWebsocketConsumer):
    """Authenticated by the Django session (``AuthMiddlewareStack`` on this route only)."""

    joined = False

    async def connect(self) -> None:
        user = self.scope.get("user")
        await self.accept()
        if user is None or not await database_sync_to_async(can_monitor)(user):
            # Accepted first, so the page can tell "signed out" from a network error.
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.username = user.get_username()
        await self.channel_layer.group_add(live.LIVE_GROUP, self.channel_name)
        self.joined = True
        # Joined before the snapshot: an event in between is sent twice, never lost.
        await self.send_json({"kind": "snapshot", "calls": await database_sync_to_async(active_calls)()})

    async def disconnect(self, code: int) -> None:
        if self.joined:
            await self.channel_layer.group_discard(live.LIVE_GROUP, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.joined:
            return
        try:
            content = json.loads(text_data or "")
        except ValueError:
            content = None
        if not isinstance(content, dict):
            content = {}
        call_sid = content.get("call_sid")
        if content.get("action") != "hang_up" or not isinstance(call_sid, str) or not 0 < len(call_sid) <= 64:
            await self.send_json({"kind": "error", "message": "Unknown request."})
            return
        await self.hang_up({"action": "hang_up", "call_sid": call_sid})

    async def hang_up(self, request: HangUp) -> None:
        call_sid = request["call_sid"]
        active = await Call.objects.filter(
            call_sid=call_sid, started_at__isnull=False, ended_at__isnull=True
        ).aexists()
        if not active:
            message = "This call is not active."
            await self.send_json({"kind": "error", "call_sid": call_sid, "message": message})
            return
        logger.info("call %s: hang-up requested by %s", call_sid, self.username)
        await live.request_hang_up(call_sid, by=self.username)
        await self.send_json({"kind": "hang_up_requested", "call_sid": call_sid})

    async def live_event(self, message: dict[str, Any]) -> None:
        event = message.get("event")
        if isinstance(event, dict):
            await self.send_json(for_display(event))

    async def send_json(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content, default=str))
