"""Post-call analysis in the bridge benchmark (issue 16): the fake Responses API and the task
worker as processes of their own, the agent's plan on or off, a backlog of analyses released
while a round's calls are live, and the time from a call's end to its stored analysis.

Used by ``bench/bridge_latency.py --analysis [--analysis-backlog N]``.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# The Benchmark agent's plan: a summary, four fields and a verdict, like a booking line's.
PLAN_SETUP = """
from calls import analysis_jobs
from calls.models import Agent, AnalysisField, AnalysisPlan
agent = Agent.objects.get(phone_number={number!r})
plan, _ = AnalysisPlan.objects.update_or_create(
    agent=agent, defaults=dict(enabled={enabled!r}, summary=True, success_criteria="The caller was answered.")
)
for position, (name, kind) in enumerate([("caller_name", "text"), ("party_size", "number"),
                                         ("callback_requested", "yes_no"), ("callback_number", "phone")]):
    AnalysisField.objects.update_or_create(plan=plan, name=name, defaults=dict(type=kind, position=position))
analysis_jobs.plan_publish(plan)
"""

# ``count`` calls of the Benchmark agent that ended just now, 12 turns each, their analyses
# asked for and queued (as call_finalize does), in one transaction.
BACKLOG_SETUP = """
import secrets
from django.db import transaction
from django.utils import timezone
from calls import analysis_jobs
from calls.models import Agent, Call, Turn
agent = Agent.objects.get(phone_number={number!r})
with transaction.atomic():
    for _ in range({count}):
        call = Call.objects.create(call_sid="CAbacklog" + secrets.token_hex(12), agent=agent,
                                   started_at=timezone.now(), ended_at=timezone.now(), status="completed")
        Turn.objects.bulk_create([
            Turn(call=call, position=i, role="caller" if i % 2 == 0 else "agent",
                 text=("My name is Ada, a table for 4 tonight please, call me back on +14155550100."
                       if i % 2 == 0 else "Of course, let me check that for you."))
            for i in range(12)
        ])
        analysis_jobs.request_for_ended_call(call)
"""


def start_responses_fake(port: int, log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "calls.fakes.openai_responses", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def start_worker(env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """The task worker as production runs it (deploy/systemd/voiceagent-tasks.service: Nice=10,
    so on a busy machine the calls' audio gets the CPU first)."""
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [
                *("nice", "-n", "10"),
                sys.executable,
                "manage.py",
                "db_worker",
                "--no-reload",
                "--no-startup-delay",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _rows(database_url: str, call_sids: list[str]) -> list[tuple[Any, ...]]:
    postgres = database_url.startswith("postgres")
    placeholders = ",".join(["%s" if postgres else "?"] * len(call_sids))
    sql = (
        "SELECT c.call_sid, c.ended_at, a.finished_at, a.status FROM calls_callanalysis a "
        f"JOIN calls_call c ON a.call_id = c.id WHERE c.call_sid IN ({placeholders})"
    )
    if postgres:
        import psycopg

        with psycopg.connect(database_url, connect_timeout=10) as connection:
            return list(connection.execute(sql, call_sids).fetchall())
    import sqlite3

    path = database_url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path, timeout=20)) as connection:
        return list(connection.execute(sql, call_sids).fetchall())


def backlog_sids(database_url: str) -> list[str]:
    """The Call SIDs of every backlog call made so far (BACKLOG_SETUP's prefix)."""
    sql = "SELECT call_sid FROM calls_call WHERE call_sid LIKE 'CAbacklog%'"
    if database_url.startswith("postgres"):
        import psycopg

        with psycopg.connect(database_url, connect_timeout=10) as connection:
            return [row[0] for row in connection.execute(sql).fetchall()]
    import sqlite3

    path = database_url.removeprefix("sqlite:///")
    with contextlib.closing(sqlite3.connect(path, timeout=20)) as connection:
        return [row[0] for row in connection.execute(sql).fetchall()]


def _instant(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def _percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered) + 0.5) - 1))]


def end_to_stored(database_url: str, call_sids: list[str], timeout: float = 120.0) -> dict[str, Any]:
    """Wait (bounded) until these calls' analyses are finished; the time from each call's end to
    its stored analysis. Polled: the worker is another process, with nothing to wait on."""
    deadline = time.monotonic() + timeout
    rows: list[tuple[Any, ...]] = []
    while call_sids:
        rows = _rows(database_url, call_sids)
        if len(rows) >= len(call_sids) and all(row[3] in ("done", "failed") for row in rows):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    delays = [
        (_instant(finished) - _instant(ended)).total_seconds() * 1000
        for _, ended, finished, status in rows
        if status == "done" and finished is not None and ended is not None
    ]
    return {
        "analyses": len(rows),
        "done": sum(1 for row in rows if row[3] == "done"),
        "failed": sum(1 for row in rows if row[3] == "failed"),
        "unfinished": len(call_sids) - sum(1 for row in rows if row[3] in ("done", "failed")),
        "end_to_stored_ms": {
            "p50": _percentile(delays, 0.5),
            "p95": _percentile(delays, 0.95),
            "max": max(delays) if delays else None,
        },
    }
