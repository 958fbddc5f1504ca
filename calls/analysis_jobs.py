"""Post-call analysis, the Django side (issue 16): a plan published as versions, one analysis
asked for when a call ends, the background job that runs it, and the rescue of jobs a dead
worker left behind.

The queue is Django's Tasks interface (``django_tasks``, the backport of Django 6's
``django.tasks``) on the database backend. Its worker does not give back a task whose process
was killed (the task stays "running" for ever), so the ``CallAnalysis`` row, not the queue,
is the truth: a worker claims a row with a conditional update (pending -> running), stores
the result with another (running, same claim -> done), and ``analyses_rescue`` puts a row
whose claim is older than any attempt can last back in the queue. A result is stored, and
the ``call_analysed`` signal sent, once per row, however many workers die or race.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal

import openai
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, OuterRef, QuerySet, Subquery
from django.utils import timezone
from django_tasks import task

from calls import analysis_model, pricing
from calls.analysis import Plan, PlanError, Turn, parse_fields, plan_from_snapshot, snapshot
from calls.models import (
    AnalysisPlan,
    AnalysisPlanVersion,
    AnalysisStatus,
    Call,
    CallAnalysis,
    ToolCall,
    TurnKind,
)
from calls.models import Turn as TurnRow
from calls.signals import call_analysed

logger = logging.getLogger(__name__)

# A claim older than this belongs to a dead worker: one attempt is at most the SDK's four
# tries of ANALYSIS_TIMEOUT_SECONDS plus their backoff (at most 8 s each), with room to spare.
RESCUE_MARGIN = timedelta(minutes=2)
# A pending row that never reached the queue (the process died between the commit and the
# enqueue) is queued again after this long.
UNQUEUED_AFTER = timedelta(minutes=2)


def claim_timeout() -> timedelta:
    tries = analysis_model.MAX_RETRIES + 1
    return timedelta(seconds=tries * (settings.ANALYSIS_TIMEOUT_SECONDS + 8)) + RESCUE_MARGIN


# --- plans -------------------------------------------------------------------------------


def plan_of(plan: AnalysisPlan, fields: Iterable[dict[str, Any]] | None = None) -> Plan:
    """The admin's plan as the pure ``Plan``; ``PlanError`` says what to fix. ``fields`` are
    the field rows as dicts (the admin checks them before saving); default: the saved rows."""
    if fields is None:
        fields = [
            {
                "name": row.name,
                "type": row.type,
                "description": row.description,
                "required": row.required,
                "choices": row.choice_list,
            }
            for row in plan.fields.all()
        ]
    raw = []
    for row in fields:
        item = dict(row)
        if item.get("type") != "choice" and not item.get("choices"):
            item.pop("choices", None)  # only a choice field may carry choices
        raw.append(item)
    return Plan(
        summary=plan.summary,
        summary_instruction=plan.summary_instruction.strip(),
        fields=parse_fields(raw),
        success_criteria=plan.success_criteria.strip(),
    )


def plan_publish(plan: AnalysisPlan) -> AnalysisPlanVersion:
    """The plan's current version, made anew if what it asks has changed since the last one."""
    definition = {**snapshot(plan_of(plan)), "model": plan.model}
    with transaction.atomic():
        AnalysisPlan.objects.select_for_update().filter(pk=plan.pk).first()  # one publisher at a time
        latest = plan.versions.order_by("-number").first()
        if latest is not None and latest.definition == definition:
            return latest
        number = latest.number + 1 if latest else 1
        return AnalysisPlanVersion.objects.create(plan=plan, number=number, definition=definition)


def current_version(agent_id: int) -> AnalysisPlanVersion | None:
    """The version new analyses of this agent's calls use; None: the agent is not analysed."""
    return (
        AnalysisPlanVersion.objects.filter(plan__agent_id=agent_id, plan__enabled=True)
        .order_by("-number")
        .first()
    )


# --- asking for an analysis --------------------------------------------------------------


def has_conversation(call: Call) -> bool:
    return TurnRow.objects.filter(call=call).exists() or ToolCall.objects.filter(call=call).exists()


def request_for_ended_call(call: Call) -> CallAnalysis | None:
    """The analysis a call's end asks for, queued once its transaction commits; at most one
    per call, whoever ends it (the bridge, a status callback, ``close_stale_calls``). None:
    the agent has no enabled plan, the call has no conversation, or it was asked already."""
    if call.agent_id is None:
        return None
    version = current_version(call.agent_id)
    if version is None or not has_conversation(call):
        return None
    try:
        with transaction.atomic():
            analysis = CallAnalysis.objects.create(call=call, plan_version=version, automatic=True)
    except IntegrityError:
        return None
    transaction.on_commit(partial(enqueue, analysis.pk))
    return analysis


def request_again(
    calls: QuerySet[Call], *, rerun: bool, queue: bool = True
) -> tuple[list[CallAnalysis], int]:
    """New analyses of past calls with their agent's current plan (the admin action and
    ``analyse_calls``). Without ``rerun``, calls already analysed, or being analysed, with
    that very version are skipped. ``queue``: hand them to the task workers; otherwise the
    caller runs them (``run``). Returns the new rows and how many calls were skipped."""
    created, skipped = [], 0
    for call in calls.select_related("agent").order_by("created_at"):
        version = current_version(call.agent_id) if call.agent_id else None
        if version is None or not has_conversation(call):
            skipped += 1
            continue
        done_already = call.analyses.filter(plan_version=version).exclude(status=AnalysisStatus.FAILED)
        if not rerun and done_already.exists():
            skipped += 1
            continue
        with transaction.atomic():
            # The call's end may not have asked yet (the call ended before the plan existed).
            automatic = not call.analyses.filter(automatic=True).exists()
            analysis = CallAnalysis.objects.create(call=call, plan_version=version, automatic=automatic)
            if queue:
                transaction.on_commit(partial(enqueue, analysis.pk))
        created.append(analysis)
    return created, skipped


def enqueue(analysis_id: int) -> None:
    """Put a row in the queue. A failure is logged: the row stays pending and
    ``analyses_rescue`` queues it again later."""
    try:
        analyse_call.enqueue(analysis_id)
    except Exception:
        logger.exception(
            "analysis %s: could not be queued; close_stale_calls will queue it again", analysis_id
        )


def analyses_rescue(*, now: datetime | None = None) -> list[int]:
    """Queue again what a dead worker or a lost enqueue left: rows claimed longer ago than an
    attempt can last, and pending rows older than ``UNQUEUED_AFTER`` with no live task."""
    now = now or timezone.now()
    abandoned = CallAnalysis.objects.filter(
        status=AnalysisStatus.RUNNING, started_at__lt=now - claim_timeout()
    )
    reset = []
    for pk in abandoned.values_list("pk", flat=True):
        # Conditional: a worker that was only slow and stores now wins, and nothing is reset.
        if CallAnalysis.objects.filter(
            pk=pk, status=AnalysisStatus.RUNNING, started_at__lt=now - claim_timeout()
        ).update(
            status=AnalysisStatus.PENDING,
            error="The worker running this analysis stopped; it was queued again.",
        ):
            logger.warning("analysis %s: its worker stopped mid-job; queued again", pk)
            reset.append(pk)
    waiting = set(
        CallAnalysis.objects.filter(status=AnalysisStatus.PENDING, created_at__lt=now - UNQUEUED_AFTER)
        .exclude(pk__in=reset)
        .values_list("pk", flat=True)
    )
    stranded = sorted(waiting - _queued_ids(waiting))
    for pk in reset + stranded:
        enqueue(pk)
    return reset + stranded


def _queued_ids(candidates: set[int]) -> set[int]:
    """Which of these rows have a task waiting in the queue (ready, or running)."""
    if not candidates:
        return set()
    from django_tasks_db.models import DBTaskResult

    queued = DBTaskResult.objects.filter(
        task_path=analyse_call.module_path, status__in=["READY", "RUNNING"]
    ).values_list("args_kwargs", flat=True)
    found = set()
    for args_kwargs in queued.iterator():
        args = (args_kwargs or {}).get("args") or []
        if args and args[0] in candidates:
            found.add(args[0])
    return found


# --- the job -----------------------------------------------------------------------------


@task()
def analyse_call(analysis_id: int) -> str:
    """The background job: analyse one call (the row says which, and with which plan)."""
    return run(analysis_id).outcome


@dataclass(frozen=True)
class RunResult:
    outcome: str  # "done", "failed" or "skipped"
    analysis: CallAnalysis | None = None


def conversation(call: Call) -> list[Turn]:
    """The call as the analysing model reads it: turns and tool calls in conversation order,
    interrupted agent turns marked, key presses and tool results included."""
    lines: list[tuple[int, int, Turn]] = []
    for row in TurnRow.objects.filter(call=call).order_by("position"):
        text = f"(pressed {row.text})" if row.kind == TurnKind.DTMF else row.text
        speaker: Literal["caller", "agent"] = "caller" if row.role == "caller" else "agent"
        lines.append((row.position, 0, Turn(speaker, text, interrupted=row.interrupted)))
    for tool in ToolCall.objects.filter(call=call).order_by("position", "pk"):
        arguments = json.dumps(tool.arguments, ensure_ascii=False, sort_keys=True)
        outcome = f"error: {tool.error}" if tool.error else json.dumps(tool.result, ensure_ascii=False)
        lines.append((tool.position, 1, Turn("tool", f"{tool.name}({arguments}) -> {outcome}")))
    return [turn for _, _, turn in sorted(lines, key=lambda line: (line[0], line[1]))]


def run(analysis_id: int, *, client: openai.OpenAI | None = None) -> RunResult:
    """Claim the row, ask the model, store the checked answer or the failure. Never raises
    for what the model or the network does: a failure is stored on the row, to be re-run."""
    claimed_at = timezone.now()
    claimed = CallAnalysis.objects.filter(pk=analysis_id, status=AnalysisStatus.PENDING).update(
        status=AnalysisStatus.RUNNING, started_at=claimed_at, attempts=F("attempts") + 1, error=""
    )
    if not claimed:
        logger.info("analysis %s: not pending (done, running elsewhere, or deleted); skipped", analysis_id)
        return RunResult("skipped")
    analysis = CallAnalysis.objects.select_related("call", "plan_version").get(pk=analysis_id)
    mine = CallAnalysis.objects.filter(pk=analysis_id, status=AnalysisStatus.RUNNING, started_at=claimed_at)
    definition = analysis.plan_version.definition
    model = str(definition.get("model") or settings.ANALYSIS_MODEL)
    try:
        plan = plan_from_snapshot(definition)
        answer = analysis_model.analyse(
            plan, conversation(analysis.call), model=model, client=client or default_client()
        )
    except (analysis_model.AnalysisFailed, PlanError) as exc:
        return _failed(analysis, mine, model, str(exc))
    except Exception as exc:  # a bug of ours must not leave the row running for ever
        logger.exception("analysis %s: unexpected error", analysis_id)
        return _failed(analysis, mine, model, f"unexpected error: {type(exc).__name__}: {exc}")
    result = answer.analysis
    cost = pricing.estimate_text_cost(answer.model, answer.usage)
    with transaction.atomic():
        stored = mine.update(
            status=AnalysisStatus.DONE,
            summary=result.summary,
            data=result.data,
            success=result.success,
            reason=result.reason,
            model=answer.model[:64],
            usage=answer.usage,
            cost_usd=cost,
            finished_at=timezone.now(),
        )
        if stored:
            transaction.on_commit(lambda: _announce(analysis_id))
    if not stored:
        logger.warning(
            "analysis %s: re-queued while this worker ran it; its result is not stored", analysis_id
        )
        return RunResult("skipped")
    logger.info("analysis %s of call %s: done", analysis_id, analysis.call.call_sid)
    analysis.refresh_from_db()
    return RunResult("done", analysis)


def _failed(analysis: CallAnalysis, mine: QuerySet[CallAnalysis], model: str, error: str) -> RunResult:
    logger.warning("analysis %s of call %s failed: %s", analysis.pk, analysis.call.call_sid, error)
    mine.update(
        status=AnalysisStatus.FAILED, model=model[:64], error=error[:2000], finished_at=timezone.now()
    )
    analysis.refresh_from_db()
    return RunResult("failed", analysis)


def _announce(analysis_id: int) -> None:
    """Send ``call_analysed`` for a stored analysis. A receiver's error is logged, never
    undoes the stored analysis, and never stops the other receivers."""
    analysis = CallAnalysis.objects.select_related("call", "call__agent").get(pk=analysis_id)
    for receiver, response in call_analysed.send_robust(
        sender=CallAnalysis, analysis=analysis, call=analysis.call, data=analysis.data
    ):
        if isinstance(response, Exception):
            logger.error(
                "analysis %s: receiver %s of call_analysed failed: %r",
                analysis_id,
                getattr(receiver, "__qualname__", receiver),
                response,
            )


# --- the model client --------------------------------------------------------------------

_standin_lock = threading.Lock()
_standin_url: str | None = None


def default_client() -> openai.OpenAI:
    """The SDK client for the configured account; on a development server with no key (the
    stand-in's rule, ``OPENAI_STANDIN``), the bundled fake Responses API, started once per
    process, so a newcomer's calls are analysed offline."""
    if settings.OPENAI_API_KEY:
        return account_client()
    if not settings.OPENAI_STANDIN:
        raise analysis_model.AnalysisFailed("OPENAI_API_KEY is not set")
    return standin_client()


def account_client() -> openai.OpenAI:
    """The configured account: its key, ``OPENAI_BASE_URL``, the analysis timeout."""
    if not settings.OPENAI_API_KEY:
        raise analysis_model.AnalysisFailed("OPENAI_API_KEY is not set")
    return analysis_model.client(
        api_key=settings.OPENAI_API_KEY,
        base_url=settings.OPENAI_BASE_URL,
        timeout=settings.ANALYSIS_TIMEOUT_SECONDS,
    )


def standin_client() -> openai.OpenAI:
    """The bundled fake Responses API of this process."""
    return analysis_model.client(api_key="stand-in", base_url=standin_base_url(), timeout=10.0)


def standin_base_url() -> str:
    global _standin_url
    with _standin_lock:
        if _standin_url is None:
            from calls.fakes.openai_responses import FakeResponsesServer

            server = FakeResponsesServer()
            server.start()
            _standin_url = server.base_url
            logger.info("no OPENAI_API_KEY: calls are analysed by the offline stand-in at %s", _standin_url)
        return _standin_url


# --- reading results ---------------------------------------------------------------------


def latest_done(call: Call) -> CallAnalysis | None:
    return call.analyses.filter(status=AnalysisStatus.DONE).select_related("plan_version").first()


def _newest_done() -> QuerySet[CallAnalysis]:
    return CallAnalysis.objects.filter(call=OuterRef("pk"), status=AnalysisStatus.DONE).order_by(
        "-created_at", "-pk"
    )


def with_verdict(calls: QuerySet[Call]) -> QuerySet[Call]:
    """Calls annotated with their newest done analysis's ``verdict`` (True, False or None)
    and ``analysis_summary``: the admin's success column and filter read these."""
    return calls.annotate(
        verdict=Subquery(_newest_done().values("success")[:1]),
        analysis_summary=Subquery(_newest_done().values("summary")[:1]),
    )


def success_rate(agent_id: int, *, last: int = 50) -> tuple[int, int]:
    """(successes, judged) over the agent's ``last`` most recent calls that have a verdict."""
    judged = (
        Call.objects.filter(agent_id=agent_id)
        .annotate(verdict=Subquery(_newest_done().values("success")[:1]))
        .filter(verdict__isnull=False)
        .order_by("-created_at")
        .values_list("verdict", flat=True)[:last]
    )
    verdicts = list(judged)
    return sum(1 for verdict in verdicts if verdict), len(verdicts)


__all__ = [
    "analyse_call",
    "analyses_rescue",
    "conversation",
    "current_version",
    "latest_done",
    "plan_of",
    "plan_publish",
    "request_again",
    "request_for_ended_call",
    "run",
    "success_rate",
    "with_verdict",
]
