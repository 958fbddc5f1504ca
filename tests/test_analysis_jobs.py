"""Post-call analysis, the Django side: plans and their versions, one analysis per ended call,
the job against the fake Responses API through the official SDK (retries, timeouts, refused
answers), the rescue of abandoned jobs, the signal, ``analyse_calls`` and the example receiver."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from io import StringIO
from typing import Any

import pytest
from django.core import mail
from django.core.management import call_command
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from calls import analysis_jobs, analysis_model, maintenance, services
from calls.analysis import output_schema
from calls.bridge.actions import CallSummary
from calls.fakes.openai_responses import FakeResponsesServer
from calls.models import (
    Agent,
    AnalysisField,
    AnalysisPlan,
    AnalysisStatus,
    Call,
    CallAnalysis,
    CallStatus,
    Role,
    ToolCall,
    Turn,
)
from calls.signals import call_analysed

pytestmark = pytest.mark.django_db

API_KEY = "sk-test-analysis"


@pytest.fixture(scope="module")
def responses() -> Iterator[FakeResponsesServer]:
    with FakeResponsesServer(api_key=API_KEY) as server:
        yield server


@pytest.fixture
def fake(responses: FakeResponsesServer, settings: Any) -> FakeResponsesServer:
    """The fake Responses API, as the configured account (settings) reaches it."""
    responses.reset()
    settings.OPENAI_API_KEY = API_KEY
    settings.OPENAI_BASE_URL = responses.base_url
    return responses


@pytest.fixture
def agent() -> Agent:
    agent = Agent.objects.create(name="Bookings", phone_number="+15550009999", instructions="Book tables.")
    plan = AnalysisPlan.objects.create(
        agent=agent,
        summary=True,
        success_criteria="A table was booked.",
    )
    AnalysisField.objects.create(plan=plan, position=1, name="party_size", type="number", required=True)
    AnalysisField.objects.create(plan=plan, position=2, name="caller_name", type="text")
    AnalysisField.objects.create(
        plan=plan, position=3, name="seating", type="choice", choices="inside, terrace"
    )
    analysis_jobs.plan_publish(plan)
    return agent


def ended_call(agent: Agent | None, n: int = 1, *, conversation: bool = True) -> Call:
    call = Call.objects.create(
        call_sid=f"CA{n:032d}",
        agent=agent,
        from_number="+15550001111",
        to_number="+15550009999",
        status=CallStatus.IN_PROGRESS,
        started_at=timezone.now(),
    )
    if conversation:
        Turn.objects.create(
            call=call, position=0, role=Role.CALLER, text="A table for 4 please, name is Ada."
        )
        Turn.objects.create(
            call=call, position=1, role=Role.AGENT, text="Sure, inside or on the", interrupted=True
        )
        ToolCall.objects.create(
            call=call,
            position=2,
            name="book_table",
            arguments={"party_size": 4},
            result={"booked": True, "reference": "R-1"},
        )
        Turn.objects.create(call=call, position=3, role=Role.AGENT, text="Booked, reference R-1.")
    return call


def finalize(call: Call) -> None:
    services.call_finalize(call_sid=call.call_sid, summary=CallSummary(reason="caller_hung_up"))


def queued_ids() -> list[int]:
    return [row.args_kwargs["args"][0] for row in DBTaskResult.objects.filter(status="READY")]


# --- plans and versions ------------------------------------------------------------------


def test_a_plan_gets_a_new_version_only_when_what_it_asks_changes(agent: Agent) -> None:
    plan = agent.analysis_plan
    assert [v.number for v in plan.versions.all()] == [1]
    assert analysis_jobs.plan_publish(plan).number == 1  # saved again unchanged
    plan.success_criteria = "A table was booked and confirmed."
    plan.save()
    assert analysis_jobs.plan_publish(plan).number == 2
    AnalysisField.objects.create(plan=plan, position=4, name="allergies", type="text")
    version = analysis_jobs.plan_publish(plan)
    assert version.number == 3
    assert [f["name"] for f in version.definition["fields"]] == [
        "party_size",
        "caller_name",
        "seating",
        "allergies",
    ]
    assert plan.versions.get(number=1).definition["success_criteria"] == "A table was booked."


def test_the_default_agents_plan_from_the_migration_is_its_version_one() -> None:
    plan = AnalysisPlan.objects.get(agent__name="Default agent")
    assert analysis_jobs.plan_publish(plan).number == 1, "the migration's definition must match its rows"
    output_schema(analysis_jobs.plan_of(plan))  # a valid strict schema


# --- asking for analyses -----------------------------------------------------------------


def test_a_call_that_ends_asks_for_one_analysis_queued_after_commit(
    agent, django_capture_on_commit_callbacks
):
    call = ended_call(agent)
    with django_capture_on_commit_callbacks(execute=True):
        finalize(call)
    analysis = CallAnalysis.objects.get(call=call)
    assert analysis.status == AnalysisStatus.PENDING and analysis.automatic
    assert analysis.plan_version == agent.analysis_plan.versions.get()
    assert queued_ids() == [analysis.pk]
    # Ended again (a retry, a status callback, close_stale_calls): still one.
    with django_capture_on_commit_callbacks(execute=True):
        finalize(call)
    assert CallAnalysis.objects.filter(call=call).count() == 1
    assert queued_ids() == [analysis.pk]


def test_calls_closed_by_close_stale_calls_are_analysed(agent, django_capture_on_commit_callbacks):
    call = ended_call(agent)
    with django_capture_on_commit_callbacks(execute=True):
        assert maintenance.calls_close_stale(everything=True) == [call.call_sid]
    assert queued_ids() == [CallAnalysis.objects.get(call=call).pk]


def test_no_analysis_without_an_enabled_plan_or_a_conversation(agent):
    bare = Agent.objects.create(name="No plan", phone_number="+15550001234", instructions="x")
    finalize(ended_call(bare, 1))
    finalize(ended_call(agent, 2, conversation=False))
    AnalysisPlan.objects.filter(agent=agent).update(enabled=False)
    finalize(ended_call(agent, 3))
    assert not CallAnalysis.objects.exists()


# --- the job -----------------------------------------------------------------------------


def test_the_job_stores_the_checked_answer_with_usage_and_cost(agent, fake):
    call = ended_call(agent)
    finalize(call)
    analysis = CallAnalysis.objects.get(call=call)
    result = analysis_jobs.run(analysis.pk)
    assert result.outcome == "done"
    analysis.refresh_from_db()
    assert analysis.status == AnalysisStatus.DONE and analysis.attempts == 1
    assert analysis.data["party_size"] == 4  # derived by the fake from the transcript
    assert set(analysis.data) == {"party_size", "caller_name", "seating"}
    assert analysis.success is not None and analysis.reason
    assert analysis.summary
    assert analysis.model == "gpt-5-mini"
    assert analysis.usage["total_tokens"] > 0
    assert analysis.cost_usd is not None and analysis.cost_usd > 0
    call.refresh_from_db()
    assert call.cost_usd is None or analysis.cost_usd != call.cost_usd  # the call's own cost is apart
    # What the model was sent: the transcript in order, the interruption and the tool call marked.
    (request,) = fake.requests
    transcript = request["input"][0]["content"]
    assert transcript.splitlines() == [
        "caller: A table for 4 please, name is Ada.",
        "agent [interrupted]: Sure, inside or on the",
        'tool: book_table({"party_size": 4}) -> {"booked": true, "reference": "R-1"}',
        "agent: Booked, reference R-1.",
    ]
    assert request["text"]["format"]["strict"] is True
    assert request["model"] == "gpt-5-mini"


def test_the_plan_chooses_the_model(agent, fake):
    plan = agent.analysis_plan
    plan.model = "gpt-5-nano"
    plan.save()
    analysis_jobs.plan_publish(plan)
    finalize(call := ended_call(agent))
    analysis_jobs.run(CallAnalysis.objects.get(call=call).pk)
    assert fake.requests[-1]["model"] == "gpt-5-nano"
    assert CallAnalysis.objects.get(call=call).model == "gpt-5-nano"


def test_the_signal_is_sent_once_with_the_checked_data(agent, fake, django_capture_on_commit_callbacks):
    received: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        received.append(kwargs)

    call_analysed.connect(receiver)
    try:
        finalize(call := ended_call(agent))
        pk = CallAnalysis.objects.get(call=call).pk
        with django_capture_on_commit_callbacks(execute=True):
            assert analysis_jobs.run(pk).outcome == "done"
        with django_capture_on_commit_callbacks(execute=True):
            assert analysis_jobs.run(pk).outcome == "skipped"  # delivered twice by the queue
    finally:
        call_analysed.disconnect(receiver)
    assert len(received) == 1
    assert received[0]["call"] == call
    assert received[0]["data"] == CallAnalysis.objects.get(pk=pk).data
    assert len(fake.requests) == 1


def test_a_failing_receiver_does_not_undo_the_analysis(
    agent, fake, django_capture_on_commit_callbacks, caplog
):
    def broken(sender: Any, **kwargs: Any) -> None:
        raise RuntimeError("crm is down")

    call_analysed.connect(broken)
    try:
        finalize(call := ended_call(agent))
        with django_capture_on_commit_callbacks(execute=True):
            assert analysis_jobs.run(CallAnalysis.objects.get(call=call).pk).outcome == "done"
    finally:
        call_analysed.disconnect(broken)
    assert CallAnalysis.objects.get(call=call).status == AnalysisStatus.DONE
    assert "crm is down" in caplog.text


def test_429_is_retried_then_succeeds(agent, fake):
    fake.fail_next(429, retry_after=0)
    finalize(call := ended_call(agent))
    assert analysis_jobs.run(CallAnalysis.objects.get(call=call).pk).outcome == "done"
    assert len(fake.requests) == 2


def test_5xx_after_every_retry_is_stored_as_a_failure_and_runs_again_later(agent, fake):
    for _ in range(analysis_model.MAX_RETRIES + 1):
        fake.fail_next(503, retry_after=0)
    finalize(call := ended_call(agent))
    failed = analysis_jobs.run(CallAnalysis.objects.get(call=call).pk).analysis
    assert failed is not None and failed.status == AnalysisStatus.FAILED
    assert "HTTP 503" in failed.error and failed.finished_at is not None
    assert len(fake.requests) == analysis_model.MAX_RETRIES + 1
    # Re-run later (the admin action, analyse_calls): a new row; the failure is kept.
    (again,), skipped = analysis_jobs.request_again(Call.objects.filter(pk=call.pk), rerun=False, queue=False)
    assert skipped == 0
    assert analysis_jobs.run(again.pk).outcome == "done"
    assert sorted(call.analyses.values_list("status", flat=True)) == ["done", "failed"]


def test_a_timeout_is_stored_as_a_failure(agent, fake):
    for _ in range(analysis_model.MAX_RETRIES + 1):
        fake.delay_next(5)
    finalize(call := ended_call(agent))
    client = analysis_model.client(api_key=API_KEY, base_url=fake.base_url, timeout=0.2)
    result = analysis_jobs.run(CallAnalysis.objects.get(call=call).pk, client=client)
    assert result.outcome == "failed"
    assert result.analysis is not None and "did not answer in time" in result.analysis.error


def test_an_answer_that_breaks_the_schema_is_refused_and_nothing_is_stored(agent, fake):
    fake.invalid_output_next()
    finalize(call := ended_call(agent))
    result = analysis_jobs.run(CallAnalysis.objects.get(call=call).pk)
    assert result.outcome == "failed"
    assert result.analysis is not None
    assert "does not match the plan" in result.analysis.error
    assert result.analysis.data == {} and result.analysis.summary == "" and result.analysis.success is None


def test_without_a_key_a_production_server_stores_why(agent, settings):
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_STANDIN = False
    finalize(call := ended_call(agent))
    result = analysis_jobs.run(CallAnalysis.objects.get(call=call).pk)
    assert result.analysis is not None and result.analysis.error == "OPENAI_API_KEY is not set"


def test_without_a_key_a_development_server_uses_the_offline_stand_in(agent, settings):
    settings.OPENAI_API_KEY = ""
    settings.OPENAI_STANDIN = True
    finalize(call := ended_call(agent))
    assert analysis_jobs.run(CallAnalysis.objects.get(call=call).pk).outcome == "done"


# --- rescue ------------------------------------------------------------------------------


def test_an_abandoned_claim_is_queued_again_and_the_late_result_is_refused(agent, fake):
    finalize(call := ended_call(agent))
    analysis = CallAnalysis.objects.get(call=call)
    # A worker claimed it long ago and never came back.
    claimed = timezone.now() - analysis_jobs.claim_timeout() - timedelta(seconds=1)
    CallAnalysis.objects.filter(pk=analysis.pk).update(status=AnalysisStatus.RUNNING, started_at=claimed)
    assert analysis_jobs.analyses_rescue() == [analysis.pk]
    assert queued_ids() == [analysis.pk]
    assert analysis_jobs.run(analysis.pk).outcome == "done"
    # The old claim cannot store over it, nor be rescued again.
    assert not CallAnalysis.objects.filter(
        pk=analysis.pk, status=AnalysisStatus.RUNNING, started_at=claimed
    ).exists()
    assert analysis_jobs.analyses_rescue() == []


def test_a_recent_claim_is_left_alone(agent):
    finalize(call := ended_call(agent))
    CallAnalysis.objects.filter(call=call).update(status=AnalysisStatus.RUNNING, started_at=timezone.now())
    assert analysis_jobs.analyses_rescue() == []


def test_a_pending_analysis_that_never_reached_the_queue_is_queued(agent):
    finalize(call := ended_call(agent))  # on_commit not run here: nothing was queued
    analysis = CallAnalysis.objects.get(call=call)
    assert queued_ids() == []
    assert analysis_jobs.analyses_rescue() == []  # too recent: its enqueue may be on its way
    later = timezone.now() + analysis_jobs.UNQUEUED_AFTER + timedelta(seconds=1)
    assert analysis_jobs.analyses_rescue(now=later) == [analysis.pk]
    assert analysis_jobs.analyses_rescue(now=later) == []  # queued now: not twice
    assert queued_ids() == [analysis.pk]


def test_close_stale_calls_reports_what_it_queued_again(agent):
    finalize(call := ended_call(agent))
    CallAnalysis.objects.filter(call=call).update(
        status=AnalysisStatus.RUNNING, started_at=timezone.now() - timedelta(hours=1)
    )
    out = StringIO()
    call_command("close_stale_calls", stdout=out)
    assert "Queued 1 analysis again." in out.getvalue()


# --- analyse_calls -------------------------------------------------------------------------


def command(*args: str) -> str:
    out = StringIO()
    call_command("analyse_calls", *args, stdout=out)
    return out.getvalue()


def test_analyse_calls_after_a_plan_change(agent, fake):
    for n in range(1, 4):
        finalize(ended_call(agent, n))
    CallAnalysis.objects.all().delete()  # as if the calls had ended before the plan existed
    assert command("--dry-run") == "Would analyse 3 calls; would skip 0.\n"
    out = command("--agent", "Bookings")
    assert "[3/3]" in out
    assert out.splitlines()[-1] == (
        "Analysed 3 calls: 3 done, 0 failed; skipped 0 (already analysed, no plan or nothing said)."
    )
    assert command("--dry-run").startswith("Would analyse 0 calls; would skip 3.")
    # The plan changes: every call is due again, once.
    plan = agent.analysis_plan
    plan.summary_instruction = "Mention the seating."
    plan.save()
    analysis_jobs.plan_publish(plan)
    assert command("--since", "1d").splitlines()[-1].startswith("Analysed 3 calls: 3 done")
    assert command().splitlines()[-1].startswith("Analysed 0 calls")
    assert command("--rerun").splitlines()[-1].startswith("Analysed 3 calls: 3 done")
    assert CallAnalysis.objects.filter(status=AnalysisStatus.DONE).count() == 9


def test_analyse_calls_queue_hands_them_to_the_workers(agent, django_capture_on_commit_callbacks):
    finalize(ended_call(agent))
    CallAnalysis.objects.all().delete()
    with django_capture_on_commit_callbacks(execute=True):
        assert command("--queue") == "Queued 1 analysis; skipped 0 calls.\n"
    assert queued_ids() == list(CallAnalysis.objects.values_list("pk", flat=True))


def test_analyse_calls_refuses_an_unknown_agent():
    from django.core.management import CommandError

    with pytest.raises(CommandError, match="No agent is named 'Nobody'"):
        command("--agent", "Nobody")


# --- the example receiver ------------------------------------------------------------------


def test_the_example_emails_a_follow_up_for_a_callback_request(
    fake, settings, django_capture_on_commit_callbacks
):
    settings.FOLLOW_UP_EMAIL = "staff@example.com"
    agent = Agent.objects.get(name="Default agent")
    call = ended_call(agent)
    Turn.objects.create(
        call=call, position=4, role=Role.CALLER, text="Callback requested: yes, on +14155550100 please."
    )
    finalize(call)
    with django_capture_on_commit_callbacks(execute=True):
        analysis = analysis_jobs.run(CallAnalysis.objects.get(call=call).pk).analysis
    assert analysis is not None and analysis.data["callback_requested"] is True, analysis.data
    (message,) = mail.outbox
    assert message.to == ["staff@example.com"]
    assert call.call_sid in message.subject
    assert "+14155550100" in message.body


def test_the_stored_definition_round_trips_through_json(agent):
    version = agent.analysis_plan.versions.get()
    assert json.loads(json.dumps(version.definition)) == version.definition
