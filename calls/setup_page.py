"""The root page for staff: what is configured, what is missing, and where to go next.

It never shows a secret's value, only whether it is set. Configuration problems found by
Django system checks registered under our ids (``voiceagent.*``, ``calls.*``) show here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.core import checks
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from calls import number_setup
from calls.models import Agent

CHECK_ID_PREFIXES = ("voiceagent.", "calls.")


@dataclass(frozen=True)
class Item:
    name: str
    ok: bool
    detail: str


def _set(name: str) -> bool:
    return bool(getattr(settings, name, ""))


def setup_items() -> list[Item]:
    configured = number_setup.configured_base_url()
    public = getattr(settings, "PUBLIC_BASE_URL", "") or ""
    if configured is None:
        public_item = Item(
            "PUBLIC_BASE_URL",
            False,
            f"not set to a public URL ({public or 'empty'}): Twilio cannot reach this machine. "
            "Run `ngrok http 8000` and set it to the https origin ngrok prints.",
        )
    elif not configured.startswith("https://"):
        public_item = Item(
            "PUBLIC_BASE_URL", False, f"{configured}: not https, so Twilio's media stream (wss://) fails"
        )
    else:
        public_item = Item("PUBLIC_BASE_URL", True, f"{configured} (https)")
    superuser = get_user_model().objects.filter(is_superuser=True, is_active=True).exists()
    return [
        Item(
            "OPENAI_API_KEY",
            _set("OPENAI_API_KEY"),
            "set"
            if _set("OPENAI_API_KEY")
            else "not set: the local stand-in is in use (no real model)"
            if settings.OPENAI_STANDIN
            else "not set: every call fails (the local stand-in is for DEBUG=true only)",
        ),
        Item(
            "TWILIO_AUTH_TOKEN",
            _set("TWILIO_AUTH_TOKEN"),
            "set" if _set("TWILIO_AUTH_TOKEN") else "not set: every Twilio webhook is refused (403)",
        ),
        Item(
            "TWILIO_ACCOUNT_SID",
            _set("TWILIO_ACCOUNT_SID"),
            "set"
            if _set("TWILIO_ACCOUNT_SID")
            else "not set: needed for connect_number, outbound calls, hang-up and transfer",
        ),
        public_item,
        Item(
            "Superuser",
            superuser,
            "exists" if superuser else "none: `.venv/bin/python manage.py createsuperuser`",
        ),
    ]


def check_messages() -> list[checks.CheckMessage]:
    """Warnings and errors of our own system checks (whichever are registered)."""
    return [
        message
        for message in checks.run_checks(include_deployment_checks=False)
        if (message.id or "").startswith(CHECK_ID_PREFIXES) and message.level >= checks.WARNING
    ]


def setup_page(request: HttpRequest) -> HttpResponse:
    """Wrapped by ``admin.site.admin_view`` in the URLconf: staff only, else the admin login."""
    base_url = number_setup.configured_base_url()
    from_request = base_url is None
    if base_url is None:
        parts = urlsplit(request.build_absolute_uri("/"))
        base_url = f"{parts.scheme}://{parts.netloc}"
    items = setup_items()
    context = {
        **admin.site.each_context(request),
        "title": "Set up",
        "items": items,
        "missing": [item for item in items if not item.ok],
        "check_messages": check_messages(),
        "agents": Agent.objects.order_by("-enabled", "name"),
        "base_url": base_url,
        "from_request": from_request,
        "webhook_url": base_url + number_setup.WEBHOOK_PATH,
        "status_callback_url": base_url + number_setup.STATUS_CALLBACK_PATH,
    }
    return TemplateResponse(request, "admin/calls/setup.html", context)
