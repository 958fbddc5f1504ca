"""Analyse past calls again, after an analysis plan changed (or calls ended before it existed)."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from calls import analysis_jobs
from calls.management.arguments import age
from calls.models import Agent, AnalysisStatus, Call


def _plural(number: int, one: str, many: str) -> str:
    return f"{number} {one if number == 1 else many}"


class Command(BaseCommand):
    help = (
        "Analyse ended calls with their agent's current analysis plan, here and now (or --queue: "
        "hand them to the task workers). Calls already analysed with that plan version are "
        "skipped unless --rerun; every analysis is a new row, earlier ones are kept."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--agent", help="Only this agent's calls (its name).")
        parser.add_argument(
            "--since", type=age, metavar="AGE", help="Only calls created in the last AGE (7d, 12h)."
        )
        parser.add_argument("--rerun", action="store_true", help="Analyse again calls already analysed.")
        parser.add_argument("--dry-run", action="store_true", help="Only count what would be analysed.")
        parser.add_argument("--queue", action="store_true", help="Queue the analyses for the task workers.")

    def handle(self, *args: Any, **options: Any) -> None:
        calls = Call.objects.filter(ended_at__isnull=False)
        if options["agent"]:
            agent = Agent.objects.filter(name=options["agent"]).first()
            if agent is None:
                raise CommandError(f"No agent is named {options['agent']!r}.")
            calls = calls.filter(agent=agent)
        since: timedelta | None = options["since"]
        if since is not None:
            started: datetime = timezone.now() - since
            calls = calls.filter(created_at__gte=started)
        if options["dry_run"]:
            self._dry_run(calls, rerun=options["rerun"])
            return
        created, skipped = analysis_jobs.request_again(calls, rerun=options["rerun"], queue=options["queue"])
        if options["queue"]:
            self.stdout.write(
                f"Queued {_plural(len(created), 'analysis', 'analyses')}; skipped {skipped} calls."
            )
            return
        outcomes = {"done": 0, "failed": 0, "skipped": 0}
        for number, analysis in enumerate(created, start=1):
            outcome = analysis_jobs.run(analysis.pk).outcome
            outcomes[outcome] += 1
            self._progress(number, len(created), analysis.call.call_sid, outcome)
        if created:
            self._progress_end()
        summary = (
            f"Analysed {_plural(len(created), 'call', 'calls')}: {outcomes['done']} done, "
            f"{outcomes['failed']} failed; skipped {skipped} (already analysed, no plan or nothing said)."
        )
        style = self.style.SUCCESS if not outcomes["failed"] else self.style.WARNING
        self.stdout.write(style(summary))
        if outcomes["failed"]:
            self.stdout.write("The errors are on each analysis (admin: Call analyses, status Failed).")

    def _dry_run(self, calls: Any, *, rerun: bool) -> None:
        would, skipped = 0, 0
        for call in calls.select_related("agent"):
            version = analysis_jobs.current_version(call.agent_id) if call.agent_id else None
            analysed = (
                version is not None
                and call.analyses.filter(plan_version=version).exclude(status=AnalysisStatus.FAILED).exists()
            )
            if version is None or not analysis_jobs.has_conversation(call) or (analysed and not rerun):
                skipped += 1
            else:
                would += 1
        self.stdout.write(f"Would analyse {_plural(would, 'call', 'calls')}; would skip {skipped}.")

    def _progress(self, done: int, total: int, call_sid: str, outcome: str) -> None:
        if sys.stdout.isatty() and self.stdout._out is sys.stdout:  # a bar that redraws itself
            width = 30
            filled = width * done // total
            bar = "#" * filled + "." * (width - filled)
            self.stdout.write(f"\r[{bar}] {done}/{total}", ending="")
            self.stdout.flush()
        else:  # a log: one line per call
            self.stdout.write(f"[{done}/{total}] {call_sid}: {outcome}")

    def _progress_end(self) -> None:
        if sys.stdout.isatty() and self.stdout._out is sys.stdout:
            self.stdout.write("")
