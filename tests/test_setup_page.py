"""The root page (what is configured, the URLs to paste into Twilio) and the empty call list."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from django.core import checks

from calls.models import Agent, Call

pytestmark = pytest.mark.django_db

SECRET_TOKEN = "twilio-token-that-must-not-leak-7f3a"
SECRET_KEY = "sk-openai-key-that-must-not-leak-91c2"
SECRET_SID = "AC" + "9f" * 16


def test_anonymous_visitor_is_sent_to_the_admin_login(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/"


def test_signed_in_non_staff_user_is_sent_to_the_admin_login(client):
    user = get_user_model().objects.create_user("caller", password="pw-123456")
    client.force_login(user)
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == "/admin/login/?next=/"


def test_staff_see_the_exact_twilio_urls_for_public_base_url(staff_client, settings):
    settings.PUBLIC_BASE_URL = "https://abc123.ngrok-free.app"
    response = staff_client.get("/")
    assert response.status_code == 200
    body = response.content.decode()
    assert '<code id="va-webhook-url">https://abc123.ngrok-free.app/incoming-call</code>, HTTP POST' in body
    assert '<code id="va-status-url">https://abc123.ngrok-free.app/call-status</code>, HTTP POST' in body
    assert "manage.py connect_number +15551234567" in body
    assert "make demo" in body
    for link in ("/admin/", "/admin/live/", "/admin/phone/", "/admin/calls/call/"):
        assert f'href="{link}"' in body
    assert "not set to a public URL" not in body


def test_staff_never_see_secret_values(staff_client, settings):
    settings.TWILIO_AUTH_TOKEN = SECRET_TOKEN
    settings.OPENAI_API_KEY = SECRET_KEY
    settings.TWILIO_ACCOUNT_SID = SECRET_SID
    body = staff_client.get("/").content.decode()
    for secret in (SECRET_TOKEN, SECRET_KEY, SECRET_SID, SECRET_TOKEN[:12], SECRET_KEY[-12:]):
        assert secret not in body
    assert body.count("<td>set</td>") == 3


def test_missing_configuration_is_listed(staff_client, settings):
    settings.TWILIO_AUTH_TOKEN = ""
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_STANDIN = True  # DEBUG, as `make run`
    settings.TWILIO_ACCOUNT_SID = ""
    settings.PUBLIC_BASE_URL = "http://localhost:8000"
    get_user_model().objects.filter(username="ops").update(is_superuser=False)
    Agent.objects.all().delete()
    response = staff_client.get("/")
    body = response.content.decode()
    assert [item.name for item in response.context["missing"]] == [
        "OPENAI_API_KEY",
        "TWILIO_AUTH_TOKEN",
        "TWILIO_ACCOUNT_SID",
        "PUBLIC_BASE_URL",
        "Superuser",
    ]
    assert "the local stand-in is in use" in body
    assert "No agent yet" in body
    # Without a public URL, the URLs come from the request's host, with a note.
    assert '<code id="va-webhook-url">http://testserver/incoming-call</code>' in body
    assert "PUBLIC_BASE_URL is not set to a public URL" in body


def test_plain_http_public_url_is_flagged(staff_client, settings):
    settings.PUBLIC_BASE_URL = "http://voice.example.com"
    response = staff_client.get("/")
    assert "PUBLIC_BASE_URL" in [item.name for item in response.context["missing"]]
    assert "not https" in response.content.decode()


def test_agents_and_their_numbers_are_listed(staff_client):
    Agent.objects.create(name="Sales line", phone_number="+15557654321", instructions="Sell.")
    body = staff_client.get("/").content.decode()
    assert "Sales line" in body and "+15557654321" in body
    assert "Default agent" in body and "default agent (any number)" in body


def test_our_system_check_warnings_are_shown(staff_client):
    def warn(app_configs, **kwargs):
        return [
            checks.Warning("PUBLIC_BASE_URL is http", hint="Use https.", id="voiceagent.W999"),
            checks.Warning("someone else's problem", id="otherapp.W001"),
        ]

    checks.register(warn)
    try:
        body = staff_client.get("/").content.decode()
    finally:
        checks.registry.registry.registered_checks.discard(warn)
    assert "voiceagent.W999" in body and "Use https." in body
    assert "otherapp.W001" not in body


def test_empty_call_list_says_how_to_make_a_first_call(staff_client):
    body = staff_client.get("/admin/calls/call/").content.decode()
    assert 'id="va-first-call"' in body
    assert "make demo" in body
    assert 'href="/admin/phone/"' in body
    assert "manage.py connect_number" in body


def test_call_list_with_calls_has_no_first_call_hint(staff_client):
    Call.objects.create(call_sid="CA" + "7" * 32, from_number="+15550001111")
    body = staff_client.get("/admin/calls/call/", {"q": "nothing matches this"}).content.decode()
    assert 'id="va-first-call"' not in body


def test_a_production_server_without_a_key_says_calls_fail(staff_client, settings):
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_STANDIN = False
    body = staff_client.get("/").content.decode()
    assert "every call fails" in body and "stand-in is in use" not in body
