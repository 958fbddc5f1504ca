"""Agent tests, the pure part: each expectation passes and fails with a message that says
what happened; tests from stored calls; the JSON form; the stand-in's replies."""

from __future__ import annotations

import pytest

from calls import realtime
from calls.agent_tests import (
    ExpectedTool,
    Line,
    Spec,
    SpecError,
    ToolUse,
    Transcript,
    check,
    says,
    spec_from_call,
    spec_from_data,
    spec_to_data,
    standin_replies,
    value_matches,
)

BOOKING = {"name": "Rossi", "party_size": 2, "day": "2031-06-01", "time": "20:00"}


def conversation(*tools: ToolUse, agent: tuple[str, ...] = ("You're booked, Mr Rossi!",)) -> Transcript:
    lines = [Line("caller", "A table for two, please.")]
    lines += [Line("tool", tool=use) for use in tools]
    lines += [Line("agent", text) for text in agent]
    return Transcript(tuple(lines))


def only(spec: Spec, transcript: Transcript):
    [outcome] = check(spec, transcript)
    return outcome


def test_an_expected_tool_passes_on_a_subset_of_its_arguments():
    spec = Spec(("hi",), expect_tools=(ExpectedTool("book_table", {"party_size": 2, "name": "rossi"}),))
    assert only(spec, conversation(ToolUse("book_table", BOOKING))).passed


def test_an_expected_tool_never_called_says_what_was_called():
    spec = Spec(("hi",), expect_tools=(ExpectedTool("book_table", {}),))
    outcome = only(spec, conversation(ToolUse("opening_hours", {"day": "weekday"})))
    assert not outcome.passed
    assert outcome.message == 'book_table was never called (called: opening_hours({"day": "weekday"}))'


def test_an_expected_tool_with_other_arguments_names_the_differences():
    spec = Spec(("hi",), expect_tools=(ExpectedTool("book_table", {"party_size": 2, "time": "20:00"}),))
    outcome = only(spec, conversation(ToolUse("book_table", {**BOOKING, "party_size": 4})))
    assert not outcome.passed
    assert outcome.message == "book_table was called, but with party_size=4"


def test_two_expectations_of_one_tool_need_two_calls():
    spec = Spec(("hi",), expect_tools=(ExpectedTool("book_table", {}), ExpectedTool("book_table", {})))
    first, second = check(spec, conversation(ToolUse("book_table", BOOKING)))
    assert first.passed and not second.passed
    assert "already matched by another expectation" in second.message


def test_a_forbidden_tool_fails_when_called():
    spec = Spec(("hi",), forbid_tools=("transfer_call",))
    assert only(spec, conversation()).passed
    outcome = only(spec, conversation(ToolUse("transfer_call", {"destination": "+15550001"})))
    assert not outcome.passed
    assert (
        outcome.message
        == 'transfer_call was called 1 time(s): called: transfer_call({"destination": "+15550001"})'
    )


def test_phrases_the_agent_must_say_ignore_case_and_punctuation():
    assert only(Spec(("hi",), must_say=("you're BOOKED",)), conversation()).passed
    outcome = only(Spec(("hi",), must_say=("reference",)), conversation())
    assert not outcome.passed and outcome.message == "the agent never said 'reference'"


def test_a_phrase_is_whole_words_and_only_the_agents():
    transcript = conversation(agent=("We have no tables.",))
    assert not says("We have no tables.", "table")  # "tables" is not "table"
    # The caller said "table"; the agent did not.
    assert only(Spec(("hi",), must_not_say=("table",)), transcript).passed


def test_a_phrase_the_agent_must_not_say_quotes_the_line():
    outcome = only(Spec(("hi",), must_not_say=("booked",)), conversation())
    assert not outcome.passed
    assert outcome.message == "the agent said 'booked': \"You're booked, Mr Rossi!\""


@pytest.mark.parametrize(
    ("tools", "ending"),
    [
        ((), "open"),
        ((ToolUse("end_call", {}),), "agent_ended"),
        ((ToolUse("transfer_call", {}),), "transferred"),
    ],
)
def test_the_ending_comes_from_the_ending_tools(tools, ending):
    assert conversation(*tools).ending == ending
    for expected in ("agent_ended", "transferred", "open"):
        outcome = only(Spec(("hi",), ending=expected), conversation(*tools))
        assert outcome.passed == (expected == ending)
        if not outcome.passed:
            assert outcome.message == f"the call ended {ending!r}, expected {expected!r}"


def test_any_ending_is_not_checked():
    assert check(Spec(("hi",)), conversation()) == []


@pytest.mark.parametrize(
    ("expected", "actual", "matches"),
    [
        (2, 2.0, True),
        (2, "2", False),
        (True, 1, False),
        ("Rossi ", "rossi", True),
        ({"a": {"b": 1}}, {"a": {"b": 1, "c": 2}, "d": 3}, True),
        ({"a": 1}, {"b": 1}, False),
        ([1, 2], [1, 2], True),
        ([1, 2], [2, 1], False),
        (None, None, True),
    ],
)
def test_values_match_as_documented(expected, actual, matches):
    assert value_matches(expected, actual) is matches


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "a test must be a JSON object"),
        ({"caller_turns": []}, "caller_turns or caller_goal: give the caller things to say"),
        ({"caller_turns": ["hi"], "caller_goal": "Book"}, "caller_turns or caller_goal"),
        ({"caller_goal": "Book", "max_turns": 0}, "max_turns must be a whole number from 1 to 20"),
        ({"caller_goal": "Book", "max_turns": True}, "max_turns must be a whole number"),
        ({"caller_goal": "Book", "standin": {"caller": [1]}}, "standin.caller must be a list of strings"),
        ({"caller_turns": "hello"}, "caller_turns must be a list of strings"),
        (
            {"caller_turns": ["hi"], "ending": "hung_up"},
            "ending must be one of any, agent_ended, transferred, open",
        ),
        ({"caller_turns": ["hi"], "expect_tools": [{"arguments": {}}]}, "expect_tools 1 needs a tool name"),
        (
            {"caller_turns": ["hi"], "expect_tools": [{"name": "x", "arguments": []}]},
            "expect_tools 1: only name",
        ),
        ({"caller_turns": ["hi"], "tool_results": []}, "tool_results must be an object"),
        ({"caller_turns": ["hi"], "colour": "red"}, "unknown key(s): colour"),
        (
            {"caller_turns": ["hi"], "standin": {"replies": [3]}},
            "standin.replies 1 must be a text or an object",
        ),
        (
            {"caller_turns": ["hi"], "standin": {"replies": [{"function_call": {"arguments": {}}}]}},
            "standin.replies 1: function_call needs a name",
        ),
        ({"caller_turns": ["hi"], "standin": {"variants": [{"replies": []}]}}, "standin.variants 1 needs"),
    ],
)
def test_a_bad_test_is_refused_with_a_message(data, message):
    with pytest.raises(SpecError) as refused:
        spec_from_data(data)
    assert str(refused.value).startswith(message)


def test_the_json_form_round_trips():
    spec = Spec(
        caller_turns=("hi", "book it"),
        expect_tools=(ExpectedTool("book_table", {"party_size": 2}),),
        forbid_tools=("transfer_call",),
        must_say=("booked",),
        must_not_say=("sorry",),
        ending="agent_ended",
        rubric="A table was booked.",
        tool_results={"book_table": {"reference": "R-1"}},
        standin={"replies": ["Booked."]},
    )
    assert spec_from_data(spec_to_data(spec)) == spec
    goal = Spec((), caller_goal="Book a table for two.", caller_persona="In a hurry.", max_turns=4)
    assert spec_from_data(spec_to_data(goal)) == goal
    # A tool may be named alone.
    assert spec_from_data({"caller_turns": ["hi"], "expect_tools": ["end_call"]}).expect_tools == (
        ExpectedTool("end_call", {}),
    )


def test_a_call_becomes_a_test_that_expects_it_again():
    lines = [
        Line("agent", "Trattoria, good evening!"),
        Line("caller", "A table for two tomorrow at eight, Rossi."),
        Line("agent", "Let me book that."),
        Line("tool", tool=ToolUse("book_table", BOOKING, {"booked": True})),
        Line("agent", "Booked, reference R-1."),
        Line("caller", "  "),  # a turn nobody transcribed is not a caller line
        Line("caller", "Thanks, bye."),
        Line("tool", tool=ToolUse("end_call", {})),
        Line("agent", "Goodbye!"),
    ]
    spec = spec_from_call(lines, "agent_ended")
    assert spec.caller_turns == ("A table for two tomorrow at eight, Rossi.", "Thanks, bye.")
    assert spec.expect_tools == (ExpectedTool("book_table", BOOKING),)
    assert spec.ending == "agent_ended"
    assert spec.standin["replies"] == [
        {"transcript": "Trattoria, good evening!"},
        {"transcript": "Let me book that.", "function_call": {"name": "book_table", "arguments": BOOKING}},
        {"transcript": "Booked, reference R-1."},
        {"function_call": {"name": "end_call", "arguments": {}}},
        {"transcript": "Goodbye!"},
    ]
    assert spec_from_call(lines[:5], "caller_hung_up").ending == "any"


def test_the_stand_in_answers_from_the_first_variant_the_instructions_match():
    spec = Spec(
        ("hi",),
        standin={
            "replies": ["Booked."],
            "variants": [{"instructions_contain": "refuse bookings", "replies": ["We do not book."]}],
        },
    )
    assert standin_replies(spec, "You take bookings.") == ["Booked."]
    assert standin_replies(spec, "You answer questions. Refuse bookings politely.") == ["We do not book."]


def test_a_response_done_gives_its_texts_and_calls_in_order():
    output = realtime.response_output(
        {
            "status": "completed",
            "output": [
                {"type": "message", "content": [{"type": "output_text", "text": "Let me check."}]},
                {"type": "function_call", "call_id": "c1", "name": "opening_hours", "arguments": "{}"},
                {"type": "message", "content": [{"type": "output_audio", "transcript": "Spoken."}]},
                "junk",
            ],
            "usage": {"total_tokens": 7},
        }
    )
    assert output.texts == ("Let me check.", "Spoken.")
    assert output.calls == (("c1", "opening_hours", "{}"),)
    assert output.usage == {"total_tokens": 7}
