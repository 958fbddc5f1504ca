"""The offline demo: one complete simulated call through the real server, no keys, no network."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from calls import simulation
from calls.fakes import standin


class Command(BaseCommand):
    help = (
        "Migrate, start the OpenAI stand-in and the server, place one simulated call, stop them. "
        "The phone network and the model are simulated; the server, bridge and database are real."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--speech",
            choices=standin.SPEECH_CHOICES,
            default="auto",
            help="Voices as espeak-ng speech, or tones; auto: speech when espeak-ng is installed.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            demo = simulation.run_demo(
                self.stdout.write, speech=options["speech"], verbosity=options["verbosity"]
            )
        except (simulation.SimulationError, standin.ScriptError) as exc:
            raise CommandError(str(exc)) from exc
        for line in demo.report:
            self.stdout.write(line)
        self.stdout.write(
            self.style.SUCCESS(f"Demo call finished in {demo.seconds:.1f} s; it is stored in the database.")
        )
        self.stdout.write(
            "See it in the admin: run `make run`, create a login once with "
            "`.venv/bin/python manage.py createsuperuser`, then open the Admin link above."
        )
