"""The first-run system checks (calls/checks.py): each names what is missing and how to fix it."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.core.checks import run_checks

from tests.test_settings import start_django

ROOT = Path(__file__).resolve().parent.parent
OPENAI_KEY = "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z"
TWILIO_TOKEN = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def configured(settings):
    """A fully configured development setup: no check has anything to say."""
    settings.OPENAI_API_KEY = OPENAI_KEY
    settings.OPENAI_REALTIME_URL = "wss://api.openai.com/v1/realtime"
    settings.TWILIO_AUTH_TOKEN = TWILIO_TOKEN
    settings.TWILIO_ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
    settings.PUBLIC_BASE_URL = "https://f00d.ngrok-free.app"
    settings.DEBUG = True
    return settings


def warnings() -> dict[str, str]:
    """The project's warnings by id, with their hints (Django's own checks left out)."""
    return {m.id: m.hint for m in run_checks() if m.id and m.id.startswith("voiceagent.")}


@pytest.fixture
def superuser(db):
    get_user_model().objects.create_user("admin", password="pw-123456", is_staff=True, is_superuser=True)


def test_a_configured_setup_has_no_warnings(configured, superuser):
    assert warnings() == {}


def test_missing_openai_key_says_calls_use_the_stand_in(configured, superuser):
    configured.OPENAI_API_KEY = ""
    configured.OPENAI_STANDIN = True
    [message] = [m for m in run_checks() if m.id == "voiceagent.W001"]
    assert "answered by the local stand-in" in message.msg
    assert "https://platform.openai.com/api-keys" in message.hint


def test_missing_openai_key_in_production_says_calls_fail(configured, superuser):
    configured.OPENAI_API_KEY = ""
    configured.OPENAI_STANDIN = False
    [message] = [m for m in run_checks() if m.id == "voiceagent.W001"]
    assert "every call fails" in message.msg


def test_malformed_openai_key_is_reported_without_showing_it(configured, superuser):
    configured.OPENAI_API_KEY = "pk-live-Zz9Yy8Xx7Ww6Vv5"
    [message] = [m for m in run_checks() if m.id == "voiceagent.W002"]
    assert "Zz9Yy8" not in message.msg + message.hint


def test_any_key_goes_for_another_realtime_endpoint(configured, superuser):
    configured.OPENAI_API_KEY = "local-proxy-key"
    configured.OPENAI_REALTIME_URL = "ws://127.0.0.1:8765/v1/realtime"
    assert warnings() == {}


def test_missing_twilio_token_says_webhooks_are_refused(configured, superuser):
    configured.TWILIO_AUTH_TOKEN = ""
    [message] = [m for m in run_checks() if m.id == "voiceagent.W003"]
    assert "refused" in message.msg
    assert "TWILIO_AUTH_TOKEN" in message.hint


@pytest.mark.parametrize("token", ["x", "test-auth-token-0123456789abcdef", TWILIO_TOKEN + "0"])
def test_malformed_twilio_token(configured, superuser, token):
    configured.TWILIO_AUTH_TOKEN = token
    assert list(warnings()) == ["voiceagent.W004"]


@pytest.mark.parametrize(("sid", "expected"), [("", "voiceagent.W008"), ("AC123", "voiceagent.W009")])
def test_missing_or_malformed_account_sid(configured, superuser, sid, expected):
    configured.TWILIO_ACCOUNT_SID = sid
    assert list(warnings()) == [expected]


@pytest.mark.parametrize(
    "url", ["http://localhost:8000", "http://127.0.0.1:8000", "https://192.168.1.20", "http://[::1]:8000"]
)
def test_public_base_url_twilio_cannot_reach(configured, superuser, url):
    configured.PUBLIC_BASE_URL = url
    found = warnings()
    assert list(found) == ["voiceagent.W005"]
    assert "ngrok http 8000" in found["voiceagent.W005"]


def test_public_base_url_must_be_https_in_production(configured, superuser):
    configured.PUBLIC_BASE_URL = "http://voice.example.com"
    assert warnings() == {}  # DEBUG: a plain-HTTP tunnel is fine for trying things out
    configured.DEBUG = False
    assert list(warnings()) == ["voiceagent.W006"]


@pytest.mark.django_db
def test_no_superuser_yet(configured):
    assert warnings() == {"voiceagent.W007": "Create one: .venv/bin/python manage.py createsuperuser"}


def test_a_fresh_checkout_is_told_what_to_set(tmp_path):
    result = start_django(DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}")
    assert result.returncode == 0, result.stderr
    for warning in ("voiceagent.W001", "voiceagent.W003", "voiceagent.W005"):
        assert warning in result.stderr
    assert "voiceagent.W007" not in result.stderr  # nothing migrated yet: no word on superusers
    assert not (tmp_path / "db.sqlite3").exists()  # and no empty database file left behind


@pytest.mark.parametrize(
    "database_url",
    ["sqlite:///{tmp}/empty.sqlite3", "postgres://nobody@127.0.0.1:1/voiceagent"],
    ids=["before-migrate", "unreachable"],
)
def test_superuser_check_is_quiet_when_it_cannot_tell(tmp_path, database_url):
    (tmp_path / "empty.sqlite3").touch()
    result = start_django(DATABASE_URL=database_url.format(tmp=tmp_path))
    assert result.returncode == 0, result.stderr
    assert "voiceagent.W001" in result.stderr
    assert "voiceagent.W007" not in result.stderr
    assert "Traceback" not in result.stderr
