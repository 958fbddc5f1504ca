from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from twilio.request_validator import RequestValidator

if TYPE_CHECKING:
    from playwright.async_api import Browser

    from calls.fakes.openai_responses import FakeResponsesServer
    from tests.servers import BackgroundLoop

# Fixtures through which a test reaches the database (directly, or through a server started
# on the test database: ``live``, ``start_server`` and the like all depend on one of them).
DATABASE_FIXTURES = frozenset({"db", "transactional_db", "django_db_setup"})


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--database-tests-only",
        action="store_true",
        help="run only the tests that reach the database (make test's second, PostgreSQL pass)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The PostgreSQL pass re-runs what can differ between databases, not the tests of the
    fakes, the sans-IO core or the benchmarks, which the SQLite pass has already run."""
    if not config.getoption("--database-tests-only"):
        return
    keep, drop = [], []
    for item in items:
        reaches = DATABASE_FIXTURES & set(getattr(item, "fixturenames", ()))
        (keep if reaches or item.get_closest_marker("django_db") else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


AUTH_TOKEN = "test-auth-token-0123456789abcdef"
PUBLIC_BASE_URL = "https://voice.example.ngrok.app"


@pytest.fixture(autouse=True)
def twilio_settings(settings):
    """Every test runs as a deployment behind a TLS-terminating proxy (ngrok)."""
    settings.TWILIO_AUTH_TOKEN = AUTH_TOKEN
    settings.TWILIO_ACCOUNT_SID = "AC" + "0" * 32
    settings.TWILIO_API_BASE_URL = "http://127.0.0.1:9"  # nothing listens: no test reaches Twilio
    settings.PUBLIC_BASE_URL = PUBLIC_BASE_URL
    settings.TWILIO_VALIDATE_SIGNATURES = True
    # In-process webhooks must not dial OpenAI; tests/test_preconnect.py turns it on where tested.
    settings.OPENAI_PRECONNECT = False
    # Whatever the developer's environment: in-process calls use the fake their test sets up,
    # never the local stand-in (tests/test_model_endpoint.py turns it on where tested).
    settings.OPENAI_STANDIN = False
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


@pytest.fixture
def staff_client(client: Client) -> Client:
    """The test client logged in as "ops", staff and superuser, so admin pages and staff sockets
    open without granting permissions; tests of a non-superuser's access log in their own user."""
    user = get_user_model().objects.create_user("ops", password="pw-123456", is_staff=True, is_superuser=True)
    client.force_login(user)
    return client


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


# --- end-to-end: the real server, real database, fakes at the network edge --------------------

OPENAI_KEY = "sk-test-e2e-0123456789"


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, tmp_path_factory):
    """SQLite tests use a file, so the server subprocess can share the test database."""
    from django.conf import settings

    database = settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        database.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")


@pytest.fixture(scope="session")
def loop():
    from tests.servers import BackgroundLoop

    background = BackgroundLoop()
    yield background
    background.close()


@pytest.fixture(scope="session")
def fake_openai(loop):
    from calls.fakes.openai_realtime import FakeRealtimeServer

    server = FakeRealtimeServer(api_key=OPENAI_KEY)
    loop.run(server.start())
    yield server
    loop.run(server.stop())


@pytest.fixture(autouse=True)
def openai_events_match_sdk(request):
    """Fail a test that used the shared fake OpenAI server if, during it, our bridge sent an
    event the SDK's GA types reject (the fake refused it) or the fake sent one (a fake bug)."""
    if "fake_openai" not in request.fixturenames:
        yield
        return
    server = request.getfixturevalue("fake_openai")
    sessions_before = len(server.sessions)
    refused_before = [len(session.refused) for session in server.sessions]
    invalid_before = len(server.invalid_sent)
    yield
    refused = [
        f"{ev.get('type')}: {problem.code}: {problem.message}"
        for i, session in enumerate(server.sessions)
        for ev, problem in session.refused[(refused_before[i] if i < sessions_before else 0) :]
    ]
    assert not refused, f"the fake OpenAI server refused client events: {refused}"
    assert len(server.invalid_sent) == invalid_before, server.invalid_sent[invalid_before:]


ACCOUNT_SID = "AC" + "0" * 32


@pytest.fixture(scope="session")
def fake_twilio_rest():
    from calls.fakes.twilio_rest import FakeTwilioRest

    fake = FakeTwilioRest(ACCOUNT_SID, AUTH_TOKEN)
    fake.start()
    yield fake
    fake.stop()


@pytest.fixture(scope="session")
def media_root(tmp_path_factory):
    return tmp_path_factory.mktemp("media")


def server_environment(fake_openai, fake_twilio_rest, media_root) -> dict[str, str]:
    from django.db import connection

    from tests.servers import database_url

    return {
        "DATABASE_URL": database_url(connection.settings_dict),
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "OPENAI_API_KEY": OPENAI_KEY,
        "OPENAI_REALTIME_URL": fake_openai.url,
        "TWILIO_ACCOUNT_SID": ACCOUNT_SID,
        "TWILIO_API_BASE_URL": fake_twilio_rest.url,
        "VOICE_AGENT_TOOLS": "calls.example_tools,tests.e2e_tools",
        "DEBUG": "false",
        "SECRET_KEY": "e2e-secret-key-not-for-production",
        "LOG_LEVEL": "INFO",
        "MEDIA_ROOT": str(media_root),
        # The production default: every end-to-end suite runs with the webhook pre-connecting.
        "OPENAI_PRECONNECT": "true",
    }


@pytest.fixture(scope="session")
def server_process(django_db_setup, fake_openai, fake_twilio_rest, media_root, tmp_path_factory):
    from tests.servers import start_asgi_server

    server = start_asgi_server(
        server_environment(fake_openai, fake_twilio_rest, media_root),
        tmp_path_factory.mktemp("logs") / "server.log",
    )
    yield server
    server.stop()


@pytest.fixture
def start_server(django_db_setup, fake_openai, fake_twilio_rest, media_root, tmp_path, settings):
    """Start another server on the test database with some settings changed (a broken OpenAI
    URL, a short session limit): production's server unless ``server`` names another (such as
    "daphne", what runserver serves), with ``args`` added to its command line; it is stopped
    after the test."""
    from calls.processes import PRODUCTION_SERVER
    from tests.servers import start_asgi_server

    started = []

    def start(server: str = PRODUCTION_SERVER, args: tuple[str, ...] = (), **overrides: str):
        env = server_environment(fake_openai, fake_twilio_rest, media_root) | overrides
        log_path = tmp_path / f"{server}-{len(started)}.log"
        live_server = start_asgi_server(env, log_path, server=server, args=args)
        started.append(live_server)
        settings.PUBLIC_BASE_URL = live_server.url
        return live_server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def live(server_process, transactional_db, fake_openai, fake_twilio_rest, media_root, settings):
    """A running server with a clean database and the default agent (no greeting). The test
    process is configured like the server, so services called here reach the same fakes."""
    from calls.models import Agent

    Agent.objects.update_or_create(
        phone_number="",
        defaults={
            "name": "Default agent",
            "instructions": "Be brief.",
            "greeting": "",
            "vad_silence_ms": 400,
            "idle_timeout_seconds": 0,
        },
    )
    fake_openai.set_script(None)
    fake_twilio_rest.clear()
    settings.PUBLIC_BASE_URL = server_process.url
    settings.TWILIO_API_BASE_URL = fake_twilio_rest.url
    settings.TWILIO_ACCOUNT_SID = ACCOUNT_SID
    settings.MEDIA_ROOT = media_root
    settings.RECORDING_WORK_DIR = media_root / "recordings" / "in-progress"  # as the server's
    yield server_process
    if server_process.process.poll() is not None:
        pytest.fail(f"the server died:\n{server_process.log()}")


# --- browser tests: Debian's Chromium through Playwright (tests/chromium.py) ---------------


@pytest.fixture(scope="session")
def chromium(loop: BackgroundLoop) -> Iterator[Browser]:
    """One headless Chromium for the session; a module needing other flags overrides this."""
    from tests.chromium import launched

    with launched(loop) as browser:
        yield browser


@pytest.fixture
def browser(chromium: Browser, loop: BackgroundLoop) -> Iterator[Browser]:
    """The session's browser; every page a test opened is closed after it, pass or fail."""
    yield chromium
    for context in chromium.contexts:
        loop.run(context.close())


@pytest.fixture
def web(live, start_server, settings, tmp_path):
    """Our server as a person reaches it locally: plain HTTP (the session server redirects
    browsers to HTTPS, as production does; http://127.0.0.1 is still a secure context, so the
    web phone may use the microphone), sharing this test's database and media, with a staff
    superuser to sign in as."""
    return local_web_server(start_server, settings, tmp_path)


def local_web_server(start_server, settings, tmp_path, **overrides: str):
    """The ``web`` fixture's server, with some settings changed."""
    from tests.chromium import ARTIFACTS, PASSWORD, USERNAME

    settings.MEDIA_ROOT = tmp_path / "media"
    get_user_model().objects.create_user(USERNAME, password=PASSWORD, is_staff=True, is_superuser=True)
    ARTIFACTS.mkdir(exist_ok=True)
    return start_server(
        SECURE_SSL_REDIRECT="false",
        SESSION_COOKIE_SECURE="false",
        CSRF_COOKIE_SECURE="false",
        MEDIA_ROOT=str(settings.MEDIA_ROOT),
        **overrides,
    )


# --- the task worker (tests/test_e2e_analysis.py, tests/test_e2e_agent_tests.py) ---

WORKER_API_KEY = "sk-test-worker"


@pytest.fixture
def responses() -> Iterator[FakeResponsesServer]:
    """The fake Responses API the task worker's account reaches."""
    from calls.fakes.openai_responses import FakeResponsesServer

    with FakeResponsesServer(api_key=WORKER_API_KEY) as server:
        yield server


@pytest.fixture
def start_worker(transactional_db, responses: FakeResponsesServer, tmp_path: Path):
    """``start()`` runs one task worker as production does, on the test database."""
    from django.db import connection

    from tests.servers import ROOT, database_url

    workers: list[tuple[subprocess.Popen[bytes], Path]] = []

    def start() -> tuple[subprocess.Popen[bytes], Path]:
        env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"} | {
            "DATABASE_URL": database_url(connection.settings_dict),
            "OPENAI_API_KEY": WORKER_API_KEY,
            "OPENAI_BASE_URL": responses.base_url,
            "DEBUG": "false",
            "SECRET_KEY": "e2e-secret-key-not-for-production",
            "LOG_LEVEL": "INFO",
        }
        log = tmp_path / f"worker-{len(workers)}.log"
        command = [
            sys.executable,
            "manage.py",
            "db_worker",
            "--no-startup-delay",
            "--no-reload",
            "--interval",
            "0.1",
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        workers.append((process, log))
        return process, log

    yield start
    for process, _ in workers:
        if process.poll() is None:
            process.terminate()
            process.wait(timeout=30)
