"""Close calls that a stopped server process left "in progress"."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from calls import analysis_jobs, maintenance
from calls.management.arguments import age


class Command(BaseCommand):
    help = (
        "End calls left open by a server process that stopped (ended reason: Server restarted), "
        "store the recordings such calls left on this machine's disk, and queue again the "
        "post-call analyses a stopped task worker left. By default only calls "
        "older than any call can last (the longest agent limit plus 5 minutes)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        which = parser.add_mutually_exclusive_group()
        which.add_argument(
            "--all",
            action="store_true",
            help="Close every open call. Only when no other server process can be bridging one, "
            "e.g. when the only server starts.",
        )
        which.add_argument(
            "--older-than",
            type=age,
            metavar="AGE",
            help="Close open calls created more than AGE ago (30m, 2h).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        closed = maintenance.calls_close_stale(older_than=options["older_than"], everything=options["all"])
        if options["verbosity"] > 1:
            for call_sid in closed:
                self.stdout.write(f"Closed {call_sid}")
        self.stdout.write(f"Closed {len(closed)} stale call{'' if len(closed) == 1 else 's'}.")
        # Their recordings (and any a failed storage backend left) are on this machine's disk.
        recovered = maintenance.recordings_recover()
        if recovered:
            plural = "" if len(recovered) == 1 else "s"
            self.stdout.write(f"Stored {len(recovered)} recording{plural} left behind.")
        rescued = analysis_jobs.analyses_rescue()
        if rescued:
            self.stdout.write(f"Queued {len(rescued)} analys{'is' if len(rescued) == 1 else 'es'} again.")
