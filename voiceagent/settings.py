"""Settings for the voice agent, read from the environment (see ``.env.example``).

Every variable is documented in ``.env.example``; malformed values stop start-up with an
error naming the variable (``voiceagent.env``).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

import django_stubs_ext

from voiceagent.env import (
    ConfigurationError,
    env_bool,
    env_database,
    env_float,
    env_int,
    env_json_object,
    env_list,
    env_pattern,
    env_str,
    env_url,
    read_dot_env,
    where,
)

BASE_DIR = Path(__file__).resolve().parent.parent

# Django's generic classes (ModelAdmin, ModelForm...) accept a type argument, as mypy wants them
# written (calls/admin.py): django-stubs' documented way, a no-op otherwise.
django_stubs_ext.monkeypatch()

# A local .env file is a convenience for development; the real environment wins. The test
# suite sets DJANGO_READ_DOT_ENV=false (tests/settings.py), for itself and the servers it starts,
# so a developer's .env cannot change what the tests see.
if env_bool("DJANGO_READ_DOT_ENV", True) and (BASE_DIR / ".env").is_file():
    read_dot_env(BASE_DIR / ".env")

DEBUG = env_bool("DEBUG", True)

_INSECURE_DEV_KEY = "django-insecure-local-development-only"
SECRET_KEY = env_str("SECRET_KEY") or _INSECURE_DEV_KEY
if not DEBUG and SECRET_KEY == _INSECURE_DEV_KEY:
    raise ConfigurationError(
        f"Environment variable SECRET_KEY must be set when DEBUG is false (DEBUG is {where('DEBUG')})."
    )

# The public origin Twilio reaches (ngrok or your domain). Signatures are checked
# against URLs rebuilt from it, because behind a proxy Django cannot see the URL
# Twilio signed.
PUBLIC_BASE_URL = env_url(
    "PUBLIC_BASE_URL", "http://localhost:8000", schemes=("http", "https"), origin_only=True
)
_public_host = urlsplit(PUBLIC_BASE_URL).hostname or "localhost"

ALLOWED_HOSTS = env_list(
    "ALLOWED_HOSTS",
    ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [],
)
if _public_host not in ALLOWED_HOSTS:
    ALLOWED_HOSTS.append(_public_host)
CSRF_TRUSTED_ORIGINS = [PUBLIC_BASE_URL]

if env_bool("USE_X_FORWARDED_PROTO", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")


def _env_secure(name: str) -> bool:
    """HTTPS hardening switches: unset or empty means on in production (DEBUG=false), off with DEBUG."""
    return env_bool(name, not DEBUG) if env_str(name) else not DEBUG


# HTTPS in production (`manage.py check --deploy` is clean with these defaults). Behind a
# TLS-terminating proxy, set USE_X_FORWARDED_PROTO so requests are seen as https: otherwise
# every request is redirected to itself, forever.
SECURE_SSL_REDIRECT = _env_secure("SECURE_SSL_REDIRECT")
# Twilio's webhooks are never redirected: a 301 loses the POST, and Twilio only ever uses the
# https URLs it was given. Their signatures already prove where they were sent. Nor is the
# health check: probes ask the worker's own port over plain HTTP.
SECURE_REDIRECT_EXEMPT = [r"^(incoming-call|call-status|stream-status|amd-status|stream-ended|healthz)$"]
SESSION_COOKIE_SECURE = _env_secure("SESSION_COOKIE_SECURE")
CSRF_COOKIE_SECURE = _env_secure("CSRF_COOKIE_SECURE")
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 365 * 24 * 3600, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_secure("SECURE_HSTS_INCLUDE_SUBDOMAINS")
# Only consent to browsers' preload list; nothing is preloaded until you submit the domain.
SECURE_HSTS_PRELOAD = _env_secure("SECURE_HSTS_PRELOAD")

INSTALLED_APPS = [
    # daphne first: its runserver serves HTTP and WebSockets from one process.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_tasks",
    "django_tasks_db",
    "calls",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    # Serves the admin's and the live page's static files from the ASGI server itself.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "voiceagent.urls"
APPEND_SLASH = False  # Twilio posts to exact paths; a redirect would lose the POST.

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = None
ASGI_APPLICATION = "voiceagent.asgi.application"

DATABASES = {"default": env_database("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Concurrent calls write from several threads; wait for the lock instead of failing.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"timeout": 20, "transaction_mode": "IMMEDIATE", "init_command": "PRAGMA journal_mode=WAL;"}
    )

REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    env_url("REDIS_URL", REDIS_URL, schemes=("redis", "rediss", "unix"))
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL]},
        }
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
# Find static files in the apps directly: no collectstatic step to forget on deploy.
WHITENOISE_USE_FINDERS = True
MEDIA_URL = "media/"
MEDIA_ROOT = Path(env_str("MEDIA_ROOT") or BASE_DIR / "media")
# Recordings are written here on local disk during the call, then stored with the default
# storage backend (MEDIA_ROOT locally, S3 etc. in production) when the call ends.
RECORDING_WORK_DIR = Path(env_str("RECORDING_WORK_DIR") or MEDIA_ROOT / "recordings" / "in-progress")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- OpenAI Realtime (GA) ---
OPENAI_API_KEY = env_str("OPENAI_API_KEY")
OPENAI_REALTIME_URL = env_url(
    "OPENAI_REALTIME_URL", "wss://api.openai.com/v1/realtime", schemes=("wss", "ws")
)
# gpt-realtime is announced for shutdown on 2027-01-20; gpt-realtime-2.1 is its successor.
OPENAI_REALTIME_MODEL = env_str("OPENAI_REALTIME_MODEL") or "gpt-realtime-2.1"
# OpenAI ends a Realtime session after 60 minutes; longer calls get a fresh session (with the
# conversation replayed) at a quiet moment after this many seconds.
OPENAI_SESSION_MAX_SECONDS = env_int("OPENAI_SESSION_MAX_SECONDS", 55 * 60, minimum=1)
# Open each call's OpenAI session (and configure it) as soon as /incoming-call answers, so the
# greeting does not wait for the OpenAI handshake once Twilio's media socket arrives
# (calls/preconnect.py). A session the media socket never claims closes after the TTL.
OPENAI_PRECONNECT = env_bool("OPENAI_PRECONNECT", True)
OPENAI_PRECONNECT_TTL = env_float("OPENAI_PRECONNECT_TTL", 15.0, minimum=0.1)
# Caller audio per input_audio_buffer.append, in ms: Twilio sends 20 ms frames; sending two at
# a time halves the messages to OpenAI (and their CPU) and delays what OpenAI hears, its voice
# activity detection included, by 20 ms at most (bench/README.md measures both).
OPENAI_AUDIO_APPEND_MS = int(
    env_pattern("OPENAI_AUDIO_APPEND_MS", r"20|40|60|80|100", "20, 40, 60, 80 or 100") or 20
)
# This worker's name in the Stream URL (wss://host/media-stream/<route>) with several workers
# behind a proxy: the proxy sends each media socket to the worker that answered its webhook,
# where its OpenAI session is already open (deploy/nginx/voiceagent.conf). Empty: /media-stream.
WORKER_ROUTE = env_pattern("WORKER_ROUTE", r"[A-Za-z0-9_-]{1,32}", "1-32 letters, digits, - or _")

# --- The local OpenAI stand-in (issue 13) ---
# A development server with no OPENAI_API_KEY (and no OPENAI_REALTIME_URL of its own) answers
# calls with the bundled stand-in instead of the model, so `make run` works at once
# (calls/model_endpoint.py). Never with a key; never with DEBUG off: there a call without a
# key fails with "OPENAI_API_KEY is not set", so no real caller gets scripted answers.
OPENAI_STANDIN = DEBUG and not OPENAI_API_KEY and not env_str("OPENAI_REALTIME_URL")

# --- Post-call analysis (issue 16) ---
# The model that reads each ended call's transcript (Responses API), unless the agent's plan
# names another. OPENAI_BASE_URL (as the openai SDK reads it) points it at a proxy or a fake.
ANALYSIS_MODEL = env_str("ANALYSIS_MODEL") or "gpt-5-mini"
OPENAI_BASE_URL = env_url("OPENAI_BASE_URL", "https://api.openai.com/v1", schemes=("https", "http"))
# One request's timeout; the SDK retries 429, 5xx and timeouts 3 times with backoff.
ANALYSIS_TIMEOUT_SECONDS = env_float("ANALYSIS_TIMEOUT_SECONDS", 60.0, minimum=1.0)
# The job queue: Django's Tasks interface (django-tasks), the database as the queue. Its
# worker is `manage.py db_worker`, which `make run` starts beside the server.
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend"}}

# The example receiver of call_analysed (calls/example_tools.py) emails follow-ups here.
FOLLOW_UP_EMAIL = env_str("FOLLOW_UP_EMAIL")
# Outgoing mail: the console in development; set EMAIL_HOST etc. (Django's settings) in production.
_MAIL = "django.core.mail.backends."
EMAIL_BACKEND = env_str("EMAIL_BACKEND") or _MAIL + ("console.EmailBackend" if DEBUG else "smtp.EmailBackend")
EMAIL_HOST = env_str("EMAIL_HOST", "localhost")
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL", "voiceagent@localhost")

# --- Twilio ---
TWILIO_ACCOUNT_SID = env_str("TWILIO_ACCOUNT_SID")
TWILIO_AUTH_TOKEN = env_str("TWILIO_AUTH_TOKEN")
# Turning this off lets anyone on the internet start calls on your OpenAI bill.
TWILIO_VALIDATE_SIGNATURES = env_bool("TWILIO_VALIDATE_SIGNATURES", True)
# Twilio REST API origin. Tests point it at a local fake Twilio REST server.
TWILIO_API_BASE_URL = env_url(
    "TWILIO_API_BASE_URL", "https://api.twilio.com", schemes=("https", "http"), origin_only=True
)
# How long the media socket has to present the single-use token minted by the webhook.
STREAM_TOKEN_TTL_SECONDS = env_int("STREAM_TOKEN_TTL_SECONDS", 120, minimum=5)

# Price table overrides for cost estimates (calls/pricing.py has the defaults and their date):
# {"model": {"text_in": 4, "text_cached": 0.4, "text_out": 16, "audio_in": 32, ...}} USD per 1M tokens.
VOICE_AGENT_PRICES = env_json_object("VOICE_AGENT_PRICES_JSON")

# Function tools agents may use: modules with @tool functions, or dotted paths of functions.
VOICE_AGENT_TOOLS = env_list("VOICE_AGENT_TOOLS", ["calls.example_tools"])

# --- Capacity and privacy ---
# Calls bridged at once, counted in the database so every worker process shares the limit.
# Callers beyond it hear a busy message. 0: no limit.
MAX_CONCURRENT_CALLS = env_int("MAX_CONCURRENT_CALLS", 0, minimum=0)
# Admin lists show callers' numbers masked (+1555•••1111); a call's own page shows them in full.
MASK_PHONE_NUMBERS = env_bool("MASK_PHONE_NUMBERS", False)

LOG_LEVEL = env_str("LOG_LEVEL", "INFO").upper()
if LOG_LEVEL not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
    raise ConfigurationError(
        f"Environment variable LOG_LEVEL={LOG_LEVEL!r} is invalid: expected DEBUG, INFO, "
        f"WARNING, ERROR or CRITICAL ({where('LOG_LEVEL')})."
    )

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        "calls": {"level": LOG_LEVEL},
        "django": {"level": "INFO"},
    },
}
