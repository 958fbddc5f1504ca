"""The pure part of post-call analysis: plans checked, strict schemas generated, answers
checked before they are stored, the transcript as the model reads it (calls/analysis.py)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from calls.analysis import (
    FIELD_TYPES,
    FieldSpec,
    Plan,
    PlanError,
    Turn,
    check_output,
    field_columns,
    instructions,
    output_schema,
    parse_fields,
    plan_from_snapshot,
    snapshot,
    transcript_text,
)

RESERVATION = Plan(
    summary=True,
    fields=(
        FieldSpec("party_size", "number", "How many people", required=True),
        FieldSpec("date", "date", "Day of the booking"),
        FieldSpec("seating", "choice", choices=("inside", "terrace")),
        FieldSpec("callback_number", "phone"),
        FieldSpec("wants_newsletter", "yes_no"),
        FieldSpec("notes", "text"),
    ),
    success_criteria="A table was booked, or the caller was told why not.",
)

GOOD_ANSWER: dict[str, Any] = {
    "summary": "The caller booked a table for four on Friday.",
    "data": {
        "party_size": 4,
        "date": "2026-12-11",
        "seating": "terrace",
        "callback_number": "+14155550100",
        "wants_newsletter": None,
        "notes": None,
    },
    "success": True,
    "reason": "The booking was confirmed.",
}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("nope", "Fields must be a list"),
        ([{"name": "Party Size", "type": "number"}], "the name 'Party Size' is not valid"),
        ([{"name": "9lives", "type": "text"}], "is not valid"),
        ([{"name": "size", "type": "integer"}], "the type 'integer' is not one of text, number"),
        ([{"name": "a", "type": "text"}, {"name": "a", "type": "number"}], "is used twice"),
        ([{"name": "seat", "type": "choice"}], "a choice field needs a list of choices"),
        ([{"name": "seat", "type": "choice", "choices": ["in", "in"]}], "choices must be distinct"),
        ([{"name": "size", "type": "number", "choices": ["1"]}], "only a choice field has choices"),
        ([{"name": "size", "type": "number", "required": "yes"}], "required must be true or false"),
        ([{"name": "size", "type": "number", "unit": "people"}], "unknown key(s) unit"),
        (["size"], "must be an object"),
    ],
)
def test_a_bad_field_is_refused_with_a_message_naming_it(raw: object, message: str) -> None:
    with pytest.raises(PlanError) as refused:
        parse_fields(raw)
    assert message in str(refused.value)


def test_fields_round_trip_through_a_stored_snapshot() -> None:
    assert plan_from_snapshot(snapshot(RESERVATION)) == RESERVATION


def test_the_schema_is_strict_and_optional_fields_are_nullable() -> None:
    schema = output_schema(RESERVATION)
    assert schema["required"] == ["summary", "data", "success", "reason"]
    assert schema["additionalProperties"] is False
    data = schema["properties"]["data"]
    assert data["required"] == [spec.name for spec in RESERVATION.fields]
    assert data["additionalProperties"] is False
    assert data["properties"]["party_size"]["type"] == "number"
    assert data["properties"]["date"]["type"] == ["string", "null"]
    assert data["properties"]["seating"]["enum"] == ["inside", "terrace", None]


def test_a_plan_asking_for_nothing_has_no_schema() -> None:
    with pytest.raises(PlanError, match="asks for nothing"):
        output_schema(Plan(summary=False))


def test_a_good_answer_is_split_into_what_the_rows_store() -> None:
    analysis = check_output(RESERVATION, GOOD_ANSWER)
    assert analysis.summary == GOOD_ANSWER["summary"]
    assert analysis.data == GOOD_ANSWER["data"]
    assert analysis.success is True and analysis.reason == "The booking was confirmed."


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"data": {**GOOD_ANSWER["data"], "party_size": None}}, "party_size is required"),
        ({"data": {**GOOD_ANSWER["data"], "party_size": "four"}}, "'four' is not a valid number"),
        ({"data": {**GOOD_ANSWER["data"], "seating": "roof"}}, "'roof' is not a valid choice"),
        ({"data": {**GOOD_ANSWER["data"], "date": "2026-02-30"}}, "'2026-02-30' is not a valid date"),
        ({"data": {**GOOD_ANSWER["data"], "callback_number": "555-0100"}}, "is not a valid phone"),
        ({"data": {**GOOD_ANSWER["data"], "wants_newsletter": "yes"}}, "is not a valid yes/no"),
        ({"data": {**GOOD_ANSWER["data"], "extra": 1}}, "unexpected field 'extra'"),
        ({"success": "yes"}, "success is not true or false"),
        ({"mood": "happy"}, "unexpected key 'mood'"),
    ],
)
def test_a_wrong_answer_is_refused_naming_the_problem(change: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError) as refused:
        check_output(RESERVATION, {**GOOD_ANSWER, **change})
    assert message in str(refused.value)


def test_a_missing_key_is_refused() -> None:
    answer = {key: value for key, value in GOOD_ANSWER.items() if key != "reason"}
    with pytest.raises(PlanError, match="missing key 'reason'"):
        check_output(RESERVATION, answer)


def test_the_transcript_marks_interrupted_turns_and_keeps_tool_calls_in_order() -> None:
    text = transcript_text(
        [
            Turn("agent", "Luigi's, how can I help?"),
            Turn("caller", "A table for  four,\nFriday."),
            Turn("tool", "book_table(party_size=4) -> confirmed"),
            Turn("agent", "Booked! Would you also like", interrupted=True),
            Turn("caller", ""),
        ]
    )
    assert text.splitlines() == [
        "agent: Luigi's, how can I help?",
        "caller: A table for four, Friday.",
        "tool: book_table(party_size=4) -> confirmed",
        "agent [interrupted]: Booked! Would you also like",
        "caller: (nothing transcribed)",
    ]


def test_instructions_carry_the_summary_instruction_and_the_criteria() -> None:
    plan = Plan(summary=True, summary_instruction="One sentence, in French.", success_criteria="Booked.")
    text = instructions(plan)
    assert "One sentence, in French." in text and "Booked." in text and "null" not in text


def test_csv_columns_are_the_fields_of_every_plan_first_seen_first() -> None:
    other = Plan(fields=(FieldSpec("notes", "text"), FieldSpec("order_total", "number")))
    assert field_columns([RESERVATION, other]) == [
        "party_size",
        "date",
        "seating",
        "callback_number",
        "wants_newsletter",
        "notes",
        "order_total",
    ]


def _strict(schema: dict[str, Any]) -> None:
    """Structured Outputs' strict rules, recursively: objects list every property as required
    and allow no other."""
    if schema.get("type") == "object":
        assert schema["additionalProperties"] is False
        assert schema["required"] == list(schema["properties"])
        for child in schema["properties"].values():
            _strict(child)


field_specs = st.builds(
    lambda name, kind, required, choices: FieldSpec(
        name, kind, required=required, choices=tuple(choices) if kind == "choice" else ()
    ),
    st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True),
    st.sampled_from(FIELD_TYPES),
    st.booleans(),
    st.lists(st.text(min_size=1, max_size=8).filter(str.strip), min_size=1, max_size=4, unique=True),
)


@given(
    summary=st.booleans(),
    fields=st.lists(field_specs, max_size=6, unique_by=lambda spec: spec.name),
    criteria=st.sampled_from(["", "Booked."]),
)
def test_any_valid_plan_gives_a_strict_schema_that_survives_a_snapshot(
    summary: bool, fields: list[FieldSpec], criteria: str
) -> None:
    plan = Plan(summary=summary, fields=tuple(fields), success_criteria=criteria)
    if plan.is_empty:
        return
    _strict(output_schema(plan))
    assert plan_from_snapshot(snapshot(plan)) == plan
