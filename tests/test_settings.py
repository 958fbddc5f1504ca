"""Malformed environment variables stop start-up with a message naming the variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from voiceagent import env

ROOT = Path(__file__).resolve().parent.parent


def start_django(**variables: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    environment.update(variables)
    return subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DEBUG", "maybe"),
        ("PUBLIC_BASE_URL", "voice.example.com"),
        ("PUBLIC_BASE_URL", "https://voice.example.com/incoming-call"),
        ("DATABASE_URL", "nosuchdb://x/y"),
        ("REDIS_URL", "http://127.0.0.1:6379"),
        ("OPENAI_REALTIME_URL", "https://api.openai.com/v1/realtime"),
        ("STREAM_TOKEN_TTL_SECONDS", "soon"),
        ("TWILIO_VALIDATE_SIGNATURES", "nope"),
        ("OPENAI_PRECONNECT", "sometimes"),
        ("OPENAI_PRECONNECT_TTL", "soon"),
        ("OPENAI_PRECONNECT_TTL", "0"),
        ("WORKER_ROUTE", "w/1"),
        ("WORKER_ROUTE", "x" * 33),
    ],
)
def test_malformed_variable_fails_start_up_naming_it(name, value):
    result = start_django(**{name: value})
    assert result.returncode != 0
    assert f"Environment variable {name}=" in result.stderr
    assert "ImproperlyConfigured" in result.stderr


def test_production_requires_a_secret_key():
    result = start_django(DEBUG="false", SECRET_KEY="")
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


def test_defaults_start_cleanly():
    result = start_django()
    assert result.returncode == 0, result.stderr


def test_secret_values_are_not_echoed(monkeypatch):
    monkeypatch.setenv("MY_API_KEY_LIMIT", "sk-very-secret")
    with pytest.raises(ImproperlyConfigured) as excinfo:
        env.env_int("MY_API_KEY_LIMIT", 1)
    assert "sk-very-secret" not in str(excinfo.value)


@pytest.mark.parametrize(("raw", "expected"), [("15", 15.0), ("0.25", 0.25), ("", 3.0)])
def test_floats(monkeypatch, raw, expected):
    monkeypatch.setenv("SECONDS", raw)
    assert env.env_float("SECONDS", 3.0, minimum=0.1) == expected


@pytest.mark.parametrize("raw", ["nan", "inf", "0.05"])
def test_floats_out_of_range_fail(monkeypatch, raw):
    monkeypatch.setenv("SECONDS", raw)
    with pytest.raises(ImproperlyConfigured, match="SECONDS"):
        env.env_float("SECONDS", 3.0, minimum=0.1)


def test_public_base_url_is_normalised(monkeypatch):
    monkeypatch.setenv("PUBLIC_BASE_URL", "https://abc.ngrok.app/")
    assert env.env_url("PUBLIC_BASE_URL", "", schemes=("https",), origin_only=True) == "https://abc.ngrok.app"


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("off", False), ("TRUE", True), ("", False)])
def test_booleans(monkeypatch, raw, expected):
    monkeypatch.setenv("FLAG", raw)
    assert env.env_bool("FLAG", not expected) is expected


def test_env_example_documents_every_variable_settings_reads():
    import re

    settings_source = (ROOT / "voiceagent" / "settings.py").read_text()
    read = set(re.findall(r'env_\w+\(\s*"([A-Z_]+)"', settings_source))
    documented = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert read - documented == set()
