"""A fake Twilio REST API (2010-04-01 Calls and IncomingPhoneNumbers) on a loopback HTTP server.

End-to-end tests run our server in a subprocess that reaches Twilio over HTTP, so the fake
has to be a real server rather than a mock. It answers like Twilio: Basic auth, form-encoded
bodies, Twilio's JSON call resources and error bodies (``code``/``message``/``more_info``/
``status``), 404/20404 for unknown or ended calls. Every request is recorded so tests can
assert on exactly what was sent, and can block until it arrives (``wait_for_request`` on a
condition variable, or ``await_request`` from asyncio).

It runs a ``ThreadingHTTPServer`` in a daemon thread, so it works whichever event loop (or
none) the test uses. Deliberately free of Django.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import hmac
import json
import re
import secrets
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any

from calls.fakes.local_http import KeepAliveHandler, LocalHttpServer

__all__ = [
    "API_VERSION",
    "ENDED_STATUSES",
    "FakeCall",
    "FakeNumber",
    "FakeTwilioRest",
    "RecordedRequest",
    "new_call_sid",
]

API_VERSION = "2010-04-01"
ENDED_STATUSES = frozenset({"completed", "canceled", "busy", "failed", "no-answer"})
CALL_STATUSES = frozenset({"queued", "ringing", "in-progress"}) | ENDED_STATUSES

_CALLS_PATH = re.compile(rf"^/{API_VERSION}/Accounts/(?P<account>[^/]+)/Calls(?:/(?P<sid>[^/]+))?\.json$")
_NUMBERS_PATH = re.compile(
    rf"^/{API_VERSION}/Accounts/(?P<account>[^/]+)/IncomingPhoneNumbers(?:/(?P<sid>PN[^/]+))?\.json$"
)
_E164 = re.compile(r"^\+[1-9]\d{1,14}$")


def new_call_sid() -> str:
    return "CA" + secrets.token_hex(16)


def _rfc2822(moment: datetime | None) -> str | None:
    return format_datetime(moment) if moment else None


def _error_body(status: int, code: int, message: str) -> dict[str, Any]:
    return {
        "code": int(code),
        "message": message,
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": int(status),
    }


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the fake received it. ``form`` keeps repeated fields (a list per name)."""

    method: str
    path: str
    form: dict[str, list[str]]
    authorized: bool
    time: float  # time.monotonic() at arrival
    query: dict[str, list[str]] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # without Authorization
    response_status: int = 0

    def value(self, name: str) -> str | None:
        """The first value of a form field (None if absent)."""
        values = self.form.get(name)
        return values[0] if values else None

    @property
    def call_sid(self) -> str | None:
        match = _CALLS_PATH.match(self.path)
        return match.group("sid") if match else None

    @property
    def is_create(self) -> bool:
        match = _CALLS_PATH.match(self.path)
        return self.method == "POST" and bool(match) and match.group("sid") is None

    def is_update(self, call_sid: str | None = None) -> bool:
        sid = self.call_sid
        return self.method == "POST" and sid is not None and (call_sid is None or sid == call_sid)


@dataclass
class FakeCall:
    """A call resource as the fake holds it."""

    sid: str
    account_sid: str
    to: str
    from_: str
    status: str
    direction: str
    date_created: datetime
    date_updated: datetime
    start_time: datetime | None = None
    end_time: datetime | None = None
    url: str | None = None
    twiml: str | None = None
    answered_by: str | None = None
    parent_call_sid: str | None = None
    params: dict[str, list[str]] = field(default_factory=dict)  # the create request's form
    updates: list[dict[str, list[str]]] = field(default_factory=list)

    @property
    def ended(self) -> bool:
        return self.status in ENDED_STATUSES

    def resource(self) -> dict[str, Any]:
        """The JSON body Twilio returns for this call."""
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/Calls/{self.sid}"
        duration = None
        if self.start_time and self.end_time:
            duration = str(int((self.end_time - self.start_time).total_seconds()))
        return {
            "sid": self.sid,
            "date_created": _rfc2822(self.date_created),
            "date_updated": _rfc2822(self.date_updated),
            "parent_call_sid": self.parent_call_sid,
            "account_sid": self.account_sid,
            "to": self.to,
            "to_formatted": self.to,
            "from": self.from_,
            "from_formatted": self.from_,
            "phone_number_sid": None,
            "status": self.status,
            "start_time": _rfc2822(self.start_time),
            "end_time": _rfc2822(self.end_time),
            "duration": duration,
            "price": None,
            "price_unit": "USD",
            "direction": self.direction,
            "answered_by": self.answered_by,
            "annotation": None,
            "api_version": API_VERSION,
            "forwarded_from": None,
            "group_sid": None,
            "caller_name": None,
            "queue_time": "0",
            "trunk_sid": None,
            "uri": uri + ".json",
            "subresource_uris": {
                name: f"{uri}/{path}.json"
                for name, path in (
                    ("notifications", "Notifications"),
                    ("recordings", "Recordings"),
                    ("payments", "Payments"),
                    ("events", "Events"),
                    ("siprec", "Siprec"),
                    ("streams", "Streams"),
                    ("transcriptions", "Transcriptions"),
                    ("user_defined_message_subscriptions", "UserDefinedMessageSubscriptions"),
                    ("user_defined_messages", "UserDefinedMessages"),
                )
            },
        }


# IncomingPhoneNumber fields an update may set (the voice and status ones we use, and the
# other writable URLs so a request setting them is not refused), form name -> JSON key.
_NUMBER_WRITABLE = {
    "FriendlyName": "friendly_name",
    "VoiceUrl": "voice_url",
    "VoiceMethod": "voice_method",
    "VoiceFallbackUrl": "voice_fallback_url",
    "VoiceFallbackMethod": "voice_fallback_method",
    "VoiceApplicationSid": "voice_application_sid",
    "StatusCallback": "status_callback",
    "StatusCallbackMethod": "status_callback_method",
    "SmsUrl": "sms_url",
    "SmsMethod": "sms_method",
}
_URL_FIELDS = frozenset({"VoiceUrl", "VoiceFallbackUrl", "StatusCallback", "SmsUrl"})
_METHOD_FIELDS = frozenset({"VoiceMethod", "VoiceFallbackMethod", "StatusCallbackMethod", "SmsMethod"})


@dataclass
class FakeNumber:
    """An IncomingPhoneNumber as the fake holds it: Twilio's JSON fields, by their JSON keys."""

    sid: str
    account_sid: str
    phone_number: str
    fields: dict[str, Any]
    updates: list[dict[str, list[str]]] = field(default_factory=list)

    def resource(self) -> dict[str, Any]:
        """The JSON body Twilio returns for this number."""
        uri = f"/{API_VERSION}/Accounts/{self.account_sid}/IncomingPhoneNumbers/{self.sid}"
        return {
            "account_sid": self.account_sid,
            "address_requirements": "none",
            "address_sid": None,
            "api_version": API_VERSION,
            "beta": False,
            "capabilities": {"fax": False, "mms": True, "sms": True, "voice": True},
            "date_created": _rfc2822(self.fields["_created"]),
            "date_updated": _rfc2822(self.fields["_updated"]),
            "emergency_status": "Inactive",
            "emergency_address_sid": None,
            "emergency_address_status": "unregistered",
            "friendly_name": self.fields["friendly_name"],
            "identity_sid": None,
            "origin": "twilio",
            "phone_number": self.phone_number,
            "sid": self.sid,
            "sms_application_sid": "",
            "sms_fallback_method": "POST",
            "sms_fallback_url": "",
            "sms_method": self.fields["sms_method"],
            "sms_url": self.fields["sms_url"],
            "status_callback": self.fields["status_callback"],
            "status_callback_method": self.fields["status_callback_method"],
            "trunk_sid": self.fields["trunk_sid"],
            "uri": uri + ".json",
            "voice_application_sid": self.fields["voice_application_sid"],
            "voice_caller_id_lookup": False,
            "voice_fallback_method": self.fields["voice_fallback_method"],
            "voice_fallback_url": self.fields["voice_fallback_url"],
            "voice_method": self.fields["voice_method"],
            "voice_url": self.fields["voice_url"],
            "bundle_sid": None,
            "voice_receive_mode": "voice",
            "status": "in-use",
            "type": "local",
            "subresource_uris": {
                "assigned_add_ons": f"{uri}/AssignedAddOns.json",
            },
        }


class _ApiError(Exception):
    """Raised inside request handling; becomes a Twilio error response."""

    def __init__(self, status: int, code: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class _AsyncWaiter:
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[RecordedRequest]
    predicate: Callable[[RecordedRequest], bool]


class FakeTwilioRest:
    """Twilio's Calls REST API, for one account, on ``http://host:port``; also its
    IncomingPhoneNumbers (``add_number``; list filtered by PhoneNumber, fetch, update).

    ``add_live_call`` registers calls that started elsewhere (a simulated inbound call) so
    updates on them succeed; ``end_call`` marks a call ended, after which updates get
    404/20404 as from Twilio. ``fail_next`` makes the next request fail with a given error.
    """

    def __init__(self, account_sid: str, auth_token: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.host = host
        self.port = port
        self.requests: list[RecordedRequest] = []
        self._calls: dict[str, FakeCall] = {}
        self._numbers: dict[str, FakeNumber] = {}
        self._faults: list[tuple[int, int, str]] = []
        self._cond = threading.Condition()
        self._async_waiters: list[_AsyncWaiter] = []
        self._http = LocalHttpServer("fake-twilio-rest")

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> FakeTwilioRest:
        self.port = self._http.start(self.host, self.port, _handler_for(self))
        return self

    def stop(self) -> None:
        self._http.stop()

    def __enter__(self) -> FakeTwilioRest:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The origin to use as TWILIO_API_BASE_URL."""
        return f"http://{self.host}:{self._http.port}"

    # --- test controls -----------------------------------------------------------------

    def add_live_call(
        self,
        call_sid: str | None = None,
        *,
        to: str = "+15552223333",
        from_: str = "+15550001111",
        direction: str = "inbound",
        status: str = "in-progress",
    ) -> str:
        """Register a call that started elsewhere (e.g. a simulated inbound call)."""
        sid = call_sid or new_call_sid()
        now = datetime.now(UTC)
        with self._cond:
            self._calls[sid] = FakeCall(
                sid=sid,
                account_sid=self.account_sid,
                to=to,
                from_=from_,
                status=status,
                direction=direction,
                date_created=now,
                date_updated=now,
                start_time=now if status != "queued" else None,
            )
        return sid

    def end_call(self, call_sid: str, status: str = "completed") -> None:
        """Mark a call ended (the caller hung up): later updates get 404/20404."""
        if status not in ENDED_STATUSES:
            raise ValueError(f"{status!r} is not an ended status")
        self.set_call_status(call_sid, status)

    def set_call_status(self, call_sid: str, status: str) -> None:
        """Move a call along (e.g. an outbound call to ``ringing`` then ``in-progress``)."""
        if status not in CALL_STATUSES:
            raise ValueError(f"unknown call status {status!r}")
        with self._cond:
            call = self._calls.get(call_sid)
            if call is None:
                raise KeyError(call_sid)
            self._set_status(call, status)

    def call(self, call_sid: str) -> FakeCall:
        """A snapshot of a call (KeyError if the fake never heard of it)."""
        with self._cond:
            return copy.deepcopy(self._calls[call_sid])

    @property
    def calls(self) -> list[FakeCall]:
        """Snapshots of every call, oldest first."""
        with self._cond:
            return copy.deepcopy(list(self._calls.values()))

    def add_number(
        self,
        phone_number: str,
        *,
        voice_url: str = "https://demo.twilio.com/welcome/voice/",
        voice_method: str = "POST",
        status_callback: str = "",
        status_callback_method: str = "POST",
        voice_application_sid: str = "",
        trunk_sid: str | None = None,
    ) -> str:
        """Give the account a phone number (as bought in the console: Twilio's demo VoiceUrl)."""
        sid = "PN" + secrets.token_hex(16)
        now = datetime.now(UTC)
        fields: dict[str, Any] = {
            "_created": now,
            "_updated": now,
            "friendly_name": phone_number,
            "voice_url": voice_url,
            "voice_method": voice_method,
            "voice_fallback_url": "",
            "voice_fallback_method": "POST",
            "voice_application_sid": voice_application_sid,
            "status_callback": status_callback,
            "status_callback_method": status_callback_method,
            "sms_url": "https://demo.twilio.com/welcome/sms/reply/",
            "sms_method": "POST",
            "trunk_sid": trunk_sid,
        }
        with self._cond:
            self._numbers[sid] = FakeNumber(sid, self.account_sid, phone_number, fields)
        return sid

    def number(self, sid: str) -> FakeNumber:
        """A snapshot of a phone number (KeyError if it is not the account's)."""
        with self._cond:
            return copy.deepcopy(self._numbers[sid])

    def fail_next(self, status: int, code: int, message: str) -> None:
        """Make the next request (whatever it is) fail with this Twilio error. Faults queue up."""
        with self._cond:
            self._faults.append((status, code, message))

    def clear(self) -> None:
        """Forget calls, recorded requests and pending faults (between tests on a shared fake)."""
        with self._cond:
            self._calls.clear()
            self._numbers.clear()
            self.requests.clear()
            self._faults.clear()

    # --- waiting for requests ----------------------------------------------------------

    def _find(self, predicate: Callable[[RecordedRequest], bool], since: int) -> RecordedRequest | None:
        return next((r for r in self.requests[since:] if predicate(r)), None)

    def _timeout_message(self, timeout: float) -> str:
        seen = ", ".join(f"{r.method} {r.path} -> {r.response_status}" for r in self.requests) or "none"
        return f"no matching Twilio REST request within {timeout}s (received: {seen})"

    def wait_for_request(
        self,
        predicate: Callable[[RecordedRequest], bool] = lambda r: True,
        timeout: float = 5.0,
        *,
        since: int = 0,
    ) -> RecordedRequest:
        """Block until a request matching ``predicate`` has been received (already received
        ones count; ``since`` skips the first N). Raises TimeoutError."""
        found: RecordedRequest | None = None

        def ready() -> bool:
            nonlocal found
            found = self._find(predicate, since)
            return found is not None

        with self._cond:
            if not self._cond.wait_for(ready, timeout):
                raise TimeoutError(self._timeout_message(timeout))
        assert found is not None
        return found

    async def await_request(
        self,
        predicate: Callable[[RecordedRequest], bool] = lambda r: True,
        timeout: float = 5.0,
        *,
        since: int = 0,
    ) -> RecordedRequest:
        """``wait_for_request`` for asyncio code: resolved from the server thread via
        ``call_soon_threadsafe``, so it holds no thread and cancels cleanly."""
        loop = asyncio.get_running_loop()
        with self._cond:
            found = self._find(predicate, since)
            if found is not None:
                return found
            waiter = _AsyncWaiter(loop, loop.create_future(), predicate)
            self._async_waiters.append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await waiter.future
        except TimeoutError:
            with self._cond:
                message = self._timeout_message(timeout)
            raise TimeoutError(message) from None
        finally:
            with self._cond, contextlib.suppress(ValueError):
                self._async_waiters.remove(waiter)

    def _record(self, request: RecordedRequest) -> None:
        with self._cond:
            self.requests.append(request)
            self._cond.notify_all()
            for waiter in list(self._async_waiters):
                try:
                    matched = waiter.predicate(request)
                except Exception as exc:
                    self._async_waiters.remove(waiter)
                    self._resolve(waiter, exc)
                    continue
                if matched:
                    self._async_waiters.remove(waiter)
                    self._resolve(waiter, request)

    @staticmethod
    def _resolve(waiter: _AsyncWaiter, outcome: RecordedRequest | Exception) -> None:
        def settle() -> None:
            if waiter.future.done():
                return
            if isinstance(outcome, Exception):
                waiter.future.set_exception(outcome)
            else:
                waiter.future.set_result(outcome)

        with contextlib.suppress(RuntimeError):  # the waiter's loop is already closed
            waiter.loop.call_soon_threadsafe(settle)

    # --- request handling (server threads) ---------------------------------------------

    def _authorized(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        username, _, password = decoded.partition(":")
        return hmac.compare_digest(username.encode(), self.account_sid.encode()) and hmac.compare_digest(
            password.encode(), self.auth_token.encode()
        )

    def _handle(
        self,
        method: str,
        path: str,
        form: dict[str, list[str]],
        authorized: bool,
        query: dict[str, list[str]] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        with self._cond:
            if self._faults:
                status, code, message = self._faults.pop(0)
                return status, _error_body(status, code, message)
        try:
            if not authorized:
                raise _ApiError(HTTPStatus.UNAUTHORIZED, 20003, "Authenticate")
            numbers = _NUMBERS_PATH.match(path)
            if numbers is not None:
                return self._handle_numbers(method, path, numbers, form, query)
            match = _CALLS_PATH.match(path)
            if match is None:
                raise self._not_found(path)
            if match.group("account") != self.account_sid:
                raise _ApiError(HTTPStatus.UNAUTHORIZED, 20003, "Authenticate")
            sid = match.group("sid")
            if sid is None:
                if method == "POST":
                    return HTTPStatus.CREATED, self._create(form)
                if method == "GET":
                    return HTTPStatus.OK, self._list(path)
            else:
                if method == "POST":
                    return HTTPStatus.OK, self._update(sid, path, form)
                if method == "GET":
                    return HTTPStatus.OK, self._fetch(sid, path)
            raise _ApiError(HTTPStatus.METHOD_NOT_ALLOWED, 20004, "Method not allowed")
        except _ApiError as exc:
            return exc.status, _error_body(exc.status, exc.code, exc.message)

    @staticmethod
    def _not_found(path: str) -> _ApiError:
        return _ApiError(HTTPStatus.NOT_FOUND, 20404, f"The requested resource {path} was not found")

    @staticmethod
    def _first(form: dict[str, list[str]], name: str) -> str:
        values = form.get(name) or [""]
        return values[0]

    @staticmethod
    def _check_url(value: str, code: int, name: str) -> None:
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise _ApiError(HTTPStatus.BAD_REQUEST, code, f"{name} is not a valid URL: {value}")

    @staticmethod
    def _check_twiml(twiml: str) -> None:
        try:
            root = ET.fromstring(twiml)
        except ET.ParseError as exc:
            raise _ApiError(HTTPStatus.BAD_REQUEST, 12100, f"Document parse failure: {exc}") from None
        if root.tag != "Response":
            raise _ApiError(
                HTTPStatus.BAD_REQUEST, 12100, f"Document parse failure: root element is <{root.tag}>"
            )

    def _set_status(self, call: FakeCall, status: str) -> None:
        now = datetime.now(UTC)
        call.status = status
        call.date_updated = now
        if status == "in-progress" and call.start_time is None:
            call.start_time = now
        if status in ENDED_STATUSES and call.end_time is None:
            call.end_time = now

    def _create(self, form: dict[str, list[str]]) -> dict[str, Any]:
        to, from_ = self._first(form, "To"), self._first(form, "From")
        if not to:
            raise _ApiError(HTTPStatus.BAD_REQUEST, 21201, "No 'To' number is specified")
        if not from_:
            raise _ApiError(HTTPStatus.BAD_REQUEST, 21213, "No 'From' number is specified")
        if not (_E164.match(to) or to.startswith(("client:", "sip:"))):
            raise _ApiError(
                HTTPStatus.BAD_REQUEST, 21211, f"The 'To' number {to} is not a valid phone number."
            )
        routing = [name for name in ("Url", "Twiml", "ApplicationSid") if self._first(form, name)]
        if len(routing) != 1:
            raise _ApiError(
                HTTPStatus.BAD_REQUEST,
                21205,
                "Exactly one of Url, Twiml or ApplicationSid is required"
                + (f" (got {', '.join(routing)})" if routing else ""),
            )
        url, twiml = self._first(form, "Url"), self._first(form, "Twiml")
        if url:
            self._check_url(url, 21205, "Url")
        if twiml:
            self._check_twiml(twiml)
        now = datetime.now(UTC)
        call = FakeCall(
            sid=new_call_sid(),
            account_sid=self.account_sid,
            to=to,
            from_=from_,
            status="queued",
            direction="outbound-api",
            date_created=now,
            date_updated=now,
            url=url or None,
            twiml=twiml or None,
            params=form,
        )
        with self._cond:
            self._calls[call.sid] = call
            return call.resource()

    def _live_call(self, sid: str, path: str) -> FakeCall:
        call = self._calls.get(sid)
        if call is None or call.ended:
            raise self._not_found(path)
        return call

    def _update(self, sid: str, path: str, form: dict[str, list[str]]) -> dict[str, Any]:
        status, url, twiml = (self._first(form, name) for name in ("Status", "Url", "Twiml"))
        if status and status not in ("completed", "canceled"):
            raise _ApiError(HTTPStatus.BAD_REQUEST, 20001, f"Invalid Status: {status}")
        if url and twiml:
            raise _ApiError(HTTPStatus.BAD_REQUEST, 21205, "Twiml and Url are mutually exclusive")
        if url:
            self._check_url(url, 21205, "Url")
        if twiml:
            self._check_twiml(twiml)
        with self._cond:
            call = self._live_call(sid, path)
            call.updates.append(form)
            call.date_updated = datetime.now(UTC)
            if url:
                call.url, call.twiml = url, None
            if twiml:
                call.twiml, call.url = twiml, None
            if status == "completed":
                self._set_status(call, "completed")
            elif status == "canceled" and call.status in ("queued", "ringing"):
                # Twilio: `canceled` only affects calls that are queued or ringing.
                self._set_status(call, "canceled")
            return call.resource()

    def _fetch(self, sid: str, path: str) -> dict[str, Any]:
        with self._cond:
            call = self._calls.get(sid)
            if call is None:
                raise self._not_found(path)
            return call.resource()

    def _list(self, path: str) -> dict[str, Any]:
        with self._cond:
            calls = [call.resource() for call in reversed(self._calls.values())]
        return {
            "calls": calls,
            "end": max(len(calls) - 1, 0),
            "first_page_uri": f"{path}?PageSize=50&Page=0",
            "next_page_uri": None,
            "page": 0,
            "page_size": 50,
            "previous_page_uri": None,
            "start": 0,
            "uri": f"{path}?PageSize=50&Page=0",
        }

    # --- IncomingPhoneNumbers ------------------------------------------------------------

    def _handle_numbers(
        self,
        method: str,
        path: str,
        match: re.Match[str],
        form: dict[str, list[str]],
        query: dict[str, list[str]] | None,
    ) -> tuple[int, dict[str, Any]]:
        if match.group("account") != self.account_sid:
            raise _ApiError(HTTPStatus.UNAUTHORIZED, 20003, "Authenticate")
        sid = match.group("sid")
        if sid is None and method == "GET":
            return HTTPStatus.OK, self._list_numbers(path, query or {})
        if sid is not None and method == "GET":
            with self._cond:
                number = self._numbers.get(sid)
                if number is None:
                    raise self._not_found(path)
                return HTTPStatus.OK, number.resource()
        if sid is not None and method == "POST":
            return HTTPStatus.OK, self._update_number(sid, path, form)
        raise _ApiError(HTTPStatus.METHOD_NOT_ALLOWED, 20004, "Method not allowed")

    def _list_numbers(self, path: str, query: dict[str, list[str]]) -> dict[str, Any]:
        # Twilio's PhoneNumber filter matches numbers containing the given digits.
        wanted = self._first(query, "PhoneNumber")
        page_size = int(self._first(query, "PageSize") or 50)
        with self._cond:
            numbers = [
                number.resource()
                for number in self._numbers.values()
                if not wanted or wanted in number.phone_number
            ][:page_size]
        filters = f"PhoneNumber={urllib.parse.quote(wanted)}&" if wanted else ""
        uri = f"{path}?{filters}PageSize={page_size}&Page=0"
        return {
            "end": max(len(numbers) - 1, 0),
            "first_page_uri": uri,
            "incoming_phone_numbers": numbers,
            "next_page_uri": None,
            "page": 0,
            "page_size": page_size,
            "previous_page_uri": None,
            "start": 0,
            "uri": uri,
        }

    def _update_number(self, sid: str, path: str, form: dict[str, list[str]]) -> dict[str, Any]:
        # Twilio ignores parameters it does not know; the fake refuses them, so that a
        # misspelt field name in our requests fails a test instead of silently doing nothing.
        unknown = sorted(set(form) - set(_NUMBER_WRITABLE))
        if unknown:
            raise _ApiError(HTTPStatus.BAD_REQUEST, 20001, f"Unknown parameter: {unknown[0]}")
        for name in _URL_FIELDS & set(form):
            value = self._first(form, name)
            if value:  # an empty value clears the URL
                self._check_url(value, 21502 if name == "StatusCallback" else 21205, name)
        for name in _METHOD_FIELDS & set(form):
            if self._first(form, name).upper() not in ("GET", "POST"):
                raise _ApiError(HTTPStatus.BAD_REQUEST, 20001, f"{name} must be GET or POST")
        with self._cond:
            number = self._numbers.get(sid)
            if number is None:
                raise self._not_found(path)
            for name in form:
                value = self._first(form, name)
                number.fields[_NUMBER_WRITABLE[name]] = value.upper() if name in _METHOD_FIELDS else value
            number.fields["_updated"] = datetime.now(UTC)
            number.updates.append(form)
            return number.resource()


def _handler_for(fake: FakeTwilioRest) -> type[BaseHTTPRequestHandler]:
    class Handler(KeepAliveHandler):  # keep-alive, like the real API (requests pools connections)
        http = fake._http
        server_version = "nginx"

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def do_PUT(self) -> None:
            self._serve("PUT")

        def _serve(self, method: str) -> None:
            arrived = time.monotonic()
            parts = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
            form = urllib.parse.parse_qs(body, keep_blank_values=True) if body else {}
            query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
            authorized = fake._authorized(self.headers.get("Authorization"))
            status, payload = fake._handle(method, parts.path, form, authorized, query)
            fake._record(
                RecordedRequest(
                    method=method,
                    path=parts.path,
                    form=form,
                    authorized=authorized,
                    time=arrived,
                    query=query,
                    headers={k: v for k, v in self.headers.items() if k.lower() != "authorization"},
                    response_status=int(status),
                )
            )
            data = json.dumps(payload).encode()
            self.send_response(int(status))
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Twilio-Request-Id", "RQ" + secrets.token_hex(16))
            if status == HTTPStatus.UNAUTHORIZED:
                self.send_header("WWW-Authenticate", 'Basic realm="Twilio API"')
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: tests assert on ``fake.requests`` instead."""

    return Handler
