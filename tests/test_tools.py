"""Tool schemas come from signatures; bad arguments, errors and timeouts become errors."""

from __future__ import annotations

import asyncio
import enum
import json
from datetime import date
from typing import Literal

import pytest

from calls import tools
from calls.tools import ToolContext, ToolDefinitionError, schema_from_signature, tool_from_function

CONTEXT = ToolContext(call_sid="CA" + "1" * 32, from_number="+15550001111", to_number="+1555", agent_name="A")


class Size(enum.Enum):
    SMALL = "small"
    LARGE = "large"


def book_table(
    name: str,
    party_size: int,
    day: date,
    seating: Literal["inside", "terrace"] = "inside",
    high_chair: bool = False,
    notes: str | None = None,
    tags: list[str] | None = None,
    size: Size = Size.SMALL,
    budget: float = 50.0,
    context: ToolContext | None = None,
) -> dict:
    """Book a table at the restaurant.

    Confirm first.

    Args:
        name: Name the booking is under.
        party_size: Number of guests,
            from 1 to 12.
        day: Date of the visit.

    Returns:
        A reference.
    """
    return {"name": name, "party_size": party_size, "day": day.isoformat(), "seating": seating}


def test_schema_is_derived_from_signature_and_docstring():
    found = tool_from_function(book_table)
    assert found.description == "Book a table at the restaurant."
    assert found.wants_context
    assert found.parameters == {
        "type": "object",
        "properties": {
            "name": {"type": "string", "description": "Name the booking is under."},
            "party_size": {"type": "integer", "description": "Number of guests, from 1 to 12."},
            "day": {"type": "string", "format": "date", "description": "Date of the visit."},
            "seating": {"type": "string", "enum": ["inside", "terrace"], "default": "inside"},
            "high_chair": {"type": "boolean", "default": False},
            "notes": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "size": {"type": "string", "enum": ["small", "large"], "default": "small"},
            "budget": {"type": "number", "default": 50.0},
        },
        "required": ["name", "party_size", "day"],
        "additionalProperties": False,
    }


def test_definition_is_a_realtime_function_tool():
    definition = tool_from_function(book_table).definition()
    assert definition["type"] == "function" and definition["name"] == "book_table"
    assert set(definition) == {"type", "name", "description", "parameters"}


def test_untyped_or_undocumented_functions_are_refused():
    def untyped(x):  # type: ignore[no-untyped-def]
        """Has no hints."""

    def undocumented(x: int) -> int:
        return x

    def variadic(*args: int) -> None:
        """Takes anything."""

    for function in (untyped, undocumented, variadic):
        with pytest.raises(ToolDefinitionError):
            tool_from_function(function)


def test_unsupported_types_are_refused():
    class Custom:
        pass

    def odd(value: Custom) -> None:
        """Takes an object."""

    with pytest.raises(ToolDefinitionError):
        schema_from_signature(odd)


def run(name, arguments, registered):
    tools.registered()  # load the configured modules before taking the snapshot
    saved = dict(tools._registry)
    tools._registry.update(registered)
    try:
        return asyncio.run(tools.run_tool(name, arguments, CONTEXT))
    finally:
        tools._registry.clear()
        tools._registry.update(saved)


def test_run_tool_coerces_arguments_and_passes_context():
    seen = {}

    def remember(day: date, context: ToolContext) -> dict:
        """Remember a day."""
        seen.update(day=day, call=context.call_sid)
        return {"ok": True}

    outcome = run("remember", json.dumps({"day": "2026-12-24"}), {"remember": tool_from_function(remember)})
    assert outcome.error == "" and outcome.output == {"ok": True}
    assert seen == {"day": date(2026, 12, 24), "call": CONTEXT.call_sid}


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ("not json", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"name": "A"}', "missing required argument 'party_size'"),
        ('{"name": "A", "party_size": "two", "day": "2026-01-01"}', "expected int"),
        ('{"name": "A", "party_size": 2, "day": "2026-01-01", "wine": "red"}', "unknown argument"),
        ('{"name": "A", "party_size": 2, "day": "soon"}', "argument 'day'"),
    ],
)
def test_bad_arguments_become_a_structured_error(arguments, message):
    outcome = run("book_table", arguments, {"book_table": tool_from_function(book_table)})
    assert message in outcome.error
    assert json.loads(outcome.as_model_output()) == {"error": outcome.error}


def test_exceptions_and_timeouts_become_errors():
    def explode() -> dict:
        """Always fails."""
        raise RuntimeError("database is down")

    async def hang() -> dict:
        """Never returns."""
        await asyncio.sleep(10)
        return {}

    outcome = run("explode", "{}", {"explode": tool_from_function(explode)})
    assert outcome.error == "RuntimeError: database is down"
    outcome = run("hang", "{}", {"hang": tool_from_function(hang, timeout=0.05)})
    assert "did not answer within 0.05 seconds" in outcome.error


def test_unknown_tool_is_an_error():
    assert run("nope", "{}", {}).error == "unknown tool 'nope'"


def test_non_dict_results_are_wrapped():
    def count() -> int:
        """Count."""
        return 3

    assert run("count", "{}", {"count": tool_from_function(count)}).output == {"result": 3}


def test_builtins_and_example_tools_are_offered():
    names = set(tools.registered())
    assert {"end_call", "transfer_call", "book_table", "opening_hours"} <= names
    [transfer] = tools.definitions(["transfer_call"], transfer_destinations=["+15550009999"])
    assert transfer["parameters"]["properties"]["destination"]["enum"] == ["+15550009999"]
    # Offering destinations to one agent does not leak into the shared definition.
    [plain] = tools.definitions(["transfer_call"])
    assert "enum" not in plain["parameters"]["properties"]["destination"]
