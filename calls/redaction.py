"""Removing a secret from text that is about to be logged or stored (an error message)."""

from __future__ import annotations

import re

# Shorter values are not real secrets (a placeholder such as "x" in a local .env); replacing
# them would mangle every message that happens to contain those letters.
MIN_SECRET_LENGTH = 8


def redact(text: str, secret: str, replacement: str = "[redacted]") -> str:
    """``text`` with every whole occurrence of ``secret`` replaced: not inside a longer run of
    letters and digits, where it is a coincidence rather than the secret."""
    if len(secret) < MIN_SECRET_LENGTH:
        return text
    pattern = rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])"
    return re.sub(pattern, lambda _: replacement, text)
