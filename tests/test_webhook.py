from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from datetime import timedelta

import pytest
from asgiref.sync import iscoroutinefunction
from django.http import HttpResponse
from django.utils import timezone

from calls import preconnect, services
from calls.models import Agent, Call, CallStatus, EndedReason
from calls.signatures import twilio_signed
from tests.conftest import PUBLIC_BASE_URL, call_params, twilio_sign

pytestmark = pytest.mark.django_db


def parse_stream(response) -> tuple[ET.Element, dict[str, str]]:
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/xml")
    root = ET.fromstring(response.content)
    assert root.tag == "Response"
    stream = root.find("./Connect/Stream")
    assert stream is not None, response.content
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    return stream, params


def test_signed_webhook_answers_connect_stream_and_records_call(twilio):
    response = twilio.post("/incoming-call", call_params())

    stream, params = parse_stream(response)
    assert stream.get("url") == "wss://voice.example.ngrok.app/media-stream"
    assert "?" not in stream.get("url")
    assert stream.get("statusCallback") == f"{PUBLIC_BASE_URL}/stream-status"
    assert params["call_sid"] == "CA" + "1" * 32
    assert len(params["token"]) >= 32
    call = Call.objects.get()
    assert call.call_sid == "CA" + "1" * 32
    assert (call.from_number, call.to_number, call.direction) == ("+15550001111", "+15552223333", "inbound")
    assert call.status == CallStatus.RINGING
    assert call.agent is not None and call.agent.name == "Default agent"
    assert call.model == call.agent.effective_model and call.voice == "marin"
    # Only a hash of the token is stored.
    assert params["token"] not in call.stream_token_hash


def test_stream_url_follows_public_scheme(twilio, settings):
    settings.PUBLIC_BASE_URL = "http://127.0.0.1:8000"
    twilio.public_base_url = settings.PUBLIC_BASE_URL
    stream, _ = parse_stream(twilio.post("/incoming-call", call_params()))
    assert stream.get("url") == "ws://127.0.0.1:8000/media-stream"


def test_signature_over_internal_url_is_rejected_behind_proxy(twilio):
    # What a naive implementation validates: the URL Django sees, not the one Twilio signed.
    params = call_params()
    bad = twilio_sign("http://testserver/incoming-call", params)
    response = twilio.post("/incoming-call", params, signature=bad)
    assert response.status_code == 403
    assert not Call.objects.exists()


@pytest.mark.parametrize("signature", [None, "", "bm90IGEgc2lnbmF0dXJl"])
def test_missing_or_invalid_signature_is_forbidden_and_stores_nothing(twilio, signature, caplog):
    response = twilio.post("/incoming-call", call_params(), signature=signature)
    assert response.status_code == 403
    assert not Call.objects.exists()
    assert "X-Twilio-Signature" in caplog.text


def test_tampered_parameter_breaks_signature(twilio):
    params = call_params()
    signature = twilio_sign(PUBLIC_BASE_URL + "/incoming-call", params)
    params["From"] = "+19999999999"
    assert twilio.post("/incoming-call", params, signature=signature).status_code == 403


def test_signature_checking_can_be_disabled_explicitly(twilio, settings):
    settings.TWILIO_VALIDATE_SIGNATURES = False
    response = twilio.post("/incoming-call", call_params(), signature=None)
    parse_stream(response)


def test_missing_auth_token_refuses_signed_requests(twilio, settings):
    settings.TWILIO_AUTH_TOKEN = ""
    assert twilio.post("/incoming-call", call_params()).status_code == 403


@pytest.mark.parametrize("field", ["CallSid", "AccountSid", "From", "To"])
def test_missing_required_field_is_bad_request(twilio, field):
    params = call_params()
    del params[field]
    response = twilio.post("/incoming-call", params)
    assert response.status_code == 400
    assert field in response.content.decode()
    assert not Call.objects.exists()


def test_unknown_extra_parameters_are_accepted(twilio):
    params = call_params(StirVerstat="TN-Validation-Passed-A", FromCity="BOSTON", BrandNewParam="x")
    parse_stream(twilio.post("/incoming-call", params))


def test_get_is_not_allowed(client):
    assert client.get("/incoming-call").status_code == 405


def test_trailing_slash_is_not_a_redirect(twilio):
    assert twilio.post("/incoming-call/", call_params()).status_code == 404


def test_repeated_webhook_keeps_one_call_and_only_newest_token(twilio):
    _, first = parse_stream(twilio.post("/incoming-call", call_params()))
    _, second = parse_stream(twilio.post("/incoming-call", call_params()))
    assert Call.objects.count() == 1
    assert first["token"] != second["token"]
    call_sid = first["call_sid"]
    assert services.stream_token_redeem(call_sid=call_sid, token=first["token"]) is None
    assert services.stream_token_redeem(call_sid=call_sid, token=second["token"]) is not None


def test_stream_token_is_single_use_and_bound_to_call(twilio):
    _, params = parse_stream(twilio.post("/incoming-call", call_params()))
    assert services.stream_token_redeem(call_sid="CA" + "2" * 32, token=params["token"]) is None
    call = services.stream_token_redeem(call_sid=params["call_sid"], token=params["token"])
    assert call is not None and call.stream_token_used_at is not None
    assert services.stream_token_redeem(call_sid=params["call_sid"], token=params["token"]) is None


def test_expired_stream_token_is_refused(twilio):
    _, params = parse_stream(twilio.post("/incoming-call", call_params()))
    Call.objects.update(stream_token_expires_at=timezone.now() - timedelta(seconds=1))
    assert services.stream_token_redeem(call_sid=params["call_sid"], token=params["token"]) is None


def test_agent_is_chosen_by_dialled_number(twilio):
    sales = Agent.objects.create(name="Sales", phone_number="+15552223333", instructions="Sell.")
    Agent.objects.create(name="Support", phone_number="+15554445555", instructions="Help.")
    parse_stream(twilio.post("/incoming-call", call_params()))
    assert Call.objects.get().agent == sales


def test_disabled_number_agent_falls_back_to_default(twilio):
    Agent.objects.create(name="Sales", phone_number="+15552223333", instructions="x", enabled=False)
    parse_stream(twilio.post("/incoming-call", call_params()))
    assert Call.objects.get().agent.name == "Default agent"


def test_no_agent_says_sorry_and_hangs_up(twilio):
    Agent.objects.update(enabled=False)
    response = twilio.post("/incoming-call", call_params())
    assert response.status_code == 200
    root = ET.fromstring(response.content)
    assert root.find("Say") is not None and root.find("Hangup") is not None
    assert root.find("Connect") is None
    call = Call.objects.get()
    assert call.ended_reason == EndedReason.NO_AGENT
    assert "No enabled agent" in call.error


@pytest.fixture
def preconnects(settings, monkeypatch) -> list[tuple[str, object]]:
    """What the webhook asked the pre-connect registry to open (nothing is dialled here)."""
    settings.OPENAI_PRECONNECT = True
    started: list[tuple[str, object]] = []
    monkeypatch.setattr(preconnect, "start", lambda call_sid, agent: started.append((call_sid, agent)))
    return started


def test_answered_call_starts_its_openai_session_with_the_agent_config(twilio, preconnects):
    _, params = parse_stream(twilio.post("/incoming-call", call_params()))
    [(call_sid, agent)] = preconnects
    assert call_sid == params["call_sid"]
    assert agent == services.agent_config(Call.objects.get())


@pytest.mark.parametrize("refusal", ["no agent", "busy", "bad signature", "bad request", "disabled"])
def test_only_an_answered_call_is_preconnected(twilio, preconnects, settings, refusal):
    params = call_params()
    signature = "auto"
    if refusal == "no agent":
        Agent.objects.update(enabled=False)
    elif refusal == "busy":
        settings.MAX_CONCURRENT_CALLS = 1
        Call.objects.create(call_sid="CA" + "9" * 32, account_sid="AC" + "0" * 32, started_at=timezone.now())
    elif refusal == "bad signature":
        signature = "bm90IGEgc2lnbmF0dXJl"
    elif refusal == "bad request":
        del params["From"]
    else:
        settings.OPENAI_PRECONNECT = False
    response = twilio.post("/incoming-call", params, signature=signature)
    expected = {"bad signature": 403, "bad request": 400}.get(refusal, 200)
    assert response.status_code == expected
    if refusal == "busy":
        assert Call.objects.get(call_sid=params["CallSid"]).ended_reason == EndedReason.BUSY
    assert preconnects == []


def test_signature_check_guards_async_views_too(rf):
    @twilio_signed
    async def view(request):
        return HttpResponse("ok")

    assert iscoroutinefunction(view)
    params = call_params()
    signed = rf.post(
        "/incoming-call",
        params,
        HTTP_X_TWILIO_SIGNATURE=twilio_sign(PUBLIC_BASE_URL + "/incoming-call", params),
    )
    assert asyncio.run(view(signed)).status_code == 200
    assert asyncio.run(view(rf.post("/incoming-call", params))).status_code == 403
