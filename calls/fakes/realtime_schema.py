"""Realtime GA events checked against the official ``openai`` SDK's types (issue 12).

Why: a fake written from our own notes can share our mistakes, so the fake asks the SDK --
generated from OpenAI's OpenAPI spec -- whether each event is well formed. The SDK is a dev
dependency only: ``realtime_standin`` and ``make demo`` run the fake with requirements.txt, and
then ``ENABLED`` is false and nothing is checked.

How strict, and why this way: the SDK's models are pydantic models configured with
``extra="allow"`` (``openai._models.BaseModel``), so plain validation accepts any unknown key,
e.g. a beta-era ``session.voice``, and in lax mode turns ``"1500"`` into ``1500``. We validate
the JSON text in pydantic's strict mode (no coercion) and then walk the validated model for
keys that landed in ``model_extra``: those are the keys the spec does not define. Comparing a
re-dumped model with the input instead would flag every defaulted or aliased field. Open
``dict``/``object`` fields of the spec (tool ``parameters``, ``metadata``) stay open.

The unions (``RealtimeClientEvent``, ``ConversationItem``, ...) are tagged with the SDK's own
``PropertyInfo(discriminator=...)``, which pydantic ignores; so the top level is dispatched on
``type`` here, and nested unions are validated in pydantic's smart mode, whose errors name each
member tried (see ``_pick``).
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

try:
    from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
    from pydantic import BaseModel, ValidationError
except ImportError:  # requirements.txt only: the stand-in runs unchecked
    ENABLED = False
else:
    ENABLED = True


@dataclass(frozen=True)
class Problem:
    """Why the service would refuse a client event: the fields of its ``error`` event."""

    code: str
    message: str
    param: str | None


def _members(union: Any) -> dict[str, type[BaseModel]]:
    """``{event type: model}`` for an ``Annotated[Union[...], PropertyInfo]`` event union."""
    inner = typing.get_args(union)[0]
    return {typing.get_args(m.model_fields["type"].annotation)[0]: m for m in typing.get_args(inner)}


if ENABLED:
    CLIENT_EVENTS = _members(RealtimeClientEvent)
    SERVER_EVENTS = _members(RealtimeServerEvent)


def _extras(value: object, path: str) -> list[str]:
    """Paths of keys the SDK model does not define, anywhere below ``value``."""
    found: list[str] = []
    if isinstance(value, BaseModel):
        found += [_join(path, key) for key in value.model_extra or {}]
        for name in type(value).model_fields:
            found += _extras(getattr(value, name), _join(path, name))
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            found += _extras(sub, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, sub in value.items():
            found += _extras(sub, _join(path, str(key)))
    return found


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _is_tag(part: object) -> bool:
    """A union member's tag in a pydantic error location (``RealtimeConversationItemUserMessage``,
    ``literal['auto']``, ``str``) rather than a field name: SDK fields are snake_case."""
    return isinstance(part, str) and (part[:1].isupper() or "[" in part or part in _SCALAR_TAGS)


_SCALAR_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _path(loc: Sequence[str | int]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _is_tag(part):
            path = _join(path, part)
    return path


def _pick(errors: list[Any]) -> Any:
    """The error a person would want from a smart-mode union's list.

    Each member tried adds its own errors. A member whose ``type`` or ``role`` did not match
    was the wrong member, not a mistake in the event: prefer errors from members that matched
    there (a system message with an ``output_text`` part: report the part's type, not that
    ``role`` is not ``"user"``). When every member failed on its tag, report that."""

    def branch(err: Any) -> tuple[Any, ...]:
        loc = err["loc"]
        last = max((i for i, part in enumerate(loc) if _is_tag(part)), default=-1)
        return tuple(loc[: last + 1])

    wrong = {
        branch(err)
        for err in errors
        if err["type"] == "literal_error"
        and len(err["loc"]) == len(branch(err)) + 1
        and err["loc"][-1] in ("type", "role")
        and branch(err)
    }
    right = [err for err in errors if branch(err) not in wrong]
    return (right or errors)[0]


def _problem(err: Any) -> Problem:
    # Codes and wording as the service's (notes section 4 error table); param spelling
    # (``item.content[0].type``) follows the service's other APIs, UNCONFIRMED for Realtime.
    param = _path(err["loc"])
    kind = err["type"]
    if kind == "missing":
        return Problem("missing_required_parameter", f"Missing required parameter: '{param}'.", param)
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return Problem(
            "invalid_value", f"Invalid value: '{err['input']}'. Supported values are: {expected}.", param
        )
    if kind.endswith("_type") or kind == "model_type":
        return Problem("invalid_type", f"Invalid type for '{param}': {err['msg'].lower()}.", param)
    return Problem("invalid_value", f"Invalid value for '{param}': {err['msg'].lower()}.", param)


# Keys the live GA service sends that the SDK's server-event models leave out, each with its
# evidence; the fake may send these and nothing else undeclared. The SDK types the session in
# session.created/updated as the *request* object (RealtimeSessionCreateRequest), but captured
# GA payloads carry the session's identity too: ``"object":"realtime.session","id":"sess_...",
# "expires_at":1756324625`` (notes section 1, [GO] TestSessionCreatedEvent, model
# gpt-realtime-2025-08-28), as does the spec's own session example for POST /realtime/sessions.
_SESSION_IDENTITY = frozenset({"session.object", "session.id", "session.expires_at"})
WIRE_EXTRAS: dict[str, frozenset[str]] = {
    "session.created": _SESSION_IDENTITY,
    "session.updated": _SESSION_IDENTITY,
}


def _check(model: type[BaseModel], raw: str | bytes, allowed: frozenset[str] = frozenset()) -> Problem | None:
    try:
        parsed = model.model_validate_json(raw, strict=True)
    except ValidationError as exc:
        return _problem(_pick(exc.errors(include_url=False)))
    unknown = [path for path in _extras(parsed, "") if path not in allowed]
    if unknown:
        return Problem("unknown_parameter", f"Unknown parameter: '{unknown[0]}'.", unknown[0])
    return None


# Cost (timeit, 2 shared cores, openai 3.60.0 / pydantic 2.14): 5-13 us per 20 ms
# input_audio_buffer.append (json.loads of the same frame: 2-7 us), so under 0.1 % of a core
# per call at 50 appends a second: no separate fast path. session.update: 70-140 us.
def client_event_problem(kind: object, raw: str | bytes) -> Problem | None:
    """What the service would refuse in a client event (``raw`` is its JSON text, ``kind`` its
    ``type``); None when the SDK's GA types accept it, or when the SDK is not installed."""
    if not ENABLED:
        return None
    model = CLIENT_EVENTS.get(kind) if isinstance(kind, str) else None
    if model is None:
        supported = ", ".join(f"'{name}'" for name in sorted(CLIENT_EVENTS))
        return Problem(
            "invalid_value", f"Invalid value: '{kind}'. Supported values are: {supported}.", "type"
        )
    return _check(model, raw)


def server_event_problem(kind: object, raw: str | bytes) -> str | None:
    """Why a server event does not match the SDK's GA server-event union; None when it does."""
    if not ENABLED:
        return None
    model = SERVER_EVENTS.get(kind) if isinstance(kind, str) else None
    if model is None:
        return f"type {kind!r} is not a GA server event"
    problem = _check(model, raw, WIRE_EXTRAS.get(kind, frozenset()))
    return None if problem is None else f"{problem.code}: {problem.message}"
