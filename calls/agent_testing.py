"""Agent tests, the Django side (issue 17): tests as rows, a test made from a stored call, a
run stored per test and expectation, the rubric judged by the analysis model, files for the
repository, and the background job behind the admin's "Run tests" button.

Offline (the default) the model is the stand-in, scripted by the test, and the judge the fake
Responses API: deterministic and free, so the tests run in CI without a key. ``real=True``
holds the same conversation with the Realtime API in text and asks the analysis model to judge.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django_tasks import task

from calls import (
    agent_test_runner,
    analysis,
    analysis_jobs,
    analysis_model,
    pricing,
    simulated_caller,
    simulation,
    tools,
)
from calls.agent_tests import (
    FILE_VERSION,
    SPEC_KEYS,
    Line,
    Outcome,
    Spec,
    SpecError,
    ToolUse,
    Transcript,
    check,
    line_text,
    spec_from_call,
    spec_from_data,
    spec_to_data,
    standin_caller,
    standin_replies,
)
from calls.models import Agent, AgentTest, AgentTestRun, Call, RunMode, ToolCall, Turn, TurnKind
from calls.services import agent_settings

logger = logging.getLogger(__name__)

# A test's pass rate is over its newest runs.
PASS_RATE_RUNS = 20
TEST_CALLER = "+15550100000"  # the number a test's tools see as the caller's


def spec_of(test: AgentTest) -> Spec:
    """The row as the pure ``Spec``; ``SpecError`` says what to fix."""
    return spec_from_data({key: getattr(test, key) for key in SPEC_KEYS})


def _apply(test: AgentTest, spec: Spec) -> None:
    data = spec_to_data(spec)
    for key, value in data.items():
        setattr(test, key, value)


# --- a test from a call ------------------------------------------------------------------


def call_transcript(call: Call) -> Transcript:
    """A stored call's turns and tool calls (with their results), in conversation order."""
    entries: list[tuple[int, int, Line]] = []
    for turn in Turn.objects.filter(call=call):
        text = turn.text if turn.kind == TurnKind.SPEECH else f"(pressed {turn.text})"
        line = Line("caller", text) if turn.role == "caller" else Line("agent", text)
        entries.append((turn.position, 0, line))
    for row in ToolCall.objects.filter(call=call):
        arguments = row.arguments if isinstance(row.arguments, dict) else {}
        entries.append(
            (row.position, 1, Line("tool", tool=ToolUse(row.name, arguments, row.result, row.error)))
        )
    return Transcript(tuple(line for _, _, line in sorted(entries, key=lambda entry: (entry[0], entry[1]))))


class CannotMakeTest(ValueError):
    pass


def make_test_from_call(call: Call, *, name: str = "") -> AgentTest:
    """A test that expects what happened in ``call`` to happen again (``spec_from_call``)."""
    if call.agent is None:
        raise CannotMakeTest(f"call {call.call_sid} has no agent")
    spec = spec_from_call(call_transcript(call).lines, call.ended_reason)
    if not spec.caller_turns:
        raise CannotMakeTest(f"the caller said nothing in call {call.call_sid}")
    base = name or f"Call {call.call_sid[-8:]} of {timezone.localtime(call.created_at):%Y-%m-%d %H:%M}"
    test = AgentTest(agent=call.agent, source_call=call)
    _apply(test, spec)
    test.name = base
    n = 1
    while AgentTest.objects.filter(agent=call.agent, name=test.name).exists():
        n += 1
        test.name = f"{base} ({n})"
    test.save()
    return test


# --- files -------------------------------------------------------------------------------


# The agent's settings a tests file carries, so that a fresh database (CI) can run its tests.
_NOT_EXPORTED = {"id", "created_at", "updated_at"}


def _agent_data(agent: Agent) -> dict[str, Any]:
    return {
        f.name: getattr(agent, f.name) for f in Agent._meta.concrete_fields if f.name not in _NOT_EXPORTED
    }


def export_tests(tests: Iterable[AgentTest]) -> dict[str, Any]:
    """The tests, and the agents they test, as a JSON document for the project's repository
    (``import_tests`` reads it)."""
    tests = list(tests)
    agents = {test.agent.name: test.agent for test in tests}
    return {
        "version": FILE_VERSION,
        "agents": [_agent_data(agent) for _, agent in sorted(agents.items())],
        "tests": [
            {"agent": test.agent.name, "name": test.name, **spec_to_data(spec_of(test))} for test in tests
        ],
    }


def _agent_for(name: Any, described: dict[str, dict[str, Any]], made: list[str]) -> Agent:
    """The agent named ``name``; made from the file's description if the database has none
    (a fresh CI database). An existing agent is never changed by an import."""
    agent = Agent.objects.filter(name=name).first()
    if agent is not None:
        return agent
    if name not in described:
        raise SpecError(f"no agent named {name!r}, here or in the file")
    fields = {f.name for f in Agent._meta.concrete_fields} - _NOT_EXPORTED
    data = described[name]
    unknown = sorted(set(data) - fields)
    if unknown:
        raise SpecError(f"agent {name!r}: unknown setting(s) {', '.join(unknown)}")
    agent = Agent(**data)
    try:
        agent.full_clean()
    except ValidationError as exc:
        raise SpecError(f"agent {name!r}: {'; '.join(exc.messages)}") from exc
    agent.save()
    made.append(str(name))
    return agent


def import_tests(document: Any) -> tuple[int, int, list[str]]:
    """Create or update tests by agent and name; all or nothing. Returns (created, updated,
    the agents made from the file)."""
    if not isinstance(document, dict) or not isinstance(document.get("tests"), list):
        raise SpecError('a tests file is {"version": 1, "agents": [...], "tests": [...]}')
    if document.get("version", FILE_VERSION) != FILE_VERSION:
        raise SpecError(f"unknown tests file version {document.get('version')!r}")
    agents = document.get("agents", [])
    if not isinstance(agents, list) or not all(isinstance(a, dict) and a.get("name") for a in agents):
        raise SpecError("agents must be a list of objects with a name")
    described = {str(a["name"]): a for a in agents}
    created = updated = 0
    made: list[str] = []
    with transaction.atomic():
        for n, item in enumerate(document["tests"], 1):
            if not isinstance(item, dict) or not str(item.get("name") or "").strip():
                raise SpecError(f"test {n} has no name")
            try:
                spec = spec_from_data(item)
                agent = _agent_for(item.get("agent"), described, made)
            except SpecError as exc:
                raise SpecError(f"test {n} ({item['name']}): {exc}") from exc
            test = AgentTest.objects.filter(agent=agent, name=item["name"]).first()
            if test is None:
                test, created = AgentTest(agent=agent, name=item["name"]), created + 1
            else:
                updated += 1
            _apply(test, spec)
            test.save()
    return created, updated, made


# --- running -----------------------------------------------------------------------------


def judge_client(real: bool) -> Any:
    """The analysis model's client; offline, the fake Responses API of this process."""
    return analysis_jobs.account_client() if real else analysis_jobs.standin_client()


def judge(rubric: str, transcript: Transcript, *, real: bool) -> tuple[Outcome, dict[str, Any], str]:
    """The rubric as a pass/fail with a reason, by the analysis model (post-call analysis's
    success verdict, with the rubric as its criteria). Returns the outcome, usage, model."""
    plan = analysis.Plan(summary=False, success_criteria=rubric)
    turns = [analysis.Turn(line.speaker, line_text(line)) for line in transcript.lines]
    try:
        answer = analysis_model.analyse(plan, turns, model=settings.ANALYSIS_MODEL, client=judge_client(real))
    except analysis_model.AnalysisFailed as exc:
        return Outcome("rubric", rubric, False, f"the judge failed: {exc}"), {}, ""
    verdict = bool(answer.analysis.success)
    return Outcome("rubric", rubric, verdict, answer.analysis.reason), answer.usage, answer.model


def tool_runner(agent: Agent, call_sid: str, **options: Any) -> agent_test_runner.RunTool:
    """The agent's tools as a test's conversation runs them (``tools.run_tool``; ``options``
    go to it), seeing a call from ``TEST_CALLER``."""
    context = tools.ToolContext(
        call_sid=call_sid, from_number=TEST_CALLER, to_number=agent.phone_number, agent_name=agent.name
    )

    async def run(name: str, arguments: str) -> tuple[Any, str]:
        outcome = await tools.run_tool(name, arguments, context, **options)
        return outcome.output, outcome.error

    return run


def _caller(spec: Spec, *, real: bool, usage: dict[str, Any]) -> agent_test_runner.NextTurn | None:
    """An open-ended test's simulated caller: offline, the stand-in's scripted ``caller``
    lines; real, the text model (``ANALYSIS_MODEL``) given the goal and the persona."""
    if not spec.caller_goal:
        return None
    if not real:
        lines = standin_caller(spec)
        if not lines:
            raise agent_test_runner.ConversationFailed(
                "offline, a simulated caller says the stand-in's caller lines: add standin.caller"
            )
        return agent_test_runner.scripted_caller(lines)
    client = judge_client(True)
    caller_usage = usage.setdefault("caller", {})

    async def next_turn(transcript: Transcript) -> tuple[str, bool]:
        try:
            turn = await asyncio.to_thread(
                simulated_caller.next_turn,
                spec.caller_goal,
                spec.caller_persona,
                transcript,
                model=settings.ANALYSIS_MODEL,
                client=client,
            )
        except analysis_model.AnalysisFailed as exc:
            raise agent_test_runner.ConversationFailed(str(exc)) from exc
        agent_test_runner.add_usage(caller_usage, turn.usage)
        return turn.say, turn.done

    return next_turn


def _converse_in_audio(test: AgentTest, spec: Spec, *, real: bool) -> agent_test_runner.Conversation:
    """The test as a phone call through our real server and bridge (``--audio``): the caller's
    turns spoken, the model's answers heard; the conversation is the call as it was stored."""
    if spec.caller_goal:
        raise agent_test_runner.ConversationFailed(
            "the audio mode speaks scripted caller turns; a simulated caller runs in text"
        )
    replies = None if real else standin_replies(spec, test.agent.instructions)
    try:
        call_sid = simulation.call_through_bridge(
            to_number=test.agent.phone_number,
            caller_turns=list(spec.caller_turns),
            replies=replies,
            write=lambda line: logger.debug("agent test %s: %s", test.pk, line),
        )
    except simulation.SimulationError as exc:
        raise agent_test_runner.ConversationFailed(str(exc)) from exc
    call = Call.objects.get(call_sid=call_sid)
    return agent_test_runner.Conversation(call_transcript(call), dict(call.usage or {}), call.model)


def run_test(test: AgentTest, *, real: bool = False, audio: bool = False, batch: str = "") -> AgentTestRun:
    """One run of one test, stored. A run that cannot be held (a bad test, the model refused)
    is stored with its error and counts as failed."""
    run = AgentTestRun.objects.create(
        test=test, batch=batch or new_batch(), mode=RunMode.REAL if real else RunMode.OFFLINE, audio=audio
    )
    usage: dict[str, Any] = {}
    try:
        spec = spec_of(test)
        agent = agent_settings(test.agent)
        runner = tool_runner(test.agent, f"agent-test-{run.pk}")
        if real and not settings.OPENAI_API_KEY:
            raise agent_test_runner.ConversationFailed("OPENAI_API_KEY is not set: --real needs it")
        if audio:
            conversation = _converse_in_audio(test, spec, real=real)
        elif real:
            conversation = asyncio.run(
                agent_test_runner.converse(
                    spec,
                    agent,
                    url=settings.OPENAI_REALTIME_URL,
                    api_key=settings.OPENAI_API_KEY,
                    run_tool=runner,
                    caller=_caller(spec, real=real, usage=usage),
                )
            )
        else:
            conversation = asyncio.run(
                agent_test_runner.converse_offline(
                    spec, agent, run_tool=runner, caller=_caller(spec, real=real, usage=usage)
                )
            )
    except (SpecError, agent_test_runner.ConversationFailed, analysis_model.AnalysisFailed) as exc:
        run.passed, run.error, run.finished_at, run.usage = False, str(exc), timezone.now(), usage
        run.save(update_fields=["passed", "error", "finished_at", "usage"])
        return run
    outcomes = check(spec, conversation.transcript)
    usage["conversation"] = conversation.usage
    cost = pricing.estimate_cost(conversation.model, conversation.usage) if real else None
    if real and usage.get("caller"):
        cost = _plus(cost, pricing.estimate_text_cost(settings.ANALYSIS_MODEL, usage["caller"]))
    if spec.rubric:
        verdict, judge_usage, judge_model = judge(spec.rubric, conversation.transcript, real=real)
        outcomes.append(verdict)
        run.judge_reason = verdict.message
        usage["judge"] = judge_usage
        if real and judge_model:
            cost = _plus(cost, pricing.estimate_text_cost(judge_model, judge_usage))
    run.passed = all(outcome.passed for outcome in outcomes)
    run.outcomes = [outcome.as_data() for outcome in outcomes]
    run.transcript = [line.as_data() for line in conversation.transcript.lines]
    run.model = conversation.model
    run.usage = usage
    run.cost_usd = cost
    run.finished_at = timezone.now()
    run.save()
    return run


def _plus(total: Decimal | None, more: Decimal | None) -> Decimal | None:
    if more is None:
        return total
    return more if total is None else total + more


def new_batch() -> str:
    return timezone.now().strftime("%Y%m%d%H%M%S") + "-" + secrets.token_hex(3)


@dataclass
class Report:
    """One test over ``runs`` runs of a batch."""

    test: AgentTest
    runs: list[AgentTestRun]

    @property
    def passes(self) -> int:
        return sum(1 for run in self.runs if run.passed)

    @property
    def passed(self) -> bool:
        return self.passes == len(self.runs)

    @property
    def score(self) -> str:
        return f"{self.passes}/{len(self.runs)}"

    def failures(self) -> list[str]:
        """Each failed expectation's message (or the run's error), once, with how often."""
        seen: dict[str, int] = {}
        for run in self.runs:
            messages = [run.error] if run.error else []
            messages += [
                f"{o['kind']} {o['expectation']!r}: {o['message']}" for o in run.outcomes if not o["passed"]
            ]
            for message in messages:
                seen[message] = seen.get(message, 0) + 1
        return [
            f"{message}" + (f" ({count} of {len(self.runs)} runs)" if len(self.runs) > 1 else "")
            for message, count in seen.items()
        ]


def run_tests(
    tests: Iterable[AgentTest],
    *,
    real: bool = False,
    audio: bool = False,
    runs: int = 1,
    batch: str = "",
    progress: Callable[[AgentTest, AgentTestRun], None] | None = None,
) -> list[Report]:
    batch = batch or new_batch()
    reports = []
    for test in tests:
        report = Report(test, [])
        for _ in range(runs):
            run = run_test(test, real=real, audio=audio, batch=batch)
            report.runs.append(run)
            if progress is not None:
                progress(test, run)
        reports.append(report)
    return reports


def pass_rates(agent: Agent, *, last: int = PASS_RATE_RUNS) -> list[tuple[AgentTest, int, int]]:
    """Each of the agent's tests with its passes over its newest finished runs."""
    rates = []
    for test in AgentTest.objects.filter(agent=agent):
        results = list(
            test.runs.exclude(passed__isnull=True)
            .order_by("-started_at", "-pk")
            .values_list("passed", flat=True)[:last]
        )
        rates.append((test, sum(1 for passed in results if passed), len(results)))
    return rates


# --- the admin's button ------------------------------------------------------------------


@task()
def run_agent_tests(agent_id: int, batch: str) -> dict[str, int]:
    """Every test of one agent, offline, as a background job (the admin's "Run tests")."""
    tests = AgentTest.objects.filter(agent_id=agent_id)
    reports = run_tests(tests, batch=batch)
    passed = sum(1 for report in reports if report.passed)
    logger.info("agent %s: tests run (batch %s): %d of %d passed", agent_id, batch, passed, len(reports))
    return {"passed": passed, "tests": len(reports)}


def queue_agent_tests(agent: Agent) -> str:
    batch = new_batch()
    transaction.on_commit(lambda: run_agent_tests.enqueue(agent.pk, batch))
    return batch


__all__ = ["Line", "Report", "judge", "make_test_from_call", "run_test", "run_tests"]
