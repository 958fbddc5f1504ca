"""Our Twilio REST wrapper, through the official client, against the fake Twilio REST server.

Everything goes over real HTTP to the fake, so these tests check what Twilio would actually
receive (form fields, repeated StatusCallbackEvent, Basic auth) and how its answers,
including errors, come back to us.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from twilio.base.exceptions import TwilioRestException

from calls.fakes.twilio_rest import FakeTwilioRest, RecordedRequest
from calls.twilio_rest import (
    TWILIO_API_ORIGIN,
    TwilioApiHttpClient,
    TwilioNotConfigured,
    TwilioRestError,
    call_complete,
    call_create,
    call_update_twiml,
    rest_client,
)
from tests.conftest import AUTH_TOKEN

ACCOUNT_SID = "AC" + "0" * 32
CALL_SID_RE = re.compile(r"^CA[0-9a-f]{32}$")
TRANSFER_TWIML = (
    '<Response><Say>Transferring you now.</Say><Dial callerId="+15550001111" answerOnBridge="true">'
    "+15557654321</Dial></Response>"
)


@pytest.fixture
def fake(settings) -> Iterator[FakeTwilioRest]:
    with FakeTwilioRest(ACCOUNT_SID, AUTH_TOKEN) as server:
        settings.TWILIO_API_BASE_URL = server.url
        settings.TWILIO_ACCOUNT_SID = ACCOUNT_SID
        settings.TWILIO_AUTH_TOKEN = AUTH_TOKEN
        yield server


def raw_request(
    fake: FakeTwilioRest,
    method: str,
    path: str,
    form: dict[str, Any] | None = None,
    *,
    token: str = AUTH_TOKEN,
) -> tuple[int, dict[str, Any]]:
    """A request without the twilio library, to check the fake's own answers."""
    data = urllib.parse.urlencode(form or {}, doseq=True).encode() if form is not None else None
    request = urllib.request.Request(fake.url + path, data=data, method=method)
    credentials = base64.b64encode(f"{ACCOUNT_SID}:{token}".encode()).decode()
    request.add_header("Authorization", f"Basic {credentials}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def calls_path(sid: str | None = None) -> str:
    base = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls"
    return f"{base}/{sid}.json" if sid else f"{base}.json"


# --- call_create ------------------------------------------------------------------------


def test_call_create_sends_the_form_twilio_expects(fake: FakeTwilioRest) -> None:
    sid = call_create(
        to="+15557654321",
        from_="+15550001111",
        url="https://voice.example.ngrok.app/outbound-call",
        status_callback="https://voice.example.ngrok.app/call-status",
        machine_detection=True,
        amd_status_callback="https://voice.example.ngrok.app/amd-status",
        time_limit=600,
    )

    assert CALL_SID_RE.match(sid)
    request = fake.wait_for_request(lambda r: r.is_create, timeout=2)
    assert request.method == "POST"
    assert request.path == calls_path()
    assert request.authorized
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.form == {
        "To": ["+15557654321"],
        "From": ["+15550001111"],
        "Url": ["https://voice.example.ngrok.app/outbound-call"],
        "StatusCallback": ["https://voice.example.ngrok.app/call-status"],
        "StatusCallbackEvent": ["initiated", "ringing", "answered", "completed"],
        "MachineDetection": ["Enable"],
        "AsyncAmd": ["true"],
        "AsyncAmdStatusCallback": ["https://voice.example.ngrok.app/amd-status"],
        "TimeLimit": ["600"],
    }
    call = fake.call(sid)
    assert (call.status, call.direction, call.to, call.from_) == (
        "queued",
        "outbound-api",
        "+15557654321",
        "+15550001111",
    )


def test_call_create_without_amd_sends_no_amd_fields(fake: FakeTwilioRest) -> None:
    sid = call_create(
        to="+15557654321",
        from_="+15550001111",
        url="https://voice.example.ngrok.app/outbound-call",
        status_callback="https://voice.example.ngrok.app/call-status",
    )

    request = fake.wait_for_request(lambda r: r.is_create, timeout=2)
    assert set(request.form) == {"To", "From", "Url", "StatusCallback", "StatusCallbackEvent"}
    assert fake.call(sid).params == request.form


@pytest.mark.parametrize(
    ("machine_detection", "amd_status_callback"),
    [(True, None), (False, "https://voice.example.ngrok.app/amd-status")],
)
def test_call_create_rejects_inconsistent_amd_arguments(
    fake: FakeTwilioRest, machine_detection: bool, amd_status_callback: str | None
) -> None:
    with pytest.raises(ValueError, match="amd_status_callback"):
        call_create(
            to="+15557654321",
            from_="+15550001111",
            url="https://voice.example.ngrok.app/outbound-call",
            status_callback="https://voice.example.ngrok.app/call-status",
            machine_detection=machine_detection,
            amd_status_callback=amd_status_callback,
        )
    assert fake.requests == []


def test_call_create_error_carries_twilios_code(fake: FakeTwilioRest) -> None:
    with pytest.raises(TwilioRestError) as caught:
        call_create(
            to="5551234567",
            from_="+15550001111",
            url="https://voice.example.ngrok.app/outbound-call",
            status_callback="https://voice.example.ngrok.app/call-status",
        )
    assert (caught.value.status, caught.value.code) == (400, 21211)
    assert caught.value.call_sid is None


# --- call_update_twiml ------------------------------------------------------------------


def test_call_update_twiml_delivers_the_twiml(fake: FakeTwilioRest) -> None:
    sid = fake.add_live_call()

    call_update_twiml(sid, TRANSFER_TWIML)

    request = fake.wait_for_request(lambda r: r.is_update(sid), timeout=2)
    assert request.authorized
    assert request.form == {"Twiml": [TRANSFER_TWIML]}
    call = fake.call(sid)
    assert call.twiml == TRANSFER_TWIML
    assert call.status == "in-progress"
    assert call.updates == [{"Twiml": [TRANSFER_TWIML]}]


@pytest.mark.parametrize("twiml", ["<Response><Dial>+1555", "<Dial>+15557654321</Dial>"])
def test_call_update_twiml_invalid_twiml_raises_12100(fake: FakeTwilioRest, twiml: str) -> None:
    sid = fake.add_live_call()
    with pytest.raises(TwilioRestError) as caught:
        call_update_twiml(sid, twiml)
    assert (caught.value.status, caught.value.code) == (400, 12100)
    assert fake.call(sid).twiml is None


def test_call_update_twiml_on_an_ended_call_raises_20404(fake: FakeTwilioRest) -> None:
    sid = fake.add_live_call()
    fake.end_call(sid)
    with pytest.raises(TwilioRestError) as caught:
        call_update_twiml(sid, TRANSFER_TWIML)
    assert (caught.value.status, caught.value.code) == (404, 20404)
    assert caught.value.call_sid == sid
    assert sid in str(caught.value)


def test_fail_next_makes_call_update_twiml_raise(fake: FakeTwilioRest) -> None:
    sid = fake.add_live_call()
    fake.fail_next(500, 20500, "Internal Server Error")

    with pytest.raises(TwilioRestError) as caught:
        call_update_twiml(sid, TRANSFER_TWIML)

    assert (caught.value.status, caught.value.code) == (500, 20500)
    assert "Internal Server Error" in str(caught.value)
    assert fake.call(sid).twiml is None
    # Only the next request fails.
    call_update_twiml(sid, TRANSFER_TWIML)
    assert fake.call(sid).twiml == TRANSFER_TWIML


# --- call_complete ----------------------------------------------------------------------


def test_call_complete_hangs_up_a_live_call(fake: FakeTwilioRest) -> None:
    sid = fake.add_live_call()

    assert call_complete(sid) is True

    request = fake.wait_for_request(lambda r: r.is_update(sid), timeout=2)
    assert request.form == {"Status": ["completed"]}
    call = fake.call(sid)
    assert call.status == "completed"
    assert call.end_time is not None


def test_call_complete_twice_returns_false_the_second_time(fake: FakeTwilioRest) -> None:
    sid = fake.add_live_call()
    assert call_complete(sid) is True
    assert call_complete(sid) is False
    assert [r.response_status for r in fake.requests] == [200, 404]


def test_call_complete_on_a_call_the_caller_already_ended(fake: FakeTwilioRest) -> None:
    sid = fake.add_live_call()
    fake.end_call(sid)
    assert call_complete(sid) is False


def test_call_complete_on_an_unknown_call_returns_false(fake: FakeTwilioRest) -> None:
    assert call_complete("CA" + "f" * 32) is False
    assert fake.requests[0].response_status == 404


def test_call_complete_still_raises_real_failures(fake: FakeTwilioRest) -> None:
    sid = fake.add_live_call()
    fake.fail_next(503, 20503, "Service Unavailable")
    with pytest.raises(TwilioRestError) as caught:
        call_complete(sid)
    assert caught.value.code == 20503
    assert fake.call(sid).status == "in-progress"


# --- credentials, configuration, transport ----------------------------------------------


def test_wrong_token_raises_20003_without_leaking_the_token(fake: FakeTwilioRest, settings) -> None:
    wrong_token = "wrong-token-fedcba9876543210"
    settings.TWILIO_AUTH_TOKEN = wrong_token
    sid = fake.add_live_call()

    with pytest.raises(TwilioRestError) as caught:
        call_complete(sid)

    error = caught.value
    assert (error.status, error.code) == (401, 20003)
    for text in (str(error), repr(error), error.message):
        assert wrong_token not in text
        assert AUTH_TOKEN not in text
    assert fake.requests[-1].authorized is False
    assert fake.call(sid).status == "in-progress"


def test_the_auth_token_is_never_logged(fake: FakeTwilioRest, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sid = fake.add_live_call()
    call_update_twiml(sid, TRANSFER_TWIML)
    call_complete(sid)
    call_complete(sid)

    assert AUTH_TOKEN not in caplog.text
    info = [r for r in caplog.records if r.name == "calls.twilio_rest" and r.levelno == logging.INFO]
    assert len(info) == 3
    assert all(sid in r.getMessage() for r in info)


@pytest.mark.parametrize("missing", ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN"])
def test_missing_settings_raise_twilio_not_configured(fake: FakeTwilioRest, settings, missing: str) -> None:
    setattr(settings, missing, "")
    with pytest.raises(TwilioNotConfigured, match=missing):
        call_complete(fake.add_live_call())
    with pytest.raises(TwilioNotConfigured):
        rest_client()
    assert fake.requests == []


def test_unreachable_api_raises_twilio_rest_error(settings) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.TWILIO_API_BASE_URL = f"http://127.0.0.1:{port}"
    with pytest.raises(TwilioRestError) as caught:
        call_update_twiml("CA" + "1" * 32, TRANSFER_TWIML)
    assert caught.value.status is None
    assert AUTH_TOKEN not in str(caught.value)


def test_http_client_rewrites_only_the_api_origin() -> None:
    path = f"/2010-04-01/Accounts/{ACCOUNT_SID}/Calls.json"
    local = TwilioApiHttpClient("http://127.0.0.1:8123/")
    assert local.rewrite(TWILIO_API_ORIGIN + path) == "http://127.0.0.1:8123" + path
    assert local.rewrite("https://api.twilio.com.evil.example/x") == "https://api.twilio.com.evil.example/x"
    assert local.rewrite("https://voice.twilio.com/v1/x") == "https://voice.twilio.com/v1/x"
    production = TwilioApiHttpClient()
    assert production.rewrite(TWILIO_API_ORIGIN + path) == TWILIO_API_ORIGIN + path


def test_rest_client_is_the_official_client_on_the_configured_origin(fake: FakeTwilioRest) -> None:
    """The fake's call resources parse with the library's own models."""
    sid = fake.add_live_call(to="+15552223333", from_="+15550001111")
    client = rest_client()
    try:
        call = client.calls(sid).fetch()
        assert (call.sid, call.status, call.direction, call.to) == (
            sid,
            "in-progress",
            "inbound",
            "+15552223333",
        )
        assert call.start_time is not None
        with pytest.raises(TwilioRestException) as caught:
            client.calls("CA" + "e" * 32).fetch()
        assert (caught.value.status, caught.value.code) == (404, 20404)
    finally:
        client.http_client.close()  # type: ignore[attr-defined]


# --- the fake itself --------------------------------------------------------------------


def test_fake_rejects_bad_credentials_like_twilio(fake: FakeTwilioRest) -> None:
    status, body = raw_request(fake, "GET", calls_path(fake.add_live_call()), token="nope")
    assert status == 401
    assert body == {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }


def test_fake_unknown_call_is_404_20404(fake: FakeTwilioRest) -> None:
    sid = "CA" + "a" * 32
    status, body = raw_request(fake, "POST", calls_path(sid), {"Status": "completed"})
    assert status == 404
    assert body == {
        "code": 20404,
        "message": f"The requested resource {calls_path(sid)} was not found",
        "more_info": "https://www.twilio.com/docs/errors/20404",
        "status": 404,
    }


@pytest.mark.parametrize(
    ("form", "code"),
    [
        ({"From": "+15550001111", "Url": "https://x.example/a"}, 21201),
        ({"To": "+15557654321", "Url": "https://x.example/a"}, 21213),
        ({"To": "+15557654321", "From": "+15550001111"}, 21205),
        (
            {
                "To": "+15557654321",
                "From": "+15550001111",
                "Url": "https://x.example/a",
                "Twiml": "<Response/>",
            },
            21205,
        ),
        ({"To": "+15557654321", "From": "+15550001111", "Url": "/relative"}, 21205),
        ({"To": "+15557654321", "From": "+15550001111", "Twiml": "<Say>hi</Say>"}, 12100),
    ],
)
def test_fake_validates_call_creation(fake: FakeTwilioRest, form: dict[str, str], code: int) -> None:
    status, body = raw_request(fake, "POST", calls_path(), form)
    assert (status, body["code"], body["status"]) == (400, code, 400)
    assert fake.calls == []


def test_fake_create_returns_a_twilio_call_resource(fake: FakeTwilioRest) -> None:
    status, body = raw_request(
        fake,
        "POST",
        calls_path(),
        {"To": "+15557654321", "From": "+15550001111", "Twiml": "<Response><Hangup/></Response>"},
    )
    assert status == 201
    assert CALL_SID_RE.match(body["sid"])
    assert body["account_sid"] == ACCOUNT_SID
    assert (body["to"], body["from"], body["status"], body["direction"]) == (
        "+15557654321",
        "+15550001111",
        "queued",
        "outbound-api",
    )
    assert body["uri"] == calls_path(body["sid"])
    assert body["api_version"] == "2010-04-01"
    assert body["date_created"].endswith("+0000")
    status, fetched = raw_request(fake, "GET", calls_path(body["sid"]))
    assert (status, fetched["sid"]) == (200, body["sid"])


def test_fake_rejects_another_accounts_path(fake: FakeTwilioRest) -> None:
    path = f"/2010-04-01/Accounts/AC{'9' * 32}/Calls.json"
    status, body = raw_request(fake, "GET", path)
    assert (status, body["code"]) == (401, 20003)


def test_wait_for_request_times_out_with_what_it_saw(fake: FakeTwilioRest) -> None:
    raw_request(fake, "GET", calls_path())
    with pytest.raises(TimeoutError, match=r"GET /2010-04-01/.*Calls\.json -> 200"):
        fake.wait_for_request(lambda r: r.method == "DELETE", timeout=0.05)


def test_wait_for_request_wakes_on_arrival(fake: FakeTwilioRest) -> None:
    sid = fake.add_live_call()
    timer = threading.Timer(0.05, call_complete, args=(sid,))
    timer.start()
    try:
        request = fake.wait_for_request(lambda r: r.value("Status") == "completed", timeout=5)
    finally:
        timer.join()
    assert request.call_sid == sid


def test_await_request_from_asyncio(fake: FakeTwilioRest) -> None:
    sid = fake.add_live_call()

    async def scenario() -> RecordedRequest:
        waiting = asyncio.create_task(fake.await_request(lambda r: r.is_update(sid), timeout=5))
        await asyncio.sleep(0)
        await asyncio.to_thread(call_update_twiml, sid, TRANSFER_TWIML)
        return await waiting

    request = asyncio.run(scenario())
    assert request.value("Twiml") == TRANSFER_TWIML


def test_await_request_times_out(fake: FakeTwilioRest) -> None:
    async def scenario() -> None:
        await fake.await_request(lambda r: False, timeout=0.05)

    with pytest.raises(TimeoutError, match="no matching Twilio REST request"):
        asyncio.run(scenario())


def test_fake_stops_answering_after_stop() -> None:
    fake = FakeTwilioRest(ACCOUNT_SID, AUTH_TOKEN).start()
    url = fake.url
    fake.stop()
    with pytest.raises(OSError):
        urllib.request.urlopen(url + calls_path(), timeout=2)


def test_twilio_rest_error_pickles() -> None:
    import pickle

    error = TwilioRestError("hang up", "Authenticate", status=401, code=20003, call_sid="CA" + "1" * 32)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.status, copy.code, copy.call_sid, str(copy)) == (401, 20003, error.call_sid, str(error))
