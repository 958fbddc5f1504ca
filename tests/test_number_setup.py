"""manage.py connect_number against the fake Twilio REST API, a fake ngrok agent and, for the
proof that Twilio's path works, a real running server."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from calls import number_setup
from calls.fakes.ngrok import FakeNgrokApi
from calls.fakes.twilio_rest import FakeTwilioRest
from calls.models import Call
from tests.conftest import AUTH_TOKEN

ACCOUNT_SID = "AC" + "0" * 32
NUMBER = "+15557654321"
# .invalid never resolves (RFC 2606): the proof fails at DNS, quickly and without a network.
PUBLIC = "https://voice-agent.invalid"
NOTHING_LISTENS = "http://127.0.0.1:9/api/tunnels"


@pytest.fixture
def fake(settings) -> Iterator[FakeTwilioRest]:
    with FakeTwilioRest(ACCOUNT_SID, AUTH_TOKEN) as server:
        settings.TWILIO_API_BASE_URL = server.url
        settings.TWILIO_ACCOUNT_SID = ACCOUNT_SID
        settings.PUBLIC_BASE_URL = PUBLIC
        yield server


@pytest.fixture
def ngrok(settings) -> Iterator[FakeNgrokApi]:
    settings.PUBLIC_BASE_URL = "http://localhost:8000"  # the development default: not public
    with FakeNgrokApi() as server:
        yield server


def connect(*args: str) -> tuple[str, CommandError | None]:
    out = io.StringIO()
    try:
        call_command("connect_number", *args, stdout=out)
    except CommandError as exc:
        return out.getvalue(), exc
    return out.getvalue(), None


def number_posts(fake: FakeTwilioRest) -> list:
    return [r for r in fake.requests if r.method == "POST" and "/IncomingPhoneNumbers/" in r.path]


def test_finds_the_number_and_sets_exactly_the_webhook_fields(fake):
    sid = fake.add_number(NUMBER)
    other = fake.add_number("+15550009999")
    out, error = connect(NUMBER, "--ngrok-api-url", NOTHING_LISTENS)

    lookup = fake.requests[0]
    assert lookup.method == "GET" and lookup.path.endswith("/IncomingPhoneNumbers.json")
    assert lookup.query["PhoneNumber"] == [NUMBER]
    assert fake.number(sid).updates == [
        {
            "VoiceUrl": [f"{PUBLIC}/incoming-call"],
            "VoiceMethod": ["POST"],
            "StatusCallback": [f"{PUBLIC}/call-status"],
            "StatusCallbackMethod": ["POST"],
        }
    ]
    assert fake.number(other).updates == []
    assert f"Public URL: {PUBLIC} (from PUBLIC_BASE_URL)" in out
    assert f"VoiceUrl: https://demo.twilio.com/welcome/voice/ -> {PUBLIC}/incoming-call" in out
    assert "StatusCallback: (empty) -> " in out
    # The number was updated, then the proof failed: .invalid does not resolve.
    assert error is not None and str(error).startswith("DNS: voice-agent.invalid does not resolve")


def test_dry_run_changes_nothing(fake):
    sid = fake.add_number(NUMBER)
    out, _ = connect(NUMBER, "--dry-run")
    assert number_posts(fake) == []
    assert fake.number(sid).fields["voice_url"] == "https://demo.twilio.com/welcome/voice/"
    assert f"VoiceUrl: https://demo.twilio.com/welcome/voice/ -> {PUBLIC}/incoming-call" in out
    assert f"Dry run: {NUMBER} ({sid}) was not changed." in out


def test_a_twiml_app_on_the_number_is_cleared_or_voice_url_would_be_ignored(fake):
    sid = fake.add_number(NUMBER, voice_application_sid="AP" + "1" * 32)
    connect(NUMBER)
    assert fake.number(sid).updates[0]["VoiceApplicationSid"] == [""]
    assert fake.number(sid).fields["voice_application_sid"] == ""


def test_a_number_on_a_sip_trunk_is_refused(fake):
    fake.add_number(NUMBER, trunk_sid="TK" + "1" * 32)
    _, error = connect(NUMBER)
    assert error is not None and "Elastic SIP Trunk" in str(error)
    assert number_posts(fake) == []


def test_unknown_number_is_a_clear_error(fake):
    fake.add_number("+15550009999")
    _, error = connect(NUMBER)
    assert error is not None
    assert str(error).startswith(f"The Twilio account {ACCOUNT_SID} has no number {NUMBER}.")
    assert number_posts(fake) == []


def test_unknown_number_exits_with_code_1(fake, tmp_path: Path):
    env = {
        # The real settings, not tests.settings (which clears the variables set here).
        **{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
        "TWILIO_API_BASE_URL": fake.url,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "PUBLIC_BASE_URL": PUBLIC,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'unused.sqlite3'}",
    }
    done = subprocess.run(
        [sys.executable, "manage.py", "connect_number", NUMBER],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 1, done.stderr
    assert f"has no number {NUMBER}" in done.stderr


def test_ngrok_url_is_used_when_public_base_url_is_unset(fake, ngrok):
    ngrok.add_tunnel("https://abc123.ngrok-free.invalid")
    sid = fake.add_number(NUMBER)
    out, _ = connect(NUMBER, "--ngrok-api-url", ngrok.url)
    assert f"Public URL: https://abc123.ngrok-free.invalid (from the ngrok agent at {ngrok.url})" in out
    assert fake.number(sid).fields["voice_url"] == "https://abc123.ngrok-free.invalid/incoming-call"
    assert fake.number(sid).fields["status_callback"] == "https://abc123.ngrok-free.invalid/call-status"


def test_ngrok_api_url_comes_from_the_environment(fake, ngrok, monkeypatch):
    ngrok.add_tunnel("https://from-env.ngrok-free.invalid")
    fake.add_number(NUMBER)
    monkeypatch.setenv("NGROK_API_URL", ngrok.url)
    out, _ = connect(NUMBER, "--dry-run")
    assert "Public URL: https://from-env.ngrok-free.invalid" in out


def test_http_only_ngrok_tunnel_is_refused(fake, ngrok):
    ngrok.add_tunnel("http://abc123.ngrok-free.invalid")
    fake.add_number(NUMBER)
    _, error = connect(NUMBER, "--ngrok-api-url", ngrok.url)
    assert error is not None and "has no https tunnel (only http://abc123.ngrok-free.invalid)" in str(error)
    assert fake.requests == []


def test_no_ngrok_agent_and_no_public_url_is_a_clear_error(fake, settings):
    settings.PUBLIC_BASE_URL = "http://localhost:8000"
    _, error = connect(NUMBER, "--ngrok-api-url", NOTHING_LISTENS)
    assert error is not None and f"no ngrok agent answers at {NOTHING_LISTENS}" in str(error)
    assert fake.requests == []


def test_plain_http_public_base_url_is_refused(fake, settings):
    settings.PUBLIC_BASE_URL = "http://voice.example.com"
    fake.add_number(NUMBER)
    _, error = connect(NUMBER)
    assert error is not None and "not https" in str(error)
    assert fake.requests == []


# --- the proof, against a real server ------------------------------------------------------


def test_proof_reaches_the_running_server_and_creates_no_call(live):
    check = number_setup.path_check(base_url=live.url, auth_token=AUTH_TOKEN)
    assert check.ok, check.message
    assert (
        check.message
        == f"Twilio's requests reach this server: a signed POST {live.url}/call-status was accepted."
    )
    assert check.warnings == []  # the wrongly signed twin was refused: the server checks signatures
    assert not Call.objects.exists()


def test_proof_reports_a_public_url_the_server_does_not_sign_against(live, start_server):
    server = start_server(PUBLIC_BASE_URL="https://elsewhere.example", ALLOWED_HOSTS="127.0.0.1")
    check = number_setup.path_check(base_url=server.url, auth_token=AUTH_TOKEN)
    assert not check.ok
    assert check.message.startswith(f"HTTP 403 from {server.url}/call-status")
    assert "PUBLIC_BASE_URL differs from the URL Twilio will use" in check.message


def test_proof_reports_a_wrong_auth_token(live):
    check = number_setup.path_check(base_url=live.url, auth_token="not-the-servers-token")
    assert not check.ok and "HTTP 403" in check.message


def test_proof_reports_a_redirect(live):
    # Not a webhook path, so the production server redirects it to https (SECURE_SSL_REDIRECT).
    check = number_setup.path_check(base_url=live.url + "/another-app", auth_token=AUTH_TOKEN)
    assert not check.ok
    assert check.message.startswith(
        f"HTTP 301 from {live.url}/another-app/call-status: redirected to https://"
    )


def test_proof_reports_another_server_answering():
    class NotUs(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_error(404)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), NotUs)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        check = number_setup.path_check(base_url=base, auth_token=AUTH_TOKEN)
    finally:
        server.shutdown()
        server.server_close()
    assert not check.ok and check.message.startswith(f"HTTP 404 from {base}/call-status: whatever answers")


def test_proof_reports_nothing_listening():
    check = number_setup.path_check(base_url="http://127.0.0.1:9", auth_token=AUTH_TOKEN)
    assert not check.ok and check.message.startswith("Could not connect to http://127.0.0.1:9/call-status")
