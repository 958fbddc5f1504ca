"""Production settings: `manage.py check --deploy` is clean, and HTTPS hardening never breaks
Twilio's webhooks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import call_params

ROOT = Path(__file__).resolve().parent.parent

# What deploy/README.md's "Production settings and operations" section documents.
PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": "k3L9-q8vXr2Zt7mWp4Yb6Nc1Hd5Fs0Jg-Ua8Ve3Rw9Ti2Oy7Pl4Qk6Mn1Bz5Cx0",
    "ALLOWED_HOSTS": "voice.example.com",
    "PUBLIC_BASE_URL": "https://voice.example.com",
    "USE_X_FORWARDED_PROTO": "true",
    "DATABASE_URL": "sqlite:///:memory:",
    # A phone line in production has its keys (calls/checks.py warns otherwise).
    "OPENAI_API_KEY": "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4z",
    "TWILIO_ACCOUNT_SID": "AC0123456789abcdef0123456789abcdef",
    "TWILIO_AUTH_TOKEN": "0123456789abcdef0123456789abcdef",
}
HARDENING = [
    "SECURE_SSL_REDIRECT",
    "SESSION_COOKIE_SECURE",
    "CSRF_COOKIE_SECURE",
    "SECURE_HSTS_SECONDS",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS",
    "SECURE_HSTS_PRELOAD",
]


def django(*args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    # Start from a clean slate: none of these may leak in from the developer's environment.
    environment = {
        k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE" and k not in HARDENING
    }
    environment.update(variables)
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60
    )


def hardening(**variables: str) -> dict[str, object]:
    code = (
        "import json, django; from django.conf import settings; django.setup(); "
        f"print(json.dumps({{name: getattr(settings, name) for name in {HARDENING!r}}}))"
    )
    result = django("-c", code, DJANGO_SETTINGS_MODULE="voiceagent.settings", **variables)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_check_deploy_is_clean_with_the_documented_production_settings():
    result = django("manage.py", "check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stderr
    assert "no issues" in result.stdout


def test_production_defaults_are_secure():
    assert hardening(**PRODUCTION) == {
        "SECURE_SSL_REDIRECT": True,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_SECONDS": 31536000,
        "SECURE_HSTS_INCLUDE_SUBDOMAINS": True,
        "SECURE_HSTS_PRELOAD": True,
    }


def test_development_defaults_serve_plain_http():
    assert not any(hardening(DEBUG="true").values())


def test_each_switch_can_be_turned_off_and_empty_means_default():
    values = hardening(
        **PRODUCTION, SECURE_HSTS_PRELOAD="false", SECURE_HSTS_SECONDS="3600", SECURE_SSL_REDIRECT=""
    )
    assert values["SECURE_HSTS_PRELOAD"] is False
    assert values["SECURE_HSTS_SECONDS"] == 3600
    assert values["SECURE_SSL_REDIRECT"] is True


def test_malformed_switch_fails_start_up_naming_it():
    result = django("manage.py", "check", **PRODUCTION, SECURE_SSL_REDIRECT="sometimes")
    assert result.returncode != 0
    assert "Environment variable SECURE_SSL_REDIRECT=" in result.stderr


@pytest.mark.django_db
def test_twilio_webhooks_are_never_redirected_to_https(twilio, settings):
    """A 301 would lose Twilio's POST: the webhooks are exempt, the admin is not."""
    settings.SECURE_SSL_REDIRECT = True
    for path, params in [
        ("/incoming-call", call_params()),
        ("/call-status", call_params(CallStatus="completed")),
        ("/stream-status", call_params(StreamEvent="stream-started")),
        ("/amd-status", call_params(AnsweredBy="human")),
        ("/stream-ended", call_params()),
    ]:
        assert twilio.post(path, params).status_code == 200, path
    response = twilio.client.get("/admin/login/")
    assert response.status_code == 301 and response["Location"].startswith("https://")


@pytest.mark.django_db
def test_behind_a_proxy_forwarded_https_is_not_redirected(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    assert client.get("/admin/login/", HTTP_X_FORWARDED_PROTO="https").status_code == 200
