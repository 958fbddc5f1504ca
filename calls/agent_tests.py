"""Agent tests, the pure part (issue 17): what a test of an agent says, how a test is made from
a stored call, and how a finished conversation is checked against it.

A test is data (``Spec``): what the caller says turn by turn, what the agent must and must not
do, and, for the offline runs, what the stand-in model answers. The runner
(``calls.agent_test_runner``) holds the conversation; this module turns its transcript into
one ``Outcome`` per expectation, each with a message that says what went wrong. No Django, no
sockets: the rules are unit-tested on their own.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

Ending = Literal["any", "agent_ended", "transferred", "open"]
ENDINGS: tuple[Ending, ...] = ("any", "agent_ended", "transferred", "open")
ENDING_TOOLS = {"end_call": "agent_ended", "transfer_call": "transferred"}
FILE_VERSION = 1

MAX_CALLER_TURNS = 20
# A test's fields, as files and the ``AgentTest`` row name them.
SPEC_KEYS = (
    "caller_turns",
    "caller_goal",
    "caller_persona",
    "max_turns",
    "expect_tools",
    "forbid_tools",
    "must_say",
    "must_not_say",
    "ending",
    "rubric",
    "tool_results",
    "standin",
)
_SPEC_KEYS = frozenset(SPEC_KEYS)


class SpecError(ValueError):
    """A test that cannot be run as written; the message says what to fix."""


@dataclass(frozen=True)
class ExpectedTool:
    """A tool the agent must call; ``arguments`` is a subset the call's arguments must match."""

    name: str
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> str:
        shown = ", ".join(f"{key}={json.dumps(value)}" for key, value in self.arguments.items())
        return f"{self.name}({shown})"


@dataclass(frozen=True)
class Spec:
    """One test of an agent."""

    caller_turns: tuple[str, ...]
    expect_tools: tuple[ExpectedTool, ...] = ()
    # Open-ended instead of scripted: a simulated caller (a text model) with this goal and
    # persona says the caller's turns, at most ``max_turns`` of them.
    caller_goal: str = ""
    caller_persona: str = ""
    max_turns: int = 6
    forbid_tools: tuple[str, ...] = ()
    must_say: tuple[str, ...] = ()
    must_not_say: tuple[str, ...] = ()
    ending: Ending = "any"
    rubric: str = ""
    # A tool named here is not run: the model gets this value as its result.
    tool_results: Mapping[str, Any] = field(default_factory=dict)
    # What the offline stand-in model answers (``standin_replies``); the real model ignores it.
    standin: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ToolUse:
    name: str
    arguments: Mapping[str, Any]
    output: Any = None
    error: str = ""
    fixed: bool = False  # the test's fixed result, not the tool's


@dataclass(frozen=True)
class Line:
    """A line of the conversation the runner held: a caller or agent turn, or a tool call."""

    speaker: Literal["caller", "agent", "tool"]
    text: str = ""
    tool: ToolUse | None = None

    def as_data(self) -> dict[str, Any]:
        if self.tool is None:
            return {"speaker": self.speaker, "text": self.text}
        use = self.tool
        return {
            "speaker": "tool",
            "name": use.name,
            "arguments": dict(use.arguments),
            "output": use.output,
            "error": use.error,
            "fixed": use.fixed,
        }


@dataclass(frozen=True)
class Transcript:
    lines: tuple[Line, ...]

    @property
    def tools(self) -> list[ToolUse]:
        return [line.tool for line in self.lines if line.tool is not None]

    @property
    def agent_text(self) -> str:
        return "\n".join(line.text for line in self.lines if line.speaker == "agent")

    @property
    def ending(self) -> Ending:
        for use in self.tools:
            if use.name in ENDING_TOOLS:
                return cast(Ending, ENDING_TOOLS[use.name])
        return "open"


def line_from_data(data: Mapping[str, Any]) -> Line:
    """A line as ``Line.as_data`` stored it (``AgentTestRun.transcript``)."""
    if data.get("speaker") == "tool":
        arguments = data.get("arguments")
        use = ToolUse(
            name=str(data.get("name", "")),
            arguments=arguments if isinstance(arguments, dict) else {},
            output=data.get("output"),
            error=str(data.get("error") or ""),
            fixed=bool(data.get("fixed")),
        )
        return Line("tool", tool=use)
    return Line("caller" if data.get("speaker") == "caller" else "agent", str(data.get("text", "")))


def line_text(line: Line) -> str:
    """A line without its speaker: what was said, or the tool call and its result."""
    if line.tool is None:
        return line.text
    use = line.tool
    result = f"error: {use.error}" if use.error else json.dumps(use.output, default=str)
    fixed = " (fixed)" if use.fixed else ""
    return f"{use.name}({json.dumps(dict(use.arguments))}) -> {result}{fixed}"


def describe(lines: Iterable[Line]) -> str:
    """The conversation as text: a failure message, a JUnit file, the judge's input."""
    return "\n".join(f"{line.speaker}: {line_text(line)}" for line in lines)


@dataclass(frozen=True)
class Outcome:
    """One expectation, checked."""

    kind: str  # expect_tool, forbid_tool, must_say, must_not_say, ending, rubric
    expectation: str
    passed: bool
    message: str = ""

    def as_data(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "expectation": self.expectation,
            "passed": self.passed,
            "message": self.message,
        }


# --- checking ----------------------------------------------------------------------------


def normalised(text: str) -> str:
    """Lower case, punctuation as spaces, single spaces: "Booked!" says "booked"."""
    return " ".join(re.sub(r"[^\w+]+", " ", text.casefold()).split())


def says(text: str, phrase: str) -> bool:
    wanted = normalised(phrase)
    return bool(wanted) and f" {wanted} " in f" {normalised(text)} "


def value_matches(expected: Any, actual: Any) -> bool:
    """``actual`` has ``expected``: objects by subset, text without case or outer spaces,
    numbers by value (2 matches 2.0, not "2"), lists item by item."""
    if isinstance(expected, Mapping):
        return isinstance(actual, Mapping) and all(
            key in actual and value_matches(value, actual[key]) for key, value in expected.items()
        )
    if isinstance(expected, str):
        return isinstance(actual, str) and expected.strip().casefold() == actual.strip().casefold()
    if isinstance(expected, bool) or isinstance(actual, bool):
        return expected is actual
    if isinstance(expected, int | float):
        return isinstance(actual, int | float) and float(expected) == float(actual)
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(value_matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    return bool(expected == actual)


def _calls_seen(uses: Sequence[ToolUse]) -> str:
    if not uses:
        return "no tool was called"
    return "called: " + ", ".join(f"{use.name}({json.dumps(dict(use.arguments))})" for use in uses)


def _check_expected(expected: ExpectedTool, uses: list[ToolUse], taken: set[int]) -> Outcome:
    wanted = expected.describe()
    named = [(i, use) for i, use in enumerate(uses) if use.name == expected.name]
    for i, use in named:
        if i not in taken and value_matches(dict(expected.arguments), dict(use.arguments)):
            taken.add(i)
            return Outcome("expect_tool", wanted, True)
    if not named:
        return Outcome(
            "expect_tool", wanted, False, f"{expected.name} was never called ({_calls_seen(uses)})"
        )
    differences = []
    for _, use in named:
        wrong = [
            f"{key}={json.dumps(use.arguments.get(key)) if key in use.arguments else 'missing'}"
            for key, value in expected.arguments.items()
            if key not in use.arguments or not value_matches(value, use.arguments[key])
        ]
        differences.append(", ".join(wrong) or "already matched by another expectation")
    return Outcome(
        "expect_tool",
        wanted,
        False,
        f"{expected.name} was called, but with " + "; then with ".join(differences),
    )


def check(spec: Spec, transcript: Transcript) -> list[Outcome]:
    """Every expectation except the rubric (a model judges that one), in a fixed order."""
    outcomes: list[Outcome] = []
    uses = transcript.tools
    taken: set[int] = set()
    for expected in spec.expect_tools:
        outcomes.append(_check_expected(expected, uses, taken))
    for name in spec.forbid_tools:
        called = [use for use in uses if use.name == name]
        message = f"{name} was called {len(called)} time(s): {_calls_seen(called)}" if called else ""
        outcomes.append(Outcome("forbid_tool", f"never {name}", not called, message))
    said = transcript.agent_text
    for phrase in spec.must_say:
        ok = says(said, phrase)
        outcomes.append(Outcome("must_say", phrase, ok, "" if ok else f"the agent never said {phrase!r}"))
    for phrase in spec.must_not_say:
        lines = [
            line.text for line in transcript.lines if line.speaker == "agent" and says(line.text, phrase)
        ]
        message = f"the agent said {phrase!r}: {lines[0]!r}" if lines else ""
        outcomes.append(Outcome("must_not_say", phrase, not lines, message))
    if spec.ending != "any":
        ok = transcript.ending == spec.ending
        message = "" if ok else f"the call ended {transcript.ending!r}, expected {spec.ending!r}"
        outcomes.append(Outcome("ending", spec.ending, ok, message))
    return outcomes


# --- the offline stand-in's answers ------------------------------------------------------


def standin_caller(spec: Spec) -> list[str]:
    """Offline, a simulated caller says these lines in order (the stand-in plays both sides),
    then is done."""
    return [str(line) for line in spec.standin.get("caller", [])]


def standin_replies(spec: Spec, instructions: str) -> list[dict[str, Any]]:
    """The replies the stand-in model gives, in order: the first ``variants`` entry whose
    phrase the agent's instructions contain, else ``replies``. A variant lets an offline test
    show what the agent does once its instructions change ("refuse bookings")."""
    for variant in spec.standin.get("variants", []):
        if says(instructions, str(variant.get("instructions_contain", ""))):
            return list(variant.get("replies", []))
    return list(spec.standin.get("replies", []))


# --- files and forms ---------------------------------------------------------------------


def _strings(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = data.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise SpecError(f"{key} must be a list of strings")
    return tuple(item for item in value if item.strip())


def _reply_problem(reply: Any, where: str) -> str | None:
    if isinstance(reply, str):
        return None
    if not isinstance(reply, dict) or not set(reply) <= {"transcript", "function_call"}:
        return f"{where} must be a text or an object with transcript and/or function_call"
    call = reply.get("function_call")
    if call is not None and not (
        isinstance(call, dict)
        and isinstance(call.get("name"), str)
        and isinstance(call.get("arguments", {}), dict)
    ):
        return f"{where}: function_call needs a name and an arguments object"
    return None


def _check_standin(standin: Any) -> Mapping[str, Any]:
    if not isinstance(standin, dict) or not set(standin) <= {"replies", "variants", "caller"}:
        raise SpecError("standin must be an object with replies, and optional variants and caller")
    caller = standin.get("caller", [])
    if not isinstance(caller, list) or not all(isinstance(line, str) for line in caller):
        raise SpecError("standin.caller must be a list of strings: the simulated caller's lines, offline")
    groups = [("standin.replies", standin.get("replies", []))]
    variants = standin.get("variants", [])
    if not isinstance(variants, list):
        raise SpecError("standin.variants must be a list")
    for n, variant in enumerate(variants, 1):
        if not isinstance(variant, dict) or not str(variant.get("instructions_contain", "")).strip():
            raise SpecError(f"standin.variants {n} needs instructions_contain and replies")
        groups.append((f"standin.variants {n}", variant.get("replies", [])))
    for where, replies in groups:
        if not isinstance(replies, list):
            raise SpecError(f"{where} must be a list")
        for n, reply in enumerate(replies, 1):
            if problem := _reply_problem(reply, f"{where} {n}"):
                raise SpecError(problem)
    return standin


def spec_from_data(data: Any) -> Spec:
    """A test from its JSON form (a file, the admin); ``SpecError`` says what is wrong."""
    if not isinstance(data, dict):
        raise SpecError("a test must be a JSON object")
    unknown = sorted(set(data) - _SPEC_KEYS - {"name", "agent"})
    if unknown:
        raise SpecError(f"unknown key(s): {', '.join(unknown)}")
    turns = _strings(data, "caller_turns")
    goal, persona = data.get("caller_goal", ""), data.get("caller_persona", "")
    if not isinstance(goal, str) or not isinstance(persona, str):
        raise SpecError("caller_goal and caller_persona must be text")
    if bool(turns) == bool(goal.strip()):
        raise SpecError(
            "caller_turns or caller_goal: give the caller things to say, or a goal for a simulated caller"
        )
    max_turns = data.get("max_turns", 6)
    if (
        isinstance(max_turns, bool)
        or not isinstance(max_turns, int)
        or not 1 <= max_turns <= MAX_CALLER_TURNS
    ):
        raise SpecError(f"max_turns must be a whole number from 1 to {MAX_CALLER_TURNS}")
    expected = []
    raw_expected = data.get("expect_tools", [])
    if not isinstance(raw_expected, list):
        raise SpecError("expect_tools must be a list")
    for n, item in enumerate(raw_expected, 1):
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not item["name"]:
            raise SpecError(f"expect_tools {n} needs a tool name")
        arguments = item.get("arguments", {})
        if not isinstance(arguments, dict) or set(item) - {"name", "arguments"}:
            raise SpecError(f"expect_tools {n}: only name and an arguments object")
        expected.append(ExpectedTool(item["name"], arguments))
    ending = data.get("ending", "any")
    if ending not in ENDINGS:
        raise SpecError(f"ending must be one of {', '.join(ENDINGS)}, not {ending!r}")
    tool_results = data.get("tool_results", {})
    if not isinstance(tool_results, dict):
        raise SpecError("tool_results must be an object: tool name -> the result to give the model")
    rubric = data.get("rubric", "")
    if not isinstance(rubric, str):
        raise SpecError("rubric must be text")
    return Spec(
        caller_turns=turns,
        caller_goal=goal.strip(),
        caller_persona=persona.strip(),
        max_turns=max_turns,
        expect_tools=tuple(expected),
        forbid_tools=_strings(data, "forbid_tools"),
        must_say=_strings(data, "must_say"),
        must_not_say=_strings(data, "must_not_say"),
        ending=cast(Ending, ending),
        rubric=rubric.strip(),
        tool_results=tool_results,
        standin=_check_standin(data.get("standin", {})),
    )


def spec_to_data(spec: Spec) -> dict[str, Any]:
    """The JSON form ``spec_from_data`` reads back."""
    return {
        "caller_turns": list(spec.caller_turns),
        "caller_goal": spec.caller_goal,
        "caller_persona": spec.caller_persona,
        "max_turns": spec.max_turns,
        "expect_tools": [{"name": e.name, "arguments": dict(e.arguments)} for e in spec.expect_tools],
        "forbid_tools": list(spec.forbid_tools),
        "must_say": list(spec.must_say),
        "must_not_say": list(spec.must_not_say),
        "ending": spec.ending,
        "rubric": spec.rubric,
        "tool_results": dict(spec.tool_results),
        "standin": dict(spec.standin),
    }


# --- a test from a stored call -----------------------------------------------------------


ENDED_AS: dict[str, Ending] = {"agent_ended": "agent_ended", "transferred": "transferred"}


def spec_from_call(lines: Iterable[Line], ended_reason: str) -> Spec:
    """What happened in a stored call (its turns and tool calls in conversation order), as a
    test that expects it to happen again: the caller's turns, every tool call with the
    arguments it had, how the call ended; the stand-in's replies are the agent's, so the test
    passes offline against an unchanged agent."""
    caller: list[str] = []
    expected: list[ExpectedTool] = []
    replies: list[dict[str, Any]] = []
    open_reply: dict[str, Any] | None = None
    for line in lines:
        if line.speaker == "caller":
            if line.text.strip():
                caller.append(line.text.strip())
            open_reply = None
        elif line.speaker == "agent":
            open_reply = {"transcript": line.text.strip()}
            replies.append(open_reply)
        elif line.tool is not None:
            use = line.tool
            call = {"name": use.name, "arguments": dict(use.arguments)}
            if use.name not in ENDING_TOOLS:
                expected.append(ExpectedTool(use.name, dict(use.arguments)))
            if open_reply is not None and "function_call" not in open_reply:
                open_reply["function_call"] = call
            else:
                replies.append({"function_call": call})
            # The answer after a tool's result is a new response.
            open_reply = None
    ending = ENDED_AS.get(ended_reason, "any")
    return Spec(
        caller_turns=tuple(caller),
        expect_tools=tuple(expected),
        ending=ending,
        standin={"replies": replies},
    )
