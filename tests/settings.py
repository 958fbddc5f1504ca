"""Settings for the test suite: ``voiceagent.settings`` exactly as a fresh checkout sees them.

pytest-django imports this module (pyproject.toml) before any conftest runs. It removes from
the environment every variable ``.env.example`` documents, so neither a developer's ``.env``
nor an ``export`` in their shell (OPENAI_API_KEY, PUBLIC_BASE_URL, DEBUG...) changes what the
tests see, and the servers the tests start inherit the same clean environment. DATABASE_URL
stays: ``make test`` sets it on purpose for the PostgreSQL pass.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_KEPT = {"DATABASE_URL"}

_documented = re.findall(r"^([A-Z_]+)=", (Path(__file__).parent.parent / ".env.example").read_text(), re.M)
for _name in set(_documented) - _KEPT:
    os.environ.pop(_name, None)
os.environ["DJANGO_READ_DOT_ENV"] = "false"

from voiceagent.settings import *  # noqa: E402, F403
