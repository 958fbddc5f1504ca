"""Agent tests, the Django side: a test made from a stored call passes against the unchanged
agent and fails once its instructions refuse bookings; every expectation kind fails with its
message through a real conversation (the stand-in over a socket, the example tools run for
real); ``test_agents`` with its exit code, JUnit file, --runs score and JSON files; the admin."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from io import StringIO
from itertools import count
from types import SimpleNamespace
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from calls import agent_testing
from calls.example_tools import restaurant_agent
from calls.models import Agent, AgentTest, AgentTestRun, Call, EndedReason, Role, ToolCall, Turn
from calls.tools import tool

pytestmark = pytest.mark.django_db

BOOKING = {"name": "Rossi", "party_size": 2, "day": "2031-06-01", "time": "20:00"}
REFUSING = {
    "instructions_contain": "refuse bookings",
    "replies": [
        "Trattoria Example, good evening! How can I help?",
        "I'm sorry, we cannot take bookings by phone.",
        {"transcript": "Goodbye!", "function_call": {"name": "end_call", "arguments": {}}},
    ],
}


def booking_call(agent: Agent) -> Call:
    """A stored call: greeting, a booking with book_table, goodbye with end_call."""
    call = Call.objects.create(
        call_sid="CA" + "7" * 32,
        agent=agent,
        from_number="+15550001111",
        to_number=agent.phone_number,
        ended_at=timezone.now(),
        ended_reason=EndedReason.AGENT_ENDED,
    )
    rows: list[tuple[str, Any]] = [
        ("agent", "Trattoria Example, good evening! How can I help?"),
        ("caller", "A table for two on the first of June 2031 at eight, under Rossi."),
        ("agent", "Two people, June first at 20:00, for Rossi. Booking it now."),
        ("tool", ("book_table", BOOKING, {"booked": True, "reference": "R-777777"})),
        ("agent", "You're booked, reference R-777777."),
        ("caller", "Perfect, thank you, bye."),
        ("agent", "Goodbye!"),
        ("tool", ("end_call", {}, {"ok": True})),
    ]
    for position, (who, what) in enumerate(rows):
        if who == "tool":
            name, arguments, result = what
            ToolCall.objects.create(
                call=call, position=position, name=name, arguments=arguments, result=result
            )
        else:
            Turn.objects.create(call=call, position=position, role=Role(who), text=what)
    return call


@pytest.fixture
def restaurant() -> Agent:
    return restaurant_agent()


def test_a_test_made_from_a_call_passes_then_fails_once_the_agent_refuses_bookings(restaurant):
    test = agent_testing.make_test_from_call(booking_call(restaurant))
    assert test.caller_turns == [
        "A table for two on the first of June 2031 at eight, under Rossi.",
        "Perfect, thank you, bye.",
    ]
    assert test.expect_tools == [{"name": "book_table", "arguments": BOOKING}]
    assert test.ending == "agent_ended"

    run = agent_testing.run_test(test)
    assert run.error == ""
    assert run.passed, run.outcomes
    # The tool ran for real: its reference is the one book_table makes from the test's call id.
    [booked] = [line for line in run.transcript if line["speaker"] == "tool" and line["name"] == "book_table"]
    assert (
        booked["output"]["booked"] is True
        and booked["output"]["reference"] == "R-" + f"agent-test-{run.pk}"[-6:].upper()
    )
    assert [line["speaker"] for line in run.transcript] == [
        "agent", "caller", "agent", "tool", "agent", "caller", "agent", "tool",
    ]  # fmt: skip

    # The reviewer scripts what a refusing agent says; then the instructions change.
    test.standin = {**test.standin, "variants": [REFUSING]}
    test.save()
    assert agent_testing.run_test(test).passed
    restaurant.instructions += " We are fully booked this month: refuse bookings politely."
    restaurant.save()
    run = agent_testing.run_test(test)
    assert run.passed is False
    failed = [o for o in run.outcomes if not o["passed"]]
    assert [o["kind"] for o in failed] == ["expect_tool"]
    assert failed[0]["message"] == "book_table was never called (called: end_call({}))"


def spec(**expectations: Any) -> dict[str, Any]:
    """One caller turn; the stand-in offers opening hours, then books for four, then hangs up."""
    return {
        "caller_turns": ["When are you open, and can I book?"],
        "standin": {
            "replies": [
                "Trattoria Example, good evening! How can I help?",
                {"transcript": "Let me look.", "function_call": {"name": "opening_hours", "arguments": {}}},
                {
                    "transcript": "We open at noon. Booking four.",
                    "function_call": {"name": "book_table", "arguments": {**BOOKING, "party_size": 4}},
                },
                {"transcript": "Done. Goodbye!", "function_call": {"name": "end_call", "arguments": {}}},
            ]
        },
        **expectations,
    }


def make_test(agent: Agent, name: str, data: dict[str, Any]) -> AgentTest:
    test = AgentTest(agent=agent, name=name)
    agent_testing._apply(test, agent_testing.spec_from_data(data))
    test.save()
    return test


@pytest.mark.parametrize(
    ("expectations", "kind", "message"),
    [
        (
            {"expect_tools": [{"name": "book_table", "arguments": {"party_size": 2}}]},
            "expect_tool",
            "book_table was called, but with party_size=4",
        ),
        (
            {"forbid_tools": ["opening_hours"]},
            "forbid_tool",
            "opening_hours was called 1 time(s): called: opening_hours({})",
        ),
        ({"must_say": ["reference"]}, "must_say", "the agent never said 'reference'"),
        (
            {"must_not_say": ["noon"]},
            "must_not_say",
            "the agent said 'noon': 'We open at noon. Booking four.'",
        ),
        ({"ending": "transferred"}, "ending", "the call ended 'agent_ended', expected 'transferred'"),
        (  # the fake judge (offline) passes a conversation with a yes-word in it: here, none
            {
                "rubric": "The caller was told the price.",
                "standin": {"replies": ["Hello.", "We open at noon."]},
            },
            "rubric",
            None,
        ),
    ],
)
def test_each_expectation_fails_with_its_message(restaurant, expectations, kind, message):
    run = agent_testing.run_test(make_test(restaurant, kind, spec(**expectations)))
    assert run.passed is False
    [outcome] = run.outcomes
    assert outcome["kind"] == kind and outcome["passed"] is False
    if message is not None:
        assert outcome["message"] == message
    else:  # the judge (the fake Responses API, offline) gives its reason
        assert run.judge_reason and outcome["message"] == run.judge_reason


def test_the_same_expectations_pass_when_met(restaurant):
    run = agent_testing.run_test(
        make_test(
            restaurant,
            "met",
            spec(
                expect_tools=[{"name": "book_table", "arguments": {"party_size": 4}}, "opening_hours"],
                forbid_tools=["transfer_call"],
                must_say=["noon"],
                must_not_say=["sorry"],
                ending="agent_ended",
            ),
        )
    )
    assert run.passed, run.outcomes
    assert len(run.outcomes) == 6
    assert run.usage["conversation"]["total_tokens"] > 0 and run.cost_usd is None  # offline is free


def test_a_fixed_tool_result_replaces_the_tool(restaurant):
    run = agent_testing.run_test(
        make_test(restaurant, "fixed", spec(tool_results={"book_table": {"booked": False, "reason": "full"}}))
    )
    [booked] = [line for line in run.transcript if line.get("name") == "book_table"]
    assert booked["output"] == {"booked": False, "reason": "full"} and booked["fixed"] is True


def test_a_run_that_cannot_be_held_is_stored_as_failed(restaurant):
    test = make_test(restaurant, "bad", spec())
    AgentTest.objects.filter(pk=test.pk).update(ending="hung_up")  # past the admin's check
    test.refresh_from_db()
    run = agent_testing.run_test(test)
    assert run.passed is False and run.error.startswith("ending must be one of")


# --- the command -------------------------------------------------------------------------

_flips = count()


@tool
def flaky_availability() -> dict[str, str]:
    """Whether a table is free: yes on even calls, a pending answer on odd ones.

    Args:
    """
    return {"table": "confirmed"} if next(_flips) % 2 == 0 else {"table": "pending"}


def run_command(*args: str) -> tuple[int, str]:
    out = StringIO()
    try:
        call_command("test_agents", *args, stdout=out)
    except SystemExit as exit_:
        return int(exit_.code or 0), out.getvalue()
    return 0, out.getvalue()


def test_the_command_exits_non_zero_on_failure_and_writes_junit(restaurant, tmp_path):
    make_test(restaurant, "meets it", spec(must_say=["noon"]))
    make_test(restaurant, "misses it", spec(must_say=["reference"]))
    junit = tmp_path / "agents.xml"
    code, out = run_command("--agent", "Restaurant", "--junit-xml", str(junit))
    assert code == 1
    assert "PASS Restaurant / meets it  1/1" in out and "FAIL Restaurant / misses it  0/1" in out
    assert "must_say 'reference': the agent never said 'reference'" in out
    assert "1 of 2 tests passed (offline, 1 run(s) each)." in out
    suite = ET.parse(junit).getroot()
    assert (suite.tag, suite.get("tests"), suite.get("failures")) == ("testsuite", "2", "1")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert cases["meets it"].find("failure") is None
    failure = cases["misses it"].find("failure")
    assert failure is not None and failure.get("message") == "passed 0/1 runs"
    assert "caller: When are you open" in cases["misses it"].findtext("system-out")

    code, out = run_command("--test", "meets it")
    assert code == 0 and "1 of 1 tests passed" in out


def flaky_test(agent: Agent, name: str = "flaky") -> AgentTest:
    """A test whose rubric passes on every other run: the fake judge (offline) passes a call
    with a yes-word in it, and ``flaky_availability`` answers "confirmed" every other time."""
    agent.tools = [*agent.tools, "flaky_availability"]
    agent.save()
    return make_test(
        agent,
        name,
        {
            "caller_turns": ["Is there a table tonight?"],
            "rubric": "The caller was told a table is free.",
            "standin": {
                "replies": [
                    "Hello.",
                    {"function_call": {"name": "flaky_availability", "arguments": {}}},
                    "Let me see.",
                ]
            },
        },
    )


def test_runs_give_a_flaky_test_its_score(restaurant):
    flaky_test(restaurant)
    code, out = run_command("--test", "flaky", "--runs", "5")
    assert code == 1
    runs = list(AgentTestRun.objects.filter(test__name="flaky").order_by("pk"))
    passes = sum(1 for run in runs if run.passed)
    assert len(runs) == 5 and len({run.batch for run in runs}) == 1
    assert 0 < passes < 5
    assert f"FAIL Restaurant / flaky  {passes}/5" in out
    assert f"({5 - passes} of 5 runs)" in out


def test_tests_export_to_a_file_and_import_back(restaurant, tmp_path):
    make_test(restaurant, "hours", spec(must_say=["noon"], rubric="Hours were given."))
    path = tmp_path / "agent_tests.json"
    code, out = run_command("--export", str(path))
    assert code == 0 and f"Wrote 1 test(s) to {path}." in out
    document = json.loads(path.read_text())
    assert document["version"] == 1 and document["tests"][0]["agent"] == "Restaurant"
    assert document["tests"][0]["must_say"] == ["noon"]
    [described] = document["agents"]
    assert described["instructions"] == restaurant.instructions and described["tools"] == restaurant.tools

    # A fresh database (CI): the agent is made from the file, then its tests run.
    AgentTest.objects.all().delete()
    restaurant.delete()
    document["tests"][0]["must_say"] = ["reference"]
    path.write_text(json.dumps(document))
    code, out = run_command("--import", str(path))
    assert "Imported" in out and "1 new, 0 updated; agent(s) made from the file: Restaurant." in out
    assert code == 1  # the imported test ran, and its new expectation fails
    assert AgentTest.objects.get().must_say == ["reference"]
    assert Agent.objects.get(name="Restaurant").tools == described["tools"]

    # Imported again: the test is updated, the existing agent left as it is.
    Agent.objects.filter(name="Restaurant").update(greeting="Changed here.")
    document["tests"][0]["must_say"] = ["noon"]
    path.write_text(json.dumps(document))
    code, out = run_command("--import", str(path))
    assert code == 0 and "0 new, 1 updated." in out
    assert Agent.objects.get(name="Restaurant").greeting == "Changed here."


def test_a_bad_file_is_refused_whole(restaurant, tmp_path):
    path = tmp_path / "agent_tests.json"
    good = {"agent": "Restaurant", "name": "ok", "caller_turns": ["hi"]}
    path.write_text(
        json.dumps({"version": 1, "tests": [good, {"agent": "Nobody", "name": "x", "caller_turns": ["hi"]}]})
    )
    with pytest.raises(Exception, match="test 2 \\(x\\): no agent named 'Nobody', here or in the file"):
        call_command("test_agents", "--import", str(path), stdout=StringIO())
    assert not AgentTest.objects.exists()


# --- --real: the same runner against the configured Realtime and Responses endpoints -------


@pytest.fixture
def real_apis(settings, loop):
    """Fakes standing in for the real services, reached the way the real ones are: the key,
    OPENAI_REALTIME_URL and OPENAI_BASE_URL from the settings. Each test sets the Realtime
    model's script (``real_apis.realtime.set_script``)."""
    from calls.fakes.openai_realtime import FakeRealtimeServer
    from calls.fakes.openai_responses import FakeResponsesServer

    realtime_fake = FakeRealtimeServer(api_key="sk-real-run")
    loop.run(realtime_fake.start())
    try:
        with FakeResponsesServer(api_key="sk-real-run") as responses_fake:
            settings.OPENAI_API_KEY = "sk-real-run"
            settings.OPENAI_REALTIME_URL = realtime_fake.url
            settings.OPENAI_BASE_URL = responses_fake.base_url
            yield SimpleNamespace(realtime=realtime_fake, responses=responses_fake)
    finally:
        loop.run(realtime_fake.stop())


def test_real_runs_use_the_configured_apis_and_cost_money(restaurant, settings, real_apis):
    from calls.fakes.openai_realtime import Reply, Script

    real_apis.realtime.set_script(Script(replies=[Reply("Hello."), Reply("Sure, you are booked.")]))
    test = make_test(
        restaurant,
        "real",
        {"caller_turns": ["Book me in."], "rubric": "The caller was booked.", "standin": {"replies": ["X"]}},
    )
    run = agent_testing.run_test(test, real=True)
    [request] = real_apis.responses.requests
    realtime_fake = real_apis.realtime
    assert run.mode == "real" and run.passed, run.outcomes
    # The real model answered, not the test's offline replies.
    assert [line["text"] for line in run.transcript if line["speaker"] == "agent"] == [
        "Hello.",
        "Sure, you are booked.",
    ]
    [session] = realtime_fake.sessions
    assert session.config["output_modalities"] == ["text"]
    assert session.config["instructions"] == restaurant.instructions
    assert request["model"] == settings.ANALYSIS_MODEL and "The caller was booked." in request["instructions"]
    assert run.usage["conversation"]["total_tokens"] > 0 and run.usage["judge"]["total_tokens"] > 0
    assert run.cost_usd is not None and run.cost_usd > 0


def test_real_runs_need_a_key(restaurant, settings):
    settings.OPENAI_API_KEY = ""
    run = agent_testing.run_test(make_test(restaurant, "no key", spec()), real=True)
    assert run.passed is False and run.error == "OPENAI_API_KEY is not set: --real needs it"


# --- open-ended tests: a simulated caller --------------------------------------------------


def test_offline_a_simulated_caller_says_the_stand_ins_caller_lines(restaurant):
    test = make_test(
        restaurant,
        "open-ended",
        {
            "caller_goal": "Book a table for two on June first 2031 at eight, as Rossi.",
            "max_turns": 5,
            "expect_tools": [{"name": "book_table", "arguments": {"party_size": 2}}],
            "standin": {
                "caller": ["Hi, a table for two on June first 2031 at eight, Rossi.", "Great, bye!"],
                "replies": [
                    GREETING_REPLY,
                    {
                        "transcript": "Booking it.",
                        "function_call": {"name": "book_table", "arguments": BOOKING},
                    },
                    "Booked!",
                    "Goodbye!",
                ],
            },
        },
    )
    run = agent_testing.run_test(test)
    assert run.passed, (run.error, run.outcomes)
    said = [line["text"] for line in run.transcript if line["speaker"] == "caller"]
    assert said == ["Hi, a table for two on June first 2031 at eight, Rossi.", "Great, bye!"]

    test.standin = {"replies": []}
    test.save()
    run = agent_testing.run_test(test)
    assert run.passed is False
    assert run.error == "offline, a simulated caller says the stand-in's caller lines: add standin.caller"


GREETING_REPLY = "Trattoria Example, good evening! How can I help?"


def test_real_a_simulated_caller_is_a_text_model_given_the_goal_and_persona(restaurant, real_apis):
    from calls import simulated_caller
    from calls.fakes.openai_realtime import Reply, Script

    real_apis.realtime.set_script(Script(replies=[Reply(GREETING_REPLY), Reply("Sure, you are booked.")]))
    test = make_test(
        restaurant,
        "simulated",
        {"caller_goal": "Book a table for two.", "caller_persona": "An impatient regular.", "max_turns": 6},
    )
    run = agent_testing.run_test(test, real=True)
    requests = real_apis.responses.requests
    assert run.error == "" and run.passed
    # The fake model (its rule: done once the call holds a yes-word) is done after "Sure...":
    # two caller turns, well short of max_turns.
    assert len(requests) == 2
    first, second = requests
    assert "Your goal: Book a table for two." in first["instructions"]
    assert "An impatient regular." in first["instructions"]
    assert first["text"]["format"] == {
        "type": "json_schema",
        "name": "caller_turn",
        "schema": simulated_caller.SCHEMA,
        "strict": True,
    }
    assert first["input"][0]["content"] == f"agent: {GREETING_REPLY}"
    assert second["input"][0]["content"].endswith("agent: Sure, you are booked.")
    speakers = [line["speaker"] for line in run.transcript]
    assert speakers == ["agent", "caller", "agent", "caller", "agent"]
    assert run.usage["caller"]["total_tokens"] > 0 and run.cost_usd is not None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "the simulated caller's answer is not JSON"),
        ('{"say": "hi"}', "the simulated caller's answer does not fit its schema"),
        ('{"say": "hi", "done": "no"}', "the simulated caller's answer does not fit its schema"),
    ],
)
def test_a_simulated_callers_bad_answer_is_refused(text, message):
    from calls import simulated_caller
    from calls.analysis_model import AnalysisFailed

    with pytest.raises(AnalysisFailed, match=message):
        simulated_caller.parse(text)
    assert simulated_caller.parse('{"say": " Hi there. ", "done": false}') == ("Hi there.", False)
