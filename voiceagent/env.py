"""Typed readers for environment variables that fail loudly, naming the variable.

django-environ parses most values, but some of its casts are lenient (``bool("maybe")``
is False, a URL without a scheme is accepted). A phone line that silently runs with a
wrong setting is worse than one that refuses to start, so each reader here validates
and raises ``ConfigurationError`` (an ``ImproperlyConfigured``) with the variable's name and
what was expected.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import environ
from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}

# Names that came from the .env file rather than the real environment, so an error can say
# which one to fix.
_from_dot_env: set[str] = set()


class ConfigurationError(ImproperlyConfigured):
    """A setting's variable is missing or malformed; ``manage.py`` and ``asgi.py`` print the
    message as one line and exit with status 1 (``exit_on_configuration_error``)."""


def read_dot_env(path: Path) -> None:
    """Load ``path`` into the environment without overriding what is already set there."""
    before = set(os.environ)
    environ.Env.read_env(path, overwrite=False)
    _from_dot_env.update(set(os.environ) - before)


def where(name: str) -> str:
    return "set in .env" if name in _from_dot_env else "set in the environment"


def exit_on_configuration_error() -> None:
    """Load the settings now; a ConfigurationError ends the process with its one-line message
    (status 1) instead of a traceback through Django's start-up."""
    from django.conf import settings

    try:
        settings.INSTALLED_APPS  # noqa: B018 - importing the settings module validates every variable
    except ConfigurationError as exc:
        raise SystemExit(f"Configuration error: {exc}") from None


def _raw(name: str) -> str | None:
    value = os.environ.get(name)
    return None if value is None else value.strip()


def _fail(name: str, value: str, expected: str) -> ConfigurationError:
    # Never echo values of secret-looking variables back into logs.
    shown = "<hidden>" if any(s in name for s in ("KEY", "TOKEN", "SECRET", "PASSWORD")) else value
    with contextlib.suppress(ValueError):
        password = urlsplit(shown).password  # postgres://user:password@host/db
        if password:
            shown = shown.replace(f":{password}@", ":<hidden>@")
    return ConfigurationError(
        f"Environment variable {name}={shown!r} is invalid: expected {expected} ({where(name)})."
    )


def env_str(name: str, default: str = "") -> str:
    value = _raw(name)
    return default if value is None else value


def env_bool(name: str, default: bool) -> bool:
    value = _raw(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise _fail(name, value, "one of true/false/1/0/yes/no/on/off")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise _fail(name, value, "a whole number") from None
    if minimum is not None and number < minimum:
        raise _fail(name, value, f"a whole number >= {minimum}")
    return number


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    value = _raw(name)
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise _fail(name, value, "a number") from None
    if not math.isfinite(number):
        raise _fail(name, value, "a finite number")
    if minimum is not None and number < minimum:
        raise _fail(name, value, f"a number >= {minimum}")
    return number


def env_list(name: str, default: list[str]) -> list[str]:
    value = _raw(name)
    if not value:
        return default
    return [item.strip() for item in value.split(",") if item.strip()]


def env_url(name: str, default: str, *, schemes: tuple[str, ...], origin_only: bool = False) -> str:
    """A URL with one of ``schemes`` and a host; ``origin_only`` forbids path, query, fragment."""
    value = _raw(name)
    if value is None or value == "":
        value = default
    expected = f"a URL starting with {' or '.join(s + '://' for s in schemes)}"
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise _fail(name, value, expected) from None
    if parts.scheme not in schemes or not parts.hostname:
        raise _fail(name, value, expected)
    if origin_only:
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise _fail(name, value, f"{expected} with no path, query or fragment")
        return f"{parts.scheme}://{parts.netloc}"
    return value


def env_database(name: str, default: str) -> dict[str, Any]:
    value = _raw(name) or default
    # The scheme first: django-environ only warns about an unknown one.
    if value.split(":", 1)[0] not in environ.Env.DB_SCHEMES:
        raise _fail(name, value, "a database URL starting with sqlite:// or postgres://")
    try:
        # One entry of Django's DATABASES, whose values are of many types (dict[str, Any] to Django).
        config: dict[str, Any] = environ.Env.db_url_config(value)
    except Exception as exc:  # django-environ raises several types for bad URLs
        raise _fail(name, value, f"a database URL such as sqlite:///db.sqlite3 [{exc}]") from None
    return config


def env_pattern(name: str, pattern: str, expected: str) -> str:
    """A string that is empty or matches ``pattern`` (a full match)."""
    value = _raw(name) or ""
    if value and not re.fullmatch(pattern, value):
        raise _fail(name, value, expected)
    return value


def env_json_object(name: str) -> dict[str, object]:
    value = _raw(name)
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except ValueError:
        raise _fail(name, value, "a JSON object") from None
    if not isinstance(parsed, dict):
        raise _fail(name, value, "a JSON object")
    return parsed
