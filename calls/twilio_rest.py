"""Twilio REST calls we make mid-call: hang up, redirect to new TwiML (transfer), dial out.

A thin wrapper over the official ``twilio`` client, so request building (form encoding,
repeated ``StatusCallbackEvent`` fields, Basic auth) stays the library's job. The API origin
comes from ``TWILIO_API_BASE_URL``: a custom ``http_client`` rewrites the library's fixed
``https://api.twilio.com`` origin, so tests can point at a local fake without patching
anything, and production (the default origin) is left untouched.

The functions are synchronous (``requests`` underneath); async callers run them in a worker
thread. Errors come out as :class:`TwilioRestError`, whose text is safe to store: it never
contains the auth token.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import requests
from django.conf import settings
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.http_client import TwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from calls.redaction import redact

__all__ = [
    "NUMBER_FIELDS",
    "TWILIO_API_ORIGIN",
    "IncomingNumber",
    "TwilioApiHttpClient",
    "TwilioNotConfigured",
    "TwilioRestError",
    "call_complete",
    "call_create",
    "call_update_twiml",
    "incoming_number_find",
    "incoming_number_update",
    "rest_client",
]

logger = logging.getLogger(__name__)

TWILIO_API_ORIGIN = "https://api.twilio.com"
# requests has no default timeout; a hung Twilio request must not pin a worker thread forever.
HTTP_TIMEOUT_SECONDS = 15.0
STATUS_CALLBACK_EVENTS = ("initiated", "ringing", "answered", "completed")
# Twilio error codes that mean "this call is no longer there to act on".
NOT_FOUND_CODE = 20404
INVALID_CALL_STATE_CODE = 21220
ENDED_STATUSES = frozenset({"completed", "canceled", "busy", "failed", "no-answer"})

T = TypeVar("T")


class TwilioNotConfigured(RuntimeError):
    """TWILIO_ACCOUNT_SID or TWILIO_AUTH_TOKEN is missing, so no REST call can be made."""


class TwilioRestError(Exception):
    """A failed Twilio REST request (HTTP error or network failure).

    ``status`` is the HTTP status (None when no response arrived), ``code`` Twilio's error
    code (e.g. 20003, 20404, 21220). ``str()`` is safe to log and store: it is built from
    Twilio's message only (never from the library's ANSI-coloured ``__str__``) and the auth
    token is scrubbed from it.
    """

    def __init__(
        self,
        operation: str,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        call_sid: str | None = None,
    ) -> None:
        self.operation = operation
        self.message = message
        self.status = status
        self.code = code
        self.call_sid = call_sid
        super().__init__(str(self))

    def __reduce__(self) -> tuple[Any, ...]:
        """Keyword-only fields: rebuild from all of them, so the error survives pickling."""
        return (
            _rebuild_error,
            (self.operation, self.message, self.status, self.code, self.call_sid),
        )

    @property
    def more_info(self) -> str | None:
        return f"https://www.twilio.com/docs/errors/{self.code}" if self.code else None

    def __str__(self) -> str:
        where = f" {self.call_sid}" if self.call_sid else ""
        status = f"HTTP {self.status}" if self.status is not None else "no response"
        code = f", Twilio error {self.code}" if self.code is not None else ""
        return f"Twilio {self.operation}{where} failed ({status}{code}): {self.message}"


def _rebuild_error(
    operation: str, message: str, status: int | None, code: int | None, call_sid: str | None
) -> TwilioRestError:
    return TwilioRestError(operation, message, status=status, code=code, call_sid=call_sid)


class TwilioApiHttpClient(TwilioHttpClient):  # type: ignore[misc]  # twilio ships no types
    """The library's HTTP client, sending API requests to ``base_url`` instead.

    Only the ``https://api.twilio.com`` origin is rewritten, and only when ``base_url``
    differs from it. (With TWILIO_EDGE/TWILIO_REGION set in the environment the library
    targets ``api.<edge>.<region>.twilio.com`` instead, which is left alone.) The library's
    own per-request logging goes to DEBUG: we log one line per operation ourselves.
    """

    def __init__(self, base_url: str = TWILIO_API_ORIGIN, *, timeout: float | None = None) -> None:
        super().__init__(timeout=timeout)
        self.base_url = base_url.rstrip("/")

    def rewrite(self, url: str) -> str:
        if self.base_url == TWILIO_API_ORIGIN:
            return url
        if url == TWILIO_API_ORIGIN or url.startswith(TWILIO_API_ORIGIN + "/"):
            return self.base_url + url[len(TWILIO_API_ORIGIN) :]
        return url

    def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,
        allow_redirects: bool = False,
    ) -> Response:
        return super().request(
            method,
            self.rewrite(url),
            params=params,
            data=data,
            headers=headers,
            auth=auth,
            timeout=timeout,
            allow_redirects=allow_redirects,
        )

    def log_request(self, kwargs: dict[str, object]) -> None:
        logger.debug("Twilio API request: %s %s", kwargs["method"], kwargs["url"])

    def log_response(self, status_code: int, response: requests.Response) -> None:
        logger.debug("Twilio API response: HTTP %s", status_code)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()


def _credentials() -> tuple[str, str]:
    account_sid = getattr(settings, "TWILIO_ACCOUNT_SID", "") or ""
    auth_token = getattr(settings, "TWILIO_AUTH_TOKEN", "") or ""
    missing = [
        name
        for name, value in (("TWILIO_ACCOUNT_SID", account_sid), ("TWILIO_AUTH_TOKEN", auth_token))
        if not value
    ]
    if missing:
        raise TwilioNotConfigured(
            f"{' and '.join(missing)} must be set to use the Twilio REST API "
            "(hang up, transfer, outbound calls)."
        )
    return account_sid, auth_token


def rest_client() -> Client:
    """A new official client for the configured account and API origin.

    New per call, because settings may change (tests) and a ``requests`` session is not
    meant to be shared between the worker threads our callers use. The caller owns it:
    ``client.http_client.close()`` releases its connections.
    """
    account_sid, auth_token = _credentials()
    base_url = getattr(settings, "TWILIO_API_BASE_URL", "") or TWILIO_API_ORIGIN
    http_client = TwilioApiHttpClient(base_url, timeout=HTTP_TIMEOUT_SECONDS)
    return Client(account_sid, auth_token, http_client=http_client)


@contextmanager
def _client() -> Iterator[Client]:
    client = rest_client()
    try:
        yield client
    finally:
        http_client = client.http_client
        if isinstance(http_client, TwilioApiHttpClient):
            http_client.close()


def _scrub(text: str) -> str:
    token = getattr(settings, "TWILIO_AUTH_TOKEN", "") or ""
    return redact(text, token)


def _run(operation: str, call_sid: str | None, request: Callable[[Client], T]) -> T:
    """Run one request, turning every failure into a TwilioRestError (token scrubbed)."""
    with _client() as client:
        try:
            return request(client)
        except TwilioRestException as exc:
            code = exc.code if isinstance(exc.code, int) else None
            error = TwilioRestError(
                operation, _scrub(str(exc.msg)), status=exc.status, code=code, call_sid=call_sid
            )
        except TwilioServiceException as exc:
            message = exc.title + (f": {exc.detail}" if exc.detail else "")
            error = TwilioRestError(
                operation, _scrub(message), status=exc.status, code=exc.code, call_sid=call_sid
            )
        except requests.RequestException as exc:
            error = TwilioRestError(operation, _scrub(f"{type(exc).__name__}: {exc}"), call_sid=call_sid)
    raise error


def call_complete(call_sid: str) -> bool:
    """Hang up a live call (``Status=completed``).

    True if we ended it; False if it had already ended (Twilio answers 404/20404 or 21220,
    or reports a terminal status other than completed). Ending an ended call is not an
    error: the caller may have hung up a moment before us.
    """
    try:
        call = _run("hang up", call_sid, lambda c: c.calls(call_sid).update(status="completed"))
    except TwilioRestError as exc:
        if exc.code in (NOT_FOUND_CODE, INVALID_CALL_STATE_CODE):
            logger.info("Twilio hang up %s: already ended (error %s)", call_sid, exc.code)
            return False
        logger.warning("%s", exc)
        raise
    status = call.status or ""
    if status in ENDED_STATUSES and status != "completed":
        logger.info("Twilio hang up %s: already ended (%s)", call_sid, status)
        return False
    logger.info("Twilio hang up %s: completed", call_sid)
    return True


def call_update_twiml(call_sid: str, twiml: str) -> None:
    """Replace a live call's TwiML (e.g. a transfer ``<Response><Dial>…</Dial></Response>``).

    This interrupts the current TwiML, including our ``<Connect><Stream>``. Raises
    TwilioRestError on any failure, including a call that has already ended.
    """
    try:
        _run("update TwiML", call_sid, lambda c: c.calls(call_sid).update(twiml=twiml))
    except TwilioRestError as exc:
        logger.warning("%s", exc)
        raise
    logger.info("Twilio update TwiML %s: done", call_sid)


# Twilio's MachineDetection values: is it a machine; also wait for the beep.
MachineDetection = Literal["Enable", "DetectMessageEnd"]


def call_create(
    *,
    to: str,
    from_: str,
    url: str,
    status_callback: str,
    machine_detection: bool | MachineDetection = False,
    amd_status_callback: str | None = None,
    time_limit: int | None = None,
) -> str:
    """Place an outbound call whose TwiML comes from ``url``; returns its CallSid.

    Status callbacks cover every progress event (Twilio sends only ``completed`` by
    default). With ``machine_detection`` (True or "Enable": is it a machine;
    "DetectMessageEnd": also wait for the beep, to leave a message), AMD runs asynchronously
    (``AsyncAmd=true``) so the media stream starts at once and the verdict is POSTed to
    ``amd_status_callback``, which is therefore required.
    """
    if machine_detection and not amd_status_callback:
        raise ValueError("machine_detection needs amd_status_callback: async AMD posts its result there")
    if amd_status_callback and not machine_detection:
        raise ValueError("amd_status_callback is only used with machine_detection=True")
    amd: dict[str, str] = {}
    if machine_detection and amd_status_callback:
        amd = {
            "machine_detection": machine_detection if isinstance(machine_detection, str) else "Enable",
            "async_amd": "true",
            "async_amd_status_callback": amd_status_callback,
        }
    extra: dict[str, int] = {"time_limit": time_limit} if time_limit is not None else {}

    try:
        call = _run(
            "create call",
            None,
            lambda c: c.calls.create(
                to=to,
                from_=from_,
                url=url,
                status_callback=status_callback,
                status_callback_event=list(STATUS_CALLBACK_EVENTS),
                **amd,
                **extra,
            ),
        )
    except TwilioRestError as exc:
        logger.warning("%s", exc)
        raise
    call_sid = str(call.sid)
    logger.info("Twilio create call %s: %s%s", call_sid, call.status, " (async AMD)" if amd else "")
    return call_sid


# --- phone numbers (manage.py connect_number) ---------------------------------------------


@dataclass(frozen=True)
class IncomingNumber:
    """The routing part of an IncomingPhoneNumber, keyed by the API's form field names."""

    sid: str
    phone_number: str
    voice: dict[str, str]


# The fields of an IncomingPhoneNumber that decide where its calls go: form field name -> the
# library's keyword and attribute. There is no StatusCallbackEvent: for calls *to* a number,
# Twilio posts only the final status to its StatusCallback; choosing events (initiated,
# ringing, answered) exists only on calls we create (call_create) and on <Dial> nouns.
NUMBER_FIELDS = {
    "VoiceUrl": "voice_url",
    "VoiceMethod": "voice_method",
    "StatusCallback": "status_callback",
    "StatusCallbackMethod": "status_callback_method",
    "VoiceApplicationSid": "voice_application_sid",
    "TrunkSid": "trunk_sid",
}


def _incoming_number(instance: Any) -> IncomingNumber:
    voice = {field: str(getattr(instance, name, None) or "") for field, name in NUMBER_FIELDS.items()}
    return IncomingNumber(sid=str(instance.sid), phone_number=str(instance.phone_number), voice=voice)


def incoming_number_find(phone_number: str) -> IncomingNumber | None:
    """The account's number ``phone_number`` (E.164), or None if the account has no such number."""
    found = _run(
        "find number", None, lambda c: c.incoming_phone_numbers.list(phone_number=phone_number, limit=20)
    )
    # PhoneNumber is a filter on "numbers containing this", so match exactly.
    exact = [number for number in found if number.phone_number == phone_number]
    return _incoming_number(exact[0]) if exact else None


def incoming_number_update(sid: str, fields: dict[str, str]) -> IncomingNumber:
    """Set ``fields`` (form names, keys of NUMBER_FIELDS) on the number; returns it as updated."""
    arguments = {NUMBER_FIELDS[field]: value for field, value in fields.items()}
    try:
        updated = _run("update number", None, lambda c: c.incoming_phone_numbers(sid).update(**arguments))
    except TwilioRestError as exc:
        logger.warning("%s", exc)
        raise
    logger.info("Twilio update number %s: %s", sid, ", ".join(sorted(fields)))
    return _incoming_number(updated)
