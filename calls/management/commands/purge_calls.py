"""Delete old calls: the retention half of a privacy policy."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from calls import maintenance
from calls.management.arguments import age


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


class Command(BaseCommand):
    help = (
        "Delete calls created more than --older-than ago, with their transcripts, tool calls and "
        "recording files. Calls in progress are kept."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--older-than", type=age, required=True, metavar="AGE", help="30d, 12h, 15m or 90s."
        )
        parser.add_argument("--dry-run", action="store_true", help="Only count what would be deleted.")

    def handle(self, *args: Any, **options: Any) -> None:
        result = maintenance.calls_purge(older_than=options["older_than"], dry_run=options["dry_run"])
        summary = ", ".join(
            [
                _count(result.calls, "call"),
                _count(result.turns, "turn"),
                _count(result.tool_calls, "tool call"),
                _count(result.files, "file"),
            ]
        )
        verb = "Would delete" if options["dry_run"] else "Deleted"
        self.stdout.write(f"{verb} {summary}.")
