from __future__ import annotations

import pytest
from django.test import Client
from twilio.request_validator import RequestValidator

AUTH_TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC_BASE_URL = "https://voice.example.ngrok.app"


@pytest.fixture(autouse=True)
def twilio_settings(settings):
    """Every test runs as a deployment behind a TLS-terminating proxy (ngrok)."""
    settings.TWILIO_AUTH_TOKEN = AUTH_TOKEN
    settings.TWILIO_ACCOUNT_SID = "AC" + "0" * 32
    settings.PUBLIC_BASE_URL = PUBLIC_BASE_URL
    settings.TWILIO_VALIDATE_SIGNATURES = True
    return settings


def twilio_sign(url: str, params: dict[str, str], token: str = AUTH_TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params)


class TwilioClient:
    """Posts form-encoded requests signed the way Twilio signs them: over the public URL."""

    def __init__(self, client: Client, public_base_url: str = PUBLIC_BASE_URL) -> None:
        self.client = client
        self.public_base_url = public_base_url

    def post(self, path: str, params: dict[str, str], *, signature: str | None = "auto"):
        headers = {}
        if signature == "auto":
            signature = twilio_sign(self.public_base_url + path, params)
        if signature is not None:
            headers["HTTP_X_TWILIO_SIGNATURE"] = signature
        return self.client.post(path, params, **headers)


@pytest.fixture
def twilio(client: Client) -> TwilioClient:
    return TwilioClient(client)


def call_params(call_sid: str = "CA" + "1" * 32, **extra: str) -> dict[str, str]:
    params = {
        "CallSid": call_sid,
        "AccountSid": "AC" + "0" * 32,
        "From": "+15550001111",
        "To": "+15552223333",
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
    }
    params.update(extra)
    return params
