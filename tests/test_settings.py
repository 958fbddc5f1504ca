"""Malformed environment variables stop start-up with a message naming the variable."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from calls.processes import PRODUCTION_SERVER, asgi_server_command
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
        ("OPENAI_AUDIO_APPEND_MS", "30"),
        ("WORKER_ROUTE", "w/1"),
        ("WORKER_ROUTE", "x" * 33),
        ("MAX_CONCURRENT_CALLS", "abc"),
        ("DATABASE_URL", "nonsense"),
    ],
)
def test_malformed_variable_fails_start_up_with_one_line_naming_it(name, value):
    result = start_django(**{name: value})
    assert result.returncode == 1
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith(f"Configuration error: Environment variable {name}=")
    assert result.stderr.rstrip().endswith("(set in the environment).")


def test_production_requires_a_secret_key():
    result = start_django(DEBUG="false", SECRET_KEY="")
    assert result.returncode == 1
    assert result.stderr.startswith("Configuration error: Environment variable SECRET_KEY must be set")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("server", [PRODUCTION_SERVER, "daphne"])
def test_the_server_stops_with_one_line_on_a_malformed_variable(server):
    environment = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result = subprocess.run(
        asgi_server_command(server, port=0),
        cwd=ROOT,
        env=environment | {"MAX_CONCURRENT_CALLS": "abc"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "Configuration error: Environment variable MAX_CONCURRENT_CALLS='abc' is invalid: "
        "expected a whole number (set in the environment)."
    )


def test_errors_say_when_the_value_came_from_dot_env(tmp_path, monkeypatch):
    monkeypatch.setattr(env, "_from_dot_env", set())
    monkeypatch.setenv("VOICE_TEST_LIMIT", "")  # recorded as unset: removed again after the test
    monkeypatch.delenv("VOICE_TEST_LIMIT")
    (tmp_path / ".env").write_text("VOICE_TEST_LIMIT=lots\n")
    env.read_dot_env(tmp_path / ".env")
    with pytest.raises(env.ConfigurationError, match=r"expected a whole number \(set in \.env\)"):
        env.env_int("VOICE_TEST_LIMIT", 1)


def test_database_passwords_are_not_echoed():
    result = start_django(DATABASE_URL="postgres://voice:hunter2-secret@db:99999/voice")
    assert result.returncode == 1
    assert "hunter2-secret" not in result.stderr
    assert "postgres://voice:<hidden>@db:99999/voice" in result.stderr


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


# --- the suite never reads the developer's .env or shell (tests/settings.py) ---------------

# A filled-in .env as README's ngrok section leaves it, and the same values exported in the shell:
# every variable .env.example documents, each valid and different from its default.
DEVELOPER = {
    "DJANGO_READ_DOT_ENV": "true",
    "SECRET_KEY": "Zq8rV2xN5mK7pL3wT9yB4cF6hJ1sD0gU-aE8iO2uY5tR7eW3qA1zX9cV4bN6mM",
    "DEBUG": "false",
    "ALLOWED_HOSTS": "voice.example.com",
    "USE_X_FORWARDED_PROTO": "true",
    "DATABASE_URL": "postgres://dev:secret@127.0.0.1:5432/dev",
    "REDIS_URL": "redis://127.0.0.1:6379/3",
    "MEDIA_ROOT": "/srv/voice/media",
    "TIME_ZONE": "Europe/Berlin",
    "LOG_LEVEL": "DEBUG",
    "SECURE_SSL_REDIRECT": "true",
    "SESSION_COOKIE_SECURE": "true",
    "CSRF_COOKIE_SECURE": "true",
    "SECURE_HSTS_SECONDS": "3600",
    "SECURE_HSTS_INCLUDE_SUBDOMAINS": "false",
    "SECURE_HSTS_PRELOAD": "false",
    "MAX_CONCURRENT_CALLS": "2",
    "MASK_PHONE_NUMBERS": "true",
    "PUBLIC_BASE_URL": "https://f00d-203-0-113-7.ngrok-free.app",
    "OPENAI_API_KEY": "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7cDe0fGh3iJk6lMn9oPq2rSt5uVw8x",
    "OPENAI_REALTIME_URL": "wss://realtime-proxy.example.com/v1/realtime",
    "OPENAI_REALTIME_MODEL": "gpt-realtime",
    "OPENAI_SESSION_MAX_SECONDS": "600",
    "OPENAI_PRECONNECT": "false",
    "OPENAI_PRECONNECT_TTL": "5",
    "OPENAI_AUDIO_APPEND_MS": "60",
    "WORKER_ROUTE": "w1",
    "VOICE_AGENT_PRICES_JSON": '{"gpt-realtime": {"text_in": 1}}',
    "RECORDING_WORK_DIR": "/srv/voice/recordings",
    "VOICE_AGENT_TOOLS": "myapp.tools",
    "TWILIO_ACCOUNT_SID": "AC0123456789abcdef0123456789abcdef",
    "TWILIO_AUTH_TOKEN": "0123456789abcdef0123456789abcdef",
    "TWILIO_VALIDATE_SIGNATURES": "false",
    "TWILIO_API_BASE_URL": "https://twilio-proxy.example.com",
    "STREAM_TOKEN_TTL_SECONDS": "30",
    "ANALYSIS_MODEL": "gpt-5",
    "OPENAI_BASE_URL": "https://openai-proxy.example.com/v1",
    "ANALYSIS_TIMEOUT_SECONDS": "15",
    "FOLLOW_UP_EMAIL": "staff@example.com",
    "EMAIL_BACKEND": "django.core.mail.backends.smtp.EmailBackend",
    "EMAIL_HOST": "smtp.example.com",
    "DEFAULT_FROM_EMAIL": "calls@example.com",
}

# Prints a settings module's values and the environment it leaves for the processes it starts.
SNAPSHOT = """
import importlib, json, os, sys
module = importlib.import_module(sys.argv[1])
values = {name: repr(getattr(module, name)) for name in dir(module) if name.isupper() and name[0] != "_"}
print(json.dumps({"settings": values, "environ": dict(os.environ)}))
"""


def snapshot(project: Path, module: str, environment: dict[str, str]) -> dict[str, dict[str, str]]:
    result = subprocess.run(
        [sys.executable, "-c", SNAPSHOT, module],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_suite_ignores_the_developers_dot_env_and_shell(tmp_path):
    """README: `cp .env.example .env`, then PUBLIC_BASE_URL=<your ngrok URL>. Neither that file nor
    the same values exported in the shell may change the settings the tests run with, nor those of
    the servers the tests start (they inherit the environment tests/settings.py leaves)."""
    documented = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert set(DEVELOPER) == documented, "DEVELOPER must fill in every variable of .env.example"
    project = tmp_path / "project"
    shutil.copytree(ROOT / "voiceagent", project / "voiceagent", ignore=shutil.ignore_patterns("__pycache__"))
    (project / "tests").mkdir()
    for name in ("__init__.py", "settings.py"):
        shutil.copy(ROOT / "tests" / name, project / "tests" / name)
    shutil.copy(ROOT / ".env.example", project / ".env.example")
    bare = {"PATH": os.environ.get("PATH", "")}
    fresh_checkout = snapshot(project, "voiceagent.settings", bare)["settings"]

    (project / ".env").write_text("".join(f"{name}={value}\n" for name, value in DEVELOPER.items()))
    # DATABASE_URL is the one variable the suite takes from the shell (`make test`'s PostgreSQL pass).
    shell = bare | {name: value for name, value in DEVELOPER.items() if name != "DATABASE_URL"}
    assert snapshot(project, "voiceagent.settings", shell)["settings"] != fresh_checkout  # the setup bites

    tests = snapshot(project, "tests.settings", shell)
    assert differences(tests["settings"], fresh_checkout) == {}
    server = snapshot(project, "voiceagent.settings", tests["environ"])
    assert differences(server["settings"], fresh_checkout) == {}


def differences(seen: dict[str, str], expected: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
    return {
        name: (seen.get(name), expected.get(name))
        for name in seen.keys() | expected.keys()
        if seen.get(name) != expected.get(name)
    }
