"""Function tools the agent can call: a registry of plain Python functions.

A tool is a function (sync or async) with type hints and a docstring::

    from calls.tools import tool

    @tool
    def book_table(name: str, party_size: int, time: str) -> dict:
        \"\"\"Book a table at the restaurant.

        Args:
            name: Name the booking is under.
            party_size: Number of guests.
            time: Time of the booking, for example "19:30".
        \"\"\"
        ...

Its JSON Schema for ``session.update`` is derived from the signature; the docstring's
first paragraph is the description and its ``Args:`` section describes the parameters.
A parameter named ``context`` (annotated ``ToolContext``) receives the call's details and
is not shown to the model. ``settings.VOICE_AGENT_TOOLS`` lists modules (imported at first
use, so their ``@tool`` functions register) or dotted paths of plain functions.
"""

from __future__ import annotations

import asyncio
import copy
import enum
import functools
import importlib
import inspect
import json
import logging
import re
import time
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints, overload

from django.conf import settings

from calls.threads import in_db_thread

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
MAX_OUTPUT_CHARS = 16_000
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


@dataclass(frozen=True)
class ToolContext:
    """What a tool may want to know about the call it runs in."""

    call_sid: str
    from_number: str
    to_number: str
    agent_name: str


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    function: Callable[..., Any] | None  # None for built-ins the bridge handles itself
    timeout: float = DEFAULT_TIMEOUT
    wants_context: bool = False

    def definition(self) -> dict[str, Any]:
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": self.parameters,
        }


@dataclass(frozen=True)
class ToolOutcome:
    output: Any  # JSON-serialisable result, sent back to the model
    error: str  # "" when the tool succeeded
    duration_ms: int

    def as_model_output(self) -> str:
        """The ``function_call_output.output`` string: the result, or a structured error."""
        if self.error:
            return json.dumps({"error": self.error})
        text = json.dumps(self.output, default=str)
        if len(text) > MAX_OUTPUT_CHARS:
            return json.dumps({"error": "the tool's result was too large to return"})
        return text


_registry: dict[str, Tool] = {}
_modules_loaded = False


class ToolDefinitionError(TypeError):
    """A function cannot be a tool (its signature has no JSON Schema equivalent)."""


# Any function whose signature has a JSON Schema equivalent; ``@tool`` returns it unchanged.
F = TypeVar("F", bound=Callable[..., Any])


@overload
def tool(function: F, *, name: str | None = None, timeout: float = DEFAULT_TIMEOUT) -> F: ...
@overload
def tool(
    function: None = None, *, name: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> Callable[[F], F]: ...
def tool(
    function: F | None = None, *, name: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> F | Callable[[F], F]:
    """Register ``function`` as a tool (usable as ``@tool`` or ``@tool(name=..., timeout=...)``)."""

    def register(func: F) -> F:
        registered = tool_from_function(func, name=name, timeout=timeout)
        _registry[registered.name] = registered
        return func

    return register(function) if function is not None else register


def tool_from_function(
    func: Callable[..., Any], *, name: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> Tool:
    tool_name = name or func.__name__
    if not _NAME.match(tool_name):
        raise ToolDefinitionError(f"tool name {tool_name!r} must match {_NAME.pattern}")
    description, arg_docs = parse_docstring(inspect.getdoc(func) or "")
    if not description:
        raise ToolDefinitionError(f"tool {tool_name!r} needs a docstring: the model reads it")
    parameters, wants_context = schema_from_signature(func, arg_docs)
    return Tool(tool_name, description, parameters, func, timeout, wants_context)


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """First paragraph, and ``name: text`` entries of a Google-style ``Args:`` section."""
    paragraphs = doc.strip().split("\n\n")
    description = " ".join(paragraphs[0].split()) if paragraphs and paragraphs[0] else ""
    if description.startswith("Args:"):
        description = ""
    args: dict[str, str] = {}
    in_args = False
    current = ""
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped in ("Args:", "Arguments:", "Parameters:"):
            in_args = True
            continue
        if in_args:
            if stripped.endswith(":") and not line.startswith((" ", "\t")):
                break  # the next section (Returns:, Raises:)
            match = re.match(r"^(\w+)\s*(?:\([^)]*\))?:\s*(.*)$", stripped)
            if match:
                current = match.group(1)
                args[current] = match.group(2)
            elif stripped and current:
                args[current] += " " + stripped
    return description, args


def _json_type(annotation: Any, where: str) -> dict[str, Any]:
    origin = get_origin(annotation)
    args = get_args(annotation)
    if annotation is str:
        return {"type": "string"}
    if annotation is bool:
        return {"type": "boolean"}
    if annotation is int:
        return {"type": "integer"}
    if annotation is float:
        return {"type": "number"}
    if annotation is date:
        return {"type": "string", "format": "date"}
    if annotation is datetime:
        return {"type": "string", "format": "date-time"}
    if inspect.isclass(annotation) and issubclass(annotation, enum.Enum):
        return {"type": "string", "enum": [str(member.value) for member in annotation]}
    if origin is Literal:
        values = list(args)
        kinds = {type(v) for v in values}
        kind = {str: "string", int: "integer", bool: "boolean"}.get(kinds.pop()) if len(kinds) == 1 else None
        return {"type": kind, "enum": values} if kind else {"enum": values}
    if origin in (list, tuple, set, frozenset) or annotation in (list, tuple, set):
        item = args[0] if args else str
        return {"type": "array", "items": _json_type(item, where)}
    if origin is dict or annotation is dict:
        return {"type": "object"}
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _json_type(options[0], where)
        return {"anyOf": [_json_type(a, where) for a in options]}
    raise ToolDefinitionError(f"{where}: type {annotation!r} has no JSON Schema mapping")


def _is_optional(annotation: Any) -> bool:
    return get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in get_args(annotation)


def schema_from_signature(
    func: Callable[..., Any], arg_docs: dict[str, str] | None = None
) -> tuple[dict[str, Any], bool]:
    """JSON Schema of the parameters, and whether the function takes ``context``."""
    arg_docs = arg_docs or {}
    try:
        hints = get_type_hints(func)
    except NameError as exc:
        raise ToolDefinitionError(f"{func.__name__}: a type hint cannot be resolved ({exc})") from None
    properties: dict[str, Any] = {}
    required: list[str] = []
    wants_context = False
    for parameter in inspect.signature(func).parameters.values():
        if parameter.name == "context":
            wants_context = True
            continue
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            raise ToolDefinitionError(f"{func.__name__}: *args/**kwargs cannot be described to the model")
        if parameter.name not in hints:
            raise ToolDefinitionError(f"{func.__name__}: parameter {parameter.name!r} needs a type hint")
        annotation = hints[parameter.name]
        schema = _json_type(annotation, f"{func.__name__}({parameter.name})")
        if parameter.name in arg_docs:
            schema["description"] = arg_docs[parameter.name]
        if parameter.default is not parameter.empty and parameter.default is not None:
            schema["default"] = (
                parameter.default.value if isinstance(parameter.default, enum.Enum) else parameter.default
            )
        properties[parameter.name] = schema
        if parameter.default is parameter.empty and not _is_optional(annotation):
            required.append(parameter.name)
    schema_out: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema_out["required"] = required
    return schema_out, wants_context


# --- built-ins: described here, carried out by the bridge (they act on the call itself) ---

END_CALL = Tool(
    name="end_call",
    description=(
        "Hang up the phone call. First say a short goodbye to the caller in the same turn, "
        "then call this. Use it when the conversation is finished or the caller asks to end it."
    ),
    parameters={
        "type": "object",
        "properties": {"reason": {"type": "string", "description": "Why the call is ending, briefly."}},
        "additionalProperties": False,
    },
    function=None,
)

TRANSFER_CALL = Tool(
    name="transfer_call",
    description=(
        "Transfer the caller to a human. First tell the caller you are transferring them, in "
        "the same turn, then call this."
    ),
    parameters={
        "type": "object",
        "properties": {
            "destination": {
                "type": "string",
                "description": "Which number to transfer to (one of the allowed destinations). "
                "Omit for the default.",
            },
            "reason": {"type": "string", "description": "Why the caller needs a human."},
        },
        "additionalProperties": False,
    },
    function=None,
)

BUILTINS = {END_CALL.name: END_CALL, TRANSFER_CALL.name: TRANSFER_CALL}


def _load_modules() -> None:
    global _modules_loaded
    if _modules_loaded:
        return
    _modules_loaded = True
    for path in getattr(settings, "VOICE_AGENT_TOOLS", []):
        try:
            importlib.import_module(path)  # a module whose @tool functions register themselves
            continue
        except ModuleNotFoundError as exc:
            if exc.name != path or "." not in path:
                raise
        module_path, attribute = path.rsplit(".", 1)  # a dotted path to one plain function
        function = getattr(importlib.import_module(module_path), attribute)
        if attribute not in _registry:
            _registry[attribute] = tool_from_function(function)


def registered() -> dict[str, Tool]:
    """Every tool an agent may enable: the built-ins and the registered functions."""
    _load_modules()
    return {**BUILTINS, **_registry}


def definitions(names: list[str], *, transfer_destinations: list[str] | None = None) -> list[dict[str, Any]]:
    """Tool definitions for ``session.update``; unknown names are logged and skipped."""
    tools = registered()
    out = []
    for name in names:
        found = tools.get(name)
        if found is None:
            logger.warning("Agent enables unknown tool %r; it is not offered to the model", name)
            continue
        definition = copy.deepcopy(found.definition())
        if name == TRANSFER_CALL.name and transfer_destinations:
            definition["parameters"]["properties"]["destination"]["enum"] = transfer_destinations
        out.append(definition)
    return out


def _coerce(value: Any, annotation: Any) -> Any:
    """The model sends JSON; give the function the Python types its signature promises."""
    if value is None:
        return None
    origin = get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in get_args(annotation) if a is not type(None)]
        return _coerce(value, options[0]) if len(options) == 1 else value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is date and isinstance(value, str):
        return date.fromisoformat(value)
    if annotation is datetime and isinstance(value, str):
        return datetime.fromisoformat(value)
    if inspect.isclass(annotation) and issubclass(annotation, enum.Enum):
        return annotation(value)
    checks = {str: str, int: int, bool: bool, float: float}
    expected = checks.get(annotation)
    if expected is not None and (
        not isinstance(value, expected) or (expected is int and isinstance(value, bool))
    ):
        raise TypeError(f"expected {expected.__name__}, got {type(value).__name__}")
    return value


def bind_arguments(found: Tool, arguments: str, context: ToolContext) -> dict[str, Any]:
    """Parse and check the model's arguments against the signature; ValueError if wrong."""
    assert found.function is not None
    try:
        raw = json.loads(arguments or "{}")
    except ValueError:
        raise ValueError("arguments are not valid JSON") from None
    if not isinstance(raw, dict):
        raise ValueError("arguments must be a JSON object")
    hints = get_type_hints(found.function)
    signature = inspect.signature(found.function)
    unknown = set(raw) - {p for p in signature.parameters if p != "context"}
    if unknown:
        raise ValueError(f"unknown argument(s): {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for parameter in signature.parameters.values():
        if parameter.name == "context":
            kwargs["context"] = context
        elif parameter.name in raw:
            try:
                kwargs[parameter.name] = _coerce(raw[parameter.name], hints.get(parameter.name, Any))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"argument {parameter.name!r}: {exc}") from None
        elif parameter.default is parameter.empty and not _is_optional(hints.get(parameter.name)):
            raise ValueError(f"missing required argument {parameter.name!r}")
    return kwargs


SyncRunner = Callable[[Callable[[], Any]], Awaitable[Any]]


async def _in_db_thread(call: Callable[[], Any]) -> Any:
    # A tool may use the database: the same connection care as our own services.
    return await in_db_thread(call)()


async def run_tool(
    name: str, arguments: str, context: ToolContext, *, run_sync: SyncRunner = _in_db_thread
) -> ToolOutcome:
    """Run a registered tool off the audio loop, with its timeout. Never raises: bad
    arguments, exceptions and timeouts become a structured error for the model.
    ``run_sync`` runs a plain (not async) tool: by default in a worker thread on a sound
    database connection; the pytest helper runs it in the test's own thread instead."""
    started = time.monotonic()

    def outcome(output: Any = None, error: str = "") -> ToolOutcome:
        return ToolOutcome(output, error, int((time.monotonic() - started) * 1000))

    found = registered().get(name)
    if found is None or found.function is None:
        return outcome(error=f"unknown tool {name!r}")
    try:
        kwargs = bind_arguments(found, arguments, context)
    except ValueError as exc:
        return outcome(error=f"invalid arguments: {exc}")
    function = found.function
    try:
        if inspect.iscoroutinefunction(function):
            result = await asyncio.wait_for(function(**kwargs), found.timeout)
        else:
            result = await asyncio.wait_for(run_sync(functools.partial(function, **kwargs)), found.timeout)
    except TimeoutError:
        logger.warning("call %s: tool %s timed out after %.1f s", context.call_sid, name, found.timeout)
        return outcome(error=f"the tool did not answer within {found.timeout:g} seconds")
    except Exception as exc:
        logger.warning(
            "call %s: tool %s raised %s", context.call_sid, name, type(exc).__name__, exc_info=True
        )
        return outcome(error=f"{type(exc).__name__}: {exc}"[:500])
    try:
        json.dumps(result, default=str)
    except (TypeError, ValueError):
        return outcome(error="the tool returned a value that is not JSON-serialisable")
    return outcome(result if isinstance(result, dict) else {"result": result})
