"""A fake OpenAI Responses API (``POST /v1/responses``) on a loopback HTTP server.

Tests and the offline demo point the official SDK at it (``OpenAI(base_url=server.base_url,
api_key=...)``), so it is a real server speaking the wire format of openai 3.60: Bearer auth,
OpenAI's error body ``{"error": {"message", "type", "param", "code"}}``, and a complete
``Response`` object. It refuses what the service refuses, in the service's words where we have
seen them, including the schema subset of strict Structured Outputs.

The output is derived from the input and the schema, deterministically, and validates against
the schema, so a test can assert on exact values. ``fail_next``, ``delay_next`` and
``invalid_output_next`` script what a real deployment meets sooner or later.

Not implemented, and refused with a 400 naming what it accepts instead: streaming,
non-message input items, image, file and audio parts, and the ``json_object`` format. Tools
are echoed but never called. Deliberately free of Django.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from types import TracebackType
from typing import Any, Literal

from calls.fakes.local_http import KeepAliveHandler, LocalHttpServer

__all__ = ["FakeResponsesServer"]

JsonObject = dict[str, Any]


class _ApiError(Exception):
    """Raised while handling a request; becomes OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> JsonObject:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def _kind_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _invalid_type(param: str, expected: str, value: object) -> _ApiError:
    message = f"Invalid type for '{param}': expected {expected}, but got {_kind_of(value)} instead."
    return _ApiError(400, message, param=param, code="invalid_type")


def _missing(param: str) -> _ApiError:
    return _ApiError(
        400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def _invalid_value(param: str, value: object, supported: tuple[str, ...]) -> _ApiError:
    names = [f"'{name}'" for name in supported]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"
    shown = f"'{value}'" if isinstance(value, str) else json.dumps(value)
    message = f"Invalid value: {shown}. Supported values are: {listed}."
    return _ApiError(400, message, param=param, code="invalid_value")


# --- the request --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Turn:
    role: str
    text: str


@dataclass(frozen=True)
class _Format:
    name: str
    schema: JsonObject
    strict: bool
    description: str | None


@dataclass(frozen=True)
class _Request:
    model: str
    turns: tuple[_Turn, ...]
    instructions: str | None
    text_format: _Format | None
    body: JsonObject


_ROLES = ("user", "assistant", "system", "developer")
# The service types content by who wrote it: a replayed assistant turn carrying `input_text` is
# refused with exactly this list (seen in many client fixes of 2026).
_ASSISTANT_PARTS = ("output_text", "refusal")
_OTHER_PARTS = ("input_text",)  # the service also takes image, file and audio parts; the fake does not


def _parse_request(body: object) -> _Request:
    if not isinstance(body, dict):
        raise _invalid_type("body", "an object", body)
    model = body.get("model")
    if model is None:
        raise _missing("model")
    if not isinstance(model, str):
        raise _invalid_type("model", "a string", model)
    if not model:
        message = (
            "Invalid 'model': empty string. Expected a string with minimum length 1, "
            "but got an empty string instead."
        )
        raise _ApiError(400, message, param="model", code="empty_string")
    if body.get("stream"):
        raise _ApiError(
            400, "This fake does not stream: leave 'stream' out.", param="stream", code="invalid_value"
        )
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise _invalid_type("instructions", "a string", instructions)
    return _Request(
        model, _parse_input(body.get("input")), instructions, _parse_format(body.get("text")), body
    )


def _parse_input(value: object) -> tuple[_Turn, ...]:
    if value is None:
        raise _missing("input")
    if isinstance(value, str):
        return (_Turn("user", value),)
    if not isinstance(value, list):
        raise _invalid_type("input", "a string or an array of input items", value)
    return tuple(_parse_item(item, f"input[{index}]") for index, item in enumerate(value))


def _parse_item(item: object, param: str) -> _Turn:
    if not isinstance(item, dict):
        raise _invalid_type(param, "an object", item)
    if item.get("type", "message") != "message":
        raise _invalid_value(f"{param}.type", item.get("type"), ("message",))
    role = item.get("role")
    if role is None:
        raise _missing(f"{param}.role")
    if role not in _ROLES:
        raise _invalid_value(f"{param}.role", role, _ROLES)
    content = item.get("content")
    if content is None:
        raise _missing(f"{param}.content")
    if isinstance(content, str):
        return _Turn(role, content)
    if not isinstance(content, list):
        raise _invalid_type(f"{param}.content", "a string or an array of content parts", content)
    allowed = _ASSISTANT_PARTS if role == "assistant" else _OTHER_PARTS
    texts = []
    for index, part in enumerate(content):
        where = f"{param}.content[{index}]"
        if not isinstance(part, dict):
            raise _invalid_type(where, "an object", part)
        if part.get("type") not in allowed:
            raise _invalid_value(where, part.get("type"), allowed)
        key = "refusal" if part["type"] == "refusal" else "text"
        if not isinstance(part.get(key), str):
            raise _invalid_type(f"{where}.{key}", "a string", part.get(key))
        texts.append(part[key])
    return _Turn(role, " ".join(texts))


_FORMAT_NAME = re.compile(r"[a-zA-Z0-9_-]+")
_FORMAT_KEYS = frozenset({"type", "name", "schema", "strict", "description"})


def _parse_format(text: object) -> _Format | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise _invalid_type("text", "an object", text)
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise _invalid_type("text.format", "an object", fmt)
    if fmt.get("type") == "text":
        return None
    if fmt.get("type") != "json_schema":
        raise _invalid_value("text.format.type", fmt.get("type"), ("text", "json_schema"))
    name, schema, strict = fmt.get("name"), fmt.get("schema"), fmt.get("strict")
    if name is None:
        raise _missing("text.format.name")
    if not isinstance(name, str):
        raise _invalid_type("text.format.name", "a string", name)
    if len(name) > 64:
        message = (
            "Invalid 'text.format.name': string too long. Expected a string with maximum length 64, "
            f"but got a string with length {len(name)} instead."
        )
        raise _ApiError(400, message, param="text.format.name", code="string_above_max_length")
    if not _FORMAT_NAME.fullmatch(name):
        message = (
            "Invalid 'text.format.name': string does not match pattern. "
            "Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'."
        )
        raise _ApiError(400, message, param="text.format.name", code="invalid_value")
    if schema is None:
        raise _missing("text.format.schema")
    if not isinstance(schema, dict):
        raise _invalid_type("text.format.schema", "an object", schema)
    if strict is not None and not isinstance(strict, bool):
        raise _invalid_type("text.format.strict", "a boolean", strict)
    for key in fmt:
        if key not in _FORMAT_KEYS:  # e.g. Chat Completions' nested `json_schema`
            message = f"Unknown parameter: 'text.format.{key}'."
            raise _ApiError(400, message, param=f"text.format.{key}", code="unknown_parameter")
    problem = _strict_problem(schema) if strict else None
    if problem:
        message = f"Invalid schema for response_format '{name}': {problem}"
        raise _ApiError(400, message, param="text.format.schema", code="invalid_json_schema")
    description = fmt.get("description")
    return _Format(name, schema, bool(strict), description if isinstance(description, str) else None)


# --- strict mode --------------------------------------------------------------------------
# The subset is OpenAI's Structured Outputs guide, "Supported schemas"
# (developers.openai.com/api/docs/guides/structured-outputs): the listed types and keywords,
# `$defs` and `$ref` (recursion included). Any other keyword is refused, as the
# service refuses `allOf`, `not`, `if`/`then`/`else`, `dependent*` (the guide's list),
# `oneOf` and `uniqueItems` (its "... is not permitted." errors). Annotations pass: `title`
# (every schema the SDK builds from a Pydantic model has them) and `default` (refused in 2024,
# accepted by api.openai.com in 2026-08 per openai/openai-agents-python#4390).

_TYPES = ("string", "number", "integer", "boolean", "object", "array", "null")
_FORMATS = frozenset({"date-time", "time", "date", "duration", "email", "hostname", "ipv4", "ipv6", "uuid"})
_KEYWORDS = frozenset(
    {
        *("type", "enum", "const", "anyOf", "$ref", "$defs", "definitions"),
        *("title", "description", "default"),  # annotations
        *("properties", "required", "additionalProperties"),  # object
        *("items", "minItems", "maxItems"),  # array
        *("pattern", "format"),  # string
        *("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"),  # number
    }
)


def _strict_problem(root: JsonObject) -> str | None:
    """What strict mode refuses in this schema, worded like the service; None if nothing."""
    if root.get("type") != "object" or "anyOf" in root:
        return f"schema must be a JSON Schema of 'type: \"object\"', got 'type: \"{root.get('type')}\"'."
    return _node_problem(root, root, ())


def _node_problem(node: object, root: JsonObject, path: tuple[str, ...]) -> str | None:
    where = f"In context={path!r}, "
    if not isinstance(node, dict):
        return where + "schema must be a JSON object."
    unknown = next((key for key in node if key not in _KEYWORDS), None)
    if unknown is not None:
        return where + f"'{unknown}' is not permitted."
    if "$ref" in node and _resolve(root, node["$ref"]) is None:
        return where + f"reference {json.dumps(node['$ref'])} can't be resolved."
    types = node.get("type")
    listed = types if isinstance(types, list) else [types]
    if types is None and "$ref" not in node and "anyOf" not in node:
        return where + "schema must have a 'type' key."
    if types is not None and (not listed or any(kind not in _TYPES for kind in listed)):
        supported = ", ".join(_TYPES)
        return where + f"type {json.dumps(types)} is not supported; use one of {supported} or a list of them."
    for group in ("properties", "$defs", "definitions"):
        if not isinstance(node.get(group, {}), dict):
            return where + f"'{group}' must be an object."
    if "object" in listed:
        if node.get("additionalProperties") is not False:
            return where + "'additionalProperties' is required to be supplied and to be false."
        properties = node.get("properties", {})
        required = node.get("required", [])
        required = required if isinstance(required, list) else []
        rule = "'required' is required to be supplied and to be an array including every key in properties."
        missing = next((key for key in properties if key not in required), None)
        if missing is not None:
            return where + f"{rule} Missing '{missing}'."
        extra = next((key for key in required if key not in properties), None)
        if extra is not None:
            return where + f"{rule} Extra required key '{extra}' supplied."
    if "format" in node and node["format"] not in _FORMATS:
        supported = ", ".join(sorted(_FORMATS))
        return where + f"format {json.dumps(node['format'])} is not supported; use one of {supported}."
    if "pattern" in node:
        try:
            re.compile(node["pattern"])
        except (re.error, TypeError):
            return where + "'pattern' is not a valid regular expression."
    if "enum" in node and not (isinstance(node["enum"], list) and node["enum"]):
        return where + "'enum' must be a non-empty array."
    if "anyOf" in node and not (isinstance(node["anyOf"], list) and node["anyOf"]):
        return where + "'anyOf' must be a non-empty array of schemas."
    children: list[tuple[tuple[str, ...], object]] = []
    for group in ("properties", "$defs", "definitions"):
        children += [((*path, group, key), child) for key, child in node.get(group, {}).items()]
    children += [((*path, "anyOf", str(index)), child) for index, child in enumerate(node.get("anyOf", []))]
    if "items" in node:
        children.append(((*path, "items"), node["items"]))
    return next((problem for at, child in children if (problem := _node_problem(child, root, at))), None)


def _resolve(root: JsonObject, ref: object) -> JsonObject | None:
    """The schema a local JSON pointer (``#``, ``#/$defs/step``) names, or None."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return None
    node: object = root
    for part in ref[1:].split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, dict) else None


# --- the derived output -------------------------------------------------------------------
# Facts come from what the caller and the agent said (user and assistant turns). System and
# developer text and `instructions` steer a real model; they are not facts about the call.

_MAX_DEPTH = 6  # recursive schemas (`"$ref": "#"`) end here: empty arrays, nulls
_DATE_TIME = r"\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2})"
_DATE = r"\b\d{4}-\d{2}-\d{2}\b"
_TIME = r"\b\d{1,2}:\d{2}(?::\d{2})?\b"
# format -> (where to find one in the input, the fixed value when none is found)
_FORMAT_VALUES: dict[str, tuple[str | None, str]] = {
    "date-time": (_DATE_TIME, "1970-01-01T00:00:00Z"),
    "date": (_DATE, "1970-01-01"),
    "time": (r"\b\d{2}:\d{2}:\d{2}\b", "00:00:00"),
    "email": (r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+", "caller@example.com"),
    "uuid": (
        r"\b[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\b",
        "00000000-0000-0000-0000-000000000000",
    ),
    "ipv4": (r"\b(?:\d{1,3}\.){3}\d{1,3}\b", "127.0.0.1"),
    "ipv6": (None, "::1"),
    "hostname": (None, "example.com"),
    "duration": (None, "PT0S"),
}
_PHONE = re.compile(r"\+?\d[\d\s().-]{5,}\d")
_NUMBER = r"(?<![\w.])-?\d+(?:\.\d+)?(?!\w)"
_YES = re.compile(
    r"\b(?:yes|yeah|yep|confirm(?:s|ed)?|booked|agreed?|accept(?:s|ed)?|sure|correct|ok(?:ay)?)\b", re.I
)
_NO = re.compile(r"\b(?:no|nope|not|never|cancel(?:s|l?ed)?|declined?)\b", re.I)


def _words(name: str) -> list[str]:
    """``callerName``, ``caller_name`` and ``caller-name`` all give ``["caller", "name"]``."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    return [word.lower() for word in re.split(r"[\s_-]+", spaced) if word]


def _words_pattern(words: list[str]) -> str:
    return r"(?<!\w)" + r"[\s_-]*".join(re.escape(word) for word in words) + r"(?!\w)"


def _mentions(text: str, phrase: str) -> bool:
    words = _words(phrase)
    return bool(words) and re.search(_words_pattern(words), text, re.I) is not None


def _plain(text: str) -> str:
    """The text without dates, times and phone numbers, whose digits are not quantities."""
    for pattern in (_DATE_TIME, _DATE, _TIME):
        text = re.sub(pattern, " ", text)
    return _PHONE.sub(lambda match: " " if len(re.sub(r"\D", "", match[0])) >= 7 else match[0], text)


_SPEAKER = re.compile(r"^\s*(caller|agent|tool|you)(?: \[[^\]]*\])?:\s*", re.I)


def _spoken(text: str) -> str:
    """What was said in a transcript of ``speaker: words`` lines: the words, without the
    speakers and without the tool lines; other text as it is."""
    lines = []
    for line in text.splitlines():
        label = _SPEAKER.match(line)
        if label is None:
            lines.append(line)
        elif label[1].lower() != "tool":
            lines.append(line[label.end() :])
    return "\n".join(lines)


def _summary(text: str, limit: int = 30) -> str:
    """The first sentences said, at most ``limit`` words."""
    words: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", " ".join(_spoken(text).split())):
        if words and len(words) + len(sentence.split()) > limit:
            break
        words += sentence.split()
    return " ".join(words[:limit])


def _find_phone(text: str) -> str | None:
    for match in _PHONE.finditer(re.sub(_DATE_TIME, " ", re.sub(_DATE, " ", text))):
        digits = re.sub(r"\D", "", match[0])
        if 7 <= len(digits) <= 15:
            return ("+" if match[0].startswith("+") else "") + digits
    return None


def _named(text: str, name: str, after: str) -> re.Match[str] | None:
    """``after`` following the property's name (``caller name is ...``), or its last word alone."""
    words = _words(name)
    for tried in (words, words[-1:]) if len(words) > 1 else (words,):
        if tried and (match := re.search(_words_pattern(tried) + after, text, re.I)):
            return match
    return None


def _derive_string(schema: JsonObject, text: str, name: str) -> tuple[str, bool]:
    if schema.get("format") in _FORMAT_VALUES:
        finder, fallback = _FORMAT_VALUES[schema["format"]]
        match = re.search(finder, text) if finder else None
        return (match[0], True) if match else (fallback, False)
    if "phone" in name.lower():
        phone = _find_phone(text)
        return (phone, True) if phone else ("", False)
    if "summar" in name.lower():
        return _summary(text), bool(text.strip())
    if "reason" in name.lower():
        # The fake's verdicts are a rule (booleans: a yes-word in the input); it says so.
        found = "an affirmation" if _YES.search(text) else "no affirmation"
        reason = f"The offline stand-in found {found} in the call (it matches words; it does not understand)."
        return reason, True
    named = _named(text, name, r"\s*(?:is|was|are|:|=)\s*([^.,;!?\n]+)")
    if named:
        return " ".join(named[1].split()[:8]), True
    if isinstance(schema.get("description"), str) and schema["description"]:
        return schema["description"], False
    return " ".join(text.split()[:8]), False


# Booleans that judge the whole call (a verdict, a simulated caller's "done"): any yes-word.
_VERDICTS = frozenset({"success", "successful", "succeeded", "passed", "pass", "done", "ok", "resolved"})


def _derive_boolean(text: str, name: str) -> tuple[bool, bool]:
    """A verdict is a yes-word anywhere; any other yes/no (``callback_requested``) is one only
    where the call mentions it: otherwise false, and not found (null when nullable)."""
    words = _words(name)
    if (
        words
        and words[-1].lower() not in _VERDICTS
        and not any(_mentions(text, w) for w in words if len(w) > 3)
    ):
        return False, False
    return (True, True) if _YES.search(text) else (False, _NO.search(text) is not None)


def _fit_pattern(value: str, pattern: str, text: str) -> str:
    """A candidate that matches ``pattern``: the value, a match in the input, or "". Patterns
    none of these satisfy keep the value (the fake does not generate strings from regexes)."""
    found = re.search(pattern.removeprefix("^").removesuffix("$"), text)
    for candidate in (value, found[0] if found else None, ""):
        if candidate is not None and re.search(pattern, candidate):
            return candidate
    return value


def _derive_number(schema: JsonObject, text: str, name: str, integer: bool) -> tuple[int | float, bool]:
    plain, words = _plain(text), _words(name)
    match = (
        (re.search(rf"({_NUMBER})\s+{_words_pattern(words)}", plain, re.I) if words else None)  # 3 nights
        or _named(plain, name, rf"\s*(?:is|was|are|of|:|=)?\s*({_NUMBER})")  # budget is 120
        or re.search(f"({_NUMBER})", plain)
    )
    return _fit_number(float(match[1]) if match else 0.0, schema, integer), match is not None


def _fit_number(value: float, schema: JsonObject, integer: bool) -> int | float:
    """``value`` moved inside the schema's bounds, as far as they are consistent (a
    contradictory schema is the caller's bug, not the fake's)."""
    low, high = schema.get("minimum"), schema.get("maximum")
    above, below = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    step = schema.get("multipleOf")
    if integer:
        lows = [math.ceil(low)] if low is not None else []
        lows += [math.floor(above) + 1] if above is not None else []
        highs = [math.floor(high)] if high is not None else []
        highs += [math.ceil(below) - 1] if below is not None else []
        result = min([max([math.trunc(value), *lows]), *highs])
        return int(math.ceil(result / step) * step) if step else result
    if low is not None:
        value = max(value, low)
    if high is not None:
        value = min(value, high)
    if above is not None and value <= above:
        value = above + 1 if below is None else (above + below) / 2
    if below is not None and value >= below:
        value = below - 1 if above is None else (above + below) / 2
    if step:
        value = math.ceil(value / step) * step
    return int(value) if float(value).is_integer() else value


def _derive(schema: JsonObject, root: JsonObject, text: str, name: str, depth: int) -> tuple[Any, bool]:
    """A value for ``schema`` and whether it came from the input (False: a fallback)."""
    if depth > 4 * _MAX_DEPTH:  # a schema that never ends (recursion without null or array)
        return None, False
    if "$ref" in schema:
        return _derive(_resolve(root, schema["$ref"]) or {}, root, text, name, depth + 1)
    if "const" in schema:
        return schema["const"], True
    if "anyOf" in schema:
        branches = [branch for branch in schema["anyOf"] if isinstance(branch, dict)]
        others = [branch for branch in branches if branch.get("type") != "null"]
        nullable = len(others) < len(branches)
        if not others or (nullable and depth > _MAX_DEPTH):
            return None, not others
        value, found = _derive(others[0], root, text, name, depth)
        return (None, False) if nullable and not found else (value, found)
    types = schema.get("type", "object" if "properties" in schema else "string")
    listed = types if isinstance(types, list) else [types]
    kind = next((item for item in listed if item != "null"), "null")
    enum = schema.get("enum")
    if kind == "null" or ("null" in listed and depth > _MAX_DEPTH):
        return None, kind == "null"
    if isinstance(enum, list) and enum:
        options = [option for option in enum if option is not None] or enum
        mentioned = [option for option in options if _mentions(text, str(option))]
        value, found = (mentioned[0], True) if mentioned else (options[0], False)
    elif kind == "object":
        properties = schema.get("properties") or {}
        value = {key: _derive(child, root, text, key, depth + 1)[0] for key, child in properties.items()}
        found = True
    elif kind == "array":
        count = max(1, schema.get("minItems", 0)) if depth <= _MAX_DEPTH else schema.get("minItems", 0)
        count = min(count, schema.get("maxItems", count))
        item = _derive(schema.get("items") or {}, root, text, name, depth + 1)[0] if count else None
        value, found = [item] * count, True
    elif kind == "boolean":
        value, found = _derive_boolean(text, name)
    elif kind in ("integer", "number"):
        value, found = _derive_number(schema, text, name, kind == "integer")
    else:
        value, found = _derive_string(schema, text, name)
        if isinstance(schema.get("pattern"), str):
            fitted = _fit_pattern(value, schema["pattern"], text)
            # A fallback that breaks the pattern, replaced by a match in the input: found there.
            found = found or (fitted != value and fitted != "")
            value = fitted
    if "null" in listed and not found and (enum is None or None in enum):
        return None, False
    return value, found


def _broken(value: Any, schema: JsonObject) -> Any:
    """The value without its first required property; a wrong type when there is none."""
    required = [key for key in schema.get("required", []) if isinstance(value, dict) and key in value]
    if required:
        return {key: item for key, item in value.items() if key != required[0]}
    return {} if isinstance(value, list) else []


def _tokens(chars: int) -> int:
    return max(1, math.ceil(chars / 4))  # roughly four characters a token in English


def _response_body(request: _Request, *, invalid_output: bool) -> JsonObject:
    facts = " ".join(turn.text for turn in request.turns if turn.role in ("user", "assistant"))
    fmt = request.text_format
    if fmt is None:
        text = _summary(facts) or "OK."
        text_config: JsonObject = {"type": "text"}
    else:
        value = _derive(fmt.schema, fmt.schema, facts, "", 0)[0]
        value = _broken(value, fmt.schema) if invalid_output else value
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        text_config = {
            "type": "json_schema",
            "name": fmt.name,
            "schema": fmt.schema,
            "strict": fmt.strict,
            "description": fmt.description,
        }
    body = request.body
    now = int(time.time())
    input_tokens = _tokens(sum(len(turn.text) for turn in request.turns) + len(request.instructions or ""))
    output_tokens = _tokens(len(text))
    return {
        "id": "resp_" + secrets.token_hex(24),
        "object": "response",
        "created_at": now,
        "completed_at": now,
        "status": "completed",
        "background": False,
        "error": None,
        "incomplete_details": None,
        "instructions": request.instructions,
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "metadata": body.get("metadata") or {},
        "model": request.model,
        "output": [
            {
                "type": "message",
                "id": "msg_" + secrets.token_hex(24),
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
            }
        ],
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": text_config, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_logprobs": 0,
        "top_p": body.get("top_p", 1.0),
        "truncation": "disabled",
        "usage": {
            "input_tokens": input_tokens,
            # cache_write_tokens is required by openai 3.60's InputTokensDetails
            "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        },
        "user": None,
    }


# --- the server ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fault:
    kind: Literal["fail", "delay", "invalid_output"]
    status: int = 0
    retry_after: float | None = None
    seconds: float = 0.0


def _fault_error(fault: _Fault) -> _ApiError:
    if fault.status == 429:
        message = "Rate limit reached for requests. Please try again later."
        return _ApiError(429, message, code="rate_limit_exceeded", kind="rate_limit_error")
    if fault.status >= 500:
        message = "The server had an error while processing your request. Sorry about that!"
        return _ApiError(fault.status, message, kind="server_error")
    return _ApiError(fault.status, f"Scripted failure: HTTP {fault.status}.")


class FakeResponsesServer:
    """``POST /v1/responses`` on ``http://127.0.0.1:<free port>/v1``, served from a thread.

    Every request body that parses as a JSON object is kept in ``requests``, in arrival order,
    faults included. The fault queue is first in, first out: each ``fail_next``, ``delay_next``
    or ``invalid_output_next`` shapes exactly one later request to ``/v1/responses``, before
    authentication, as a proxy or an overloaded service would. Any non-empty Bearer key is
    accepted unless ``api_key`` is given.
    """

    def __init__(self, *, api_key: str | None = None, port: int = 0) -> None:
        self._api_key = api_key
        self._port = port
        self._lock = threading.Lock()
        self._requests: list[JsonObject] = []
        self._faults: list[_Fault] = []
        self._stopping = threading.Event()
        self._http = LocalHttpServer("fake-openai-responses")

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._stopping.clear()
        self._http.start("127.0.0.1", self._port, _handler_for(self))

    def stop(self) -> None:
        if self._http.running:
            self._stopping.set()  # wakes handlers sleeping for delay_next
        self._http.stop()

    def __enter__(self) -> FakeResponsesServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        """What to pass as ``OpenAI(base_url=...)``."""
        return f"http://127.0.0.1:{self._http.port}/v1"

    # --- test controls -----------------------------------------------------------------

    @property
    def requests(self) -> list[JsonObject]:
        """A snapshot of the request bodies received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def fail_next(self, status: int, *, retry_after: float | None = None) -> None:
        """Answer one request with this HTTP status and OpenAI's error body."""
        if not 400 <= status <= 599:
            raise ValueError(f"fail_next needs an error status, not {status}")
        self._enqueue(_Fault("fail", status=status, retry_after=retry_after))

    def delay_next(self, seconds: float) -> None:
        """Sleep this long before answering one request (to make a client time out)."""
        if seconds < 0:
            raise ValueError("delay_next needs a non-negative delay")
        self._enqueue(_Fault("delay", seconds=seconds))

    def invalid_output_next(self) -> None:
        """Answer one structured request 200 with JSON that breaks its schema (a required
        property left out). On a plain-text request it changes nothing."""
        self._enqueue(_Fault("invalid_output"))

    def reset(self) -> None:
        """Forget the recorded requests and any scripted fault not used yet."""
        with self._lock:
            self._requests.clear()
            self._faults.clear()

    def _enqueue(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    # --- request handling (server threads) ---------------------------------------------

    def _handle(
        self, method: str, path: str, authorization: str | None, raw: bytes
    ) -> tuple[int, JsonObject, dict[str, str]]:
        """Status, body and extra headers for one request."""
        path = path.split("?", 1)[0]
        if method != "POST" or path.rstrip("/") != "/v1/responses":
            return 404, _ApiError(404, f"Invalid URL ({method} {path})").body(), {}
        try:
            body: object = json.loads(raw)
        except ValueError:
            body = None
        with self._lock:
            if isinstance(body, dict):
                self._requests.append(body)
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None and fault.kind == "fail":
            headers = {"retry-after": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            return fault.status, _fault_error(fault).body(), headers
        if fault is not None and fault.kind == "delay":
            self._stopping.wait(fault.seconds)
        try:
            self._authenticate(authorization)
            if body is None:
                raise _ApiError(
                    400, "We could not parse the JSON body of your request. The body must be valid JSON."
                )
            request = _parse_request(body)
        except _ApiError as exc:
            return exc.status, exc.body(), {}
        invalid = fault is not None and fault.kind == "invalid_output"
        return 200, _response_body(request, invalid_output=invalid), {}

    def _authenticate(self, header: str | None) -> None:
        scheme, _, key = (header or "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            message = (
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
            raise _ApiError(401, message)
        if self._api_key is not None and key.strip() != self._api_key:
            raise _ApiError(
                401, f"Incorrect API key provided: {key.strip()[:4]}****.", code="invalid_api_key"
            )


def _handler_for(fake: FakeResponsesServer) -> type[BaseHTTPRequestHandler]:
    class Handler(KeepAliveHandler):
        http = fake._http
        server_version = "fake-openai-responses"

        def do_POST(self) -> None:
            self._serve("POST")

        def do_GET(self) -> None:
            self._serve("GET")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            status, body, headers = fake._handle(method, self.path, self.headers.get("Authorization"), raw)
            data = json.dumps(body).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("x-request-id", "req_" + secrets.token_hex(16))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up first (a timeout during delay_next)
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: tests read ``server.requests`` instead."""

    return Handler


def main() -> None:
    """``python -m calls.fakes.openai_responses --port N``: serve until SIGTERM or Ctrl-C, in
    a process of its own (the benchmark runs it apart from its driver)."""
    import argparse
    import signal

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", default=None, help="accept only this Bearer key")
    args = parser.parse_args()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with FakeResponsesServer(api_key=args.api_key, port=args.port) as server:
        print(f"fake Responses API on {server.base_url}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    main()
