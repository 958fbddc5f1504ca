"""Twilio request signatures, checked against the public URL Twilio signed.

Behind ngrok or a TLS-terminating proxy Django sees ``http://internal-host``, but Twilio
signs the public ``https://`` URL; so the URL is rebuilt from ``PUBLIC_BASE_URL``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from asgiref.sync import iscoroutinefunction
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from twilio.request_validator import RequestValidator

logger = logging.getLogger(__name__)


def public_url(path_with_query: str) -> str:
    return settings.PUBLIC_BASE_URL + path_with_query


def stream_url(path: str | None = None) -> str:
    """The ``wss://`` URL for the TwiML ``<Stream>``; ``ws://`` when the public origin is http.
    By default this worker's media path (``/media-stream/<WORKER_ROUTE>`` when set)."""
    if path is None:
        path = f"/media-stream/{settings.WORKER_ROUTE}" if settings.WORKER_ROUTE else "/media-stream"
    parts = urlsplit(settings.PUBLIC_BASE_URL)
    scheme = "wss" if parts.scheme == "https" else "ws"
    return f"{scheme}://{parts.netloc}{path}"


def _validator() -> RequestValidator | None:
    token = settings.TWILIO_AUTH_TOKEN
    return RequestValidator(token) if token else None


def http_signature_valid(request: HttpRequest) -> bool:
    validator = _validator()
    if validator is None:
        logger.error("TWILIO_AUTH_TOKEN is not set: refusing a signed Twilio request")
        return False
    signature = request.headers.get("X-Twilio-Signature", "")
    if not signature:
        return False
    params = request.POST if request.method == "POST" else {}
    return bool(validator.validate(public_url(request.get_full_path()), params, signature))


def websocket_signature_valid(path: str, signature: str) -> bool:
    """Twilio signs the Stream URL as written in the TwiML, with empty params. Whether it
    adds a trailing slash is not documented, so both spellings are accepted."""
    validator = _validator()
    if validator is None:
        logger.error("TWILIO_AUTH_TOKEN is not set: refusing a media stream")
        return False
    if not signature:
        return False
    url = stream_url(path.rstrip("/") or "/")
    return any(validator.validate(candidate, {}, signature) for candidate in (url, url + "/"))


def _refusal(request: HttpRequest) -> HttpResponse | None:
    """403 (logged) unless ``X-Twilio-Signature`` matches; None when the request may go on."""
    if not settings.TWILIO_VALIDATE_SIGNATURES or http_signature_valid(request):
        return None
    logger.warning(
        "Rejected %s %s: missing or invalid X-Twilio-Signature (CallSid=%s)",
        request.method,
        request.path,
        _call_sid(request.POST),
    )
    return HttpResponseForbidden("Invalid Twilio signature.")


def twilio_signed(view: Callable[..., Any]) -> Callable[..., Any]:
    """Reject requests whose ``X-Twilio-Signature`` does not match (403, logged). Works on
    sync and async views alike; the check itself touches no database."""
    if iscoroutinefunction(view):

        @wraps(view)
        async def async_wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            refusal = _refusal(request)
            return refusal if refusal is not None else await view(request, *args, **kwargs)

        return async_wrapper

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        refusal = _refusal(request)
        return refusal if refusal is not None else view(request, *args, **kwargs)

    return wrapper


def _call_sid(params: Mapping[str, str]) -> str:
    return str(params.get("CallSid", "-"))[:64]
