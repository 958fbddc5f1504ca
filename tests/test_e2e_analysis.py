"""The analysis job through the real task worker (``manage.py db_worker``, its own process) on
the test database, against the fake Responses API: a call's analysis is stored once, even when
the worker is SIGKILLed in the middle of the model call."""

from __future__ import annotations

import signal
from datetime import timedelta

from django.utils import timezone

from calls import analysis_jobs, services
from calls.bridge.actions import CallSummary
from calls.models import Agent, AnalysisField, AnalysisPlan, AnalysisStatus, Call, CallAnalysis, Role, Turn
from tests.waiting import wait_until


def ended_call_with_plan() -> Call:
    agent = Agent.objects.create(name="Bookings", phone_number="+15550009999", instructions="Book tables.")
    plan = AnalysisPlan.objects.create(agent=agent, success_criteria="A table was booked.")
    AnalysisField.objects.create(plan=plan, position=1, name="party_size", type="number", required=True)
    analysis_jobs.plan_publish(plan)
    call = Call.objects.create(call_sid="CA" + "7" * 32, agent=agent, started_at=timezone.now())
    Turn.objects.create(call=call, position=0, role=Role.CALLER, text="A table for 6 tonight.")
    Turn.objects.create(call=call, position=1, role=Role.AGENT, text="Booked for 6.")
    # Autocommit here (transactional_db): the analysis is queued as the call's end commits.
    services.call_finalize(call_sid=call.call_sid, summary=CallSummary(reason="caller_hung_up"))
    return call


def analysis_of(call: Call) -> CallAnalysis:
    return CallAnalysis.objects.get(call=call)


def test_the_worker_analyses_an_ended_call(start_worker, responses):
    call = ended_call_with_plan()
    start_worker()
    wait_until(lambda: analysis_of(call).status == AnalysisStatus.DONE, 30, "the worker stored the analysis")
    analysis = analysis_of(call)
    assert analysis.data == {"party_size": 6}
    assert analysis.attempts == 1 and len(responses.requests) == 1


def test_a_worker_killed_mid_job_loses_nothing_and_runs_nothing_twice(start_worker, responses):
    responses.delay_next(60)  # the first model call hangs: the worker is killed inside it
    call = ended_call_with_plan()
    first, first_log = start_worker()
    wait_until(lambda: len(responses.requests) == 1, 30, "the worker sent the model request")
    assert analysis_of(call).status == AnalysisStatus.RUNNING
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    # The killed worker's claim stays; the rescue (close_stale_calls, every 5 minutes in
    # production) queues it again once the claim is older than any attempt can last.
    assert analysis_of(call).status == AnalysisStatus.RUNNING
    later = timezone.now() + analysis_jobs.claim_timeout() + timedelta(seconds=1)
    assert analysis_jobs.analyses_rescue(now=later) == [analysis_of(call).pk]
    _, second_log = start_worker()
    wait_until(lambda: analysis_of(call).status == AnalysisStatus.DONE, 30, "the second worker stored it")
    analysis = analysis_of(call)
    assert analysis.attempts == 2 and analysis.data == {"party_size": 6}
    assert CallAnalysis.objects.filter(call=call).count() == 1
    assert len(responses.requests) == 2  # the lost attempt, and the one that counted
    done_lines = [
        line
        for log in (first_log, second_log)
        for line in log.read_text(errors="replace").splitlines()
        if f"analysis {analysis.pk} of call {call.call_sid}: done" in line
    ]
    assert len(done_lines) == 1, done_lines
