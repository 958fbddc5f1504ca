"""System checks for the first run: what is missing before a real phone call can work.

Printed by ``manage.py check`` and ``runserver`` (and every other management command, as
Django does for all warnings). Warnings only: the server still starts, on the local stand-in
model and without Twilio, so that a new checkout runs before it is configured.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.checks import CheckMessage, register
from django.core.checks import Warning as CheckWarning
from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

OPENAI_KEYS_PAGE = "https://platform.openai.com/api-keys"
TWILIO_TOKEN_HINT = "Copy the Auth Token from the Twilio Console (Account Info) to TWILIO_AUTH_TOKEN in .env."
TWILIO_SID_HINT = "Copy the Account SID (AC...) from the Twilio Console (Account Info) to TWILIO_ACCOUNT_SID."


@register()
def configuration_check(app_configs: Sequence[Any] | None = None, **kwargs: Any) -> list[CheckMessage]:
    return [*_openai(), *_twilio(), *_public_base_url()]


def _openai() -> list[CheckMessage]:
    key = settings.OPENAI_API_KEY
    if not key:
        effect = (
            "calls are answered by the local stand-in model, not OpenAI"
            if settings.OPENAI_STANDIN
            else "every call fails (the local stand-in is for DEBUG=true only)"
        )
        return [
            CheckWarning(
                f"OPENAI_API_KEY is not set: {effect}.",
                hint=f"Create a key at {OPENAI_KEYS_PAGE} and set OPENAI_API_KEY=sk-... in .env.",
                id="voiceagent.W001",
            )
        ]
    # Every kind of OpenAI key starts so (sk-..., sk-proj-..., sk-svcacct-...); a proxy or a
    # local server at another OPENAI_REALTIME_URL may use keys of its own.
    if urlsplit(settings.OPENAI_REALTIME_URL).hostname == "api.openai.com" and not key.startswith("sk-"):
        return [
            CheckWarning(
                "OPENAI_API_KEY does not look like an OpenAI API key (those start with sk-).",
                hint=f"Copy the whole key from {OPENAI_KEYS_PAGE} into OPENAI_API_KEY in .env.",
                id="voiceagent.W002",
            )
        ]
    return []


def _twilio() -> list[CheckMessage]:
    token, sid = settings.TWILIO_AUTH_TOKEN, settings.TWILIO_ACCOUNT_SID
    if not token:
        if not settings.TWILIO_VALIDATE_SIGNATURES:
            return []
        return [
            CheckWarning(
                "TWILIO_AUTH_TOKEN is not set: webhooks from Twilio will be refused (403), "
                "since their signatures cannot be checked.",
                hint=TWILIO_TOKEN_HINT,
                id="voiceagent.W003",
            )
        ]
    found: list[CheckMessage] = []
    if not re.fullmatch(r"[0-9a-fA-F]{32}", token):
        found.append(
            CheckWarning(
                "TWILIO_AUTH_TOKEN does not look like a Twilio auth token (32 hexadecimal characters): "
                "Twilio's signatures will not match it.",
                hint=TWILIO_TOKEN_HINT,
                id="voiceagent.W004",
            )
        )
    if not sid:
        found.append(
            CheckWarning(
                "TWILIO_ACCOUNT_SID is not set: hanging up, transfers and outbound calls use "
                "Twilio's REST API, which needs it.",
                hint=TWILIO_SID_HINT,
                id="voiceagent.W008",
            )
        )
    elif not re.fullmatch(r"AC[0-9a-fA-F]{32}", sid):
        found.append(
            CheckWarning(
                "TWILIO_ACCOUNT_SID does not look like an Account SID (AC and 32 hexadecimal characters).",
                hint=TWILIO_SID_HINT,
                id="voiceagent.W009",
            )
        )
    return found


def _public_base_url() -> list[CheckMessage]:
    url = settings.PUBLIC_BASE_URL
    parts = urlsplit(url)
    if _unreachable_from_internet(parts.hostname or ""):
        return [
            CheckWarning(
                f"PUBLIC_BASE_URL is {url}: Twilio cannot reach this machine there, so phone calls "
                "cannot connect (it is where Twilio sends webhooks and the media stream).",
                hint="Run `ngrok http 8000` and set PUBLIC_BASE_URL in .env to the https:// URL it shows.",
                id="voiceagent.W005",
            )
        ]
    if parts.scheme != "https" and not settings.DEBUG:
        return [
            CheckWarning(
                "PUBLIC_BASE_URL is not https while DEBUG is false: Twilio's media stream needs wss://.",
                hint="Serve the site over HTTPS and set PUBLIC_BASE_URL=https://<your domain>.",
                id="voiceagent.W006",
            )
        ]
    return []


def _unreachable_from_internet(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False  # a name: whether it resolves publicly is DNS's business
    return address.is_loopback or address.is_private or address.is_link_local or address.is_unspecified


@register()
def superuser_check(
    app_configs: Sequence[Any] | None = None, databases: Sequence[str] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    # Django passes `databases` only from `check --database` and migrate, not from `check` or
    # runserver, where this hint matters most; runserver queries the database right after its
    # checks anyway (unapplied migrations). So this runs unless another database was named, and
    # says nothing when it cannot tell: before migrate, or with the database unreachable.
    if databases is not None and DEFAULT_DB_ALIAS not in databases:
        return []
    database = connections[DEFAULT_DB_ALIAS].settings_dict
    name = str(database["NAME"])
    if database["ENGINE"].endswith("sqlite3") and name != ":memory:" and not Path(name).exists():
        return []  # not migrated yet; connecting would create an empty database file
    try:
        exists = get_user_model()._default_manager.filter(is_superuser=True).exists()
    except DatabaseError:
        return []
    if exists:
        return []
    return [
        CheckWarning(
            "No superuser exists yet: nobody can sign in to the admin.",
            hint="Create one: .venv/bin/python manage.py createsuperuser",
            id="voiceagent.W007",
        )
    ]
