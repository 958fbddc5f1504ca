"""Place a simulated phone call against a running server, exactly as Twilio would."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from calls import simulation
from calls.fakes import wav


class Command(BaseCommand):
    help = (
        "Call a running server like Twilio does (signed webhook, TwiML, signed Media Stream) and "
        "print what the caller hears. Signs with TWILIO_AUTH_TOKEN."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--server", default="http://127.0.0.1:8000", help="Where the server listens (%(default)s)."
        )
        parser.add_argument(
            "--public-base-url",
            help="The server's PUBLIC_BASE_URL, which signatures cover (default: this project's setting).",
        )
        parser.add_argument("--from", dest="from_number", default="+15550001111", help="Caller's number.")
        parser.add_argument("--to", dest="to_number", default="+15552223333", help="Number called.")
        parser.add_argument(
            "--say", metavar="FILE.wav", help="What the caller says after the greeting (any WAV)."
        )
        parser.add_argument(
            "--silence",
            type=float,
            default=3.0,
            metavar="SECONDS",
            help="Without --say: how long the caller stays silent instead (default %(default)s).",
        )
        parser.add_argument("--record", metavar="OUT.wav", help="Write what the caller heard to a WAV file.")
        parser.add_argument(
            "--duration",
            type=float,
            default=30.0,
            metavar="SECONDS",
            help="Hang up after this long at most (default %(default)s).",
        )
        parser.add_argument(
            "--hang-up-after-agent",
            action="store_true",
            help="Hang up once the agent's answer has finished playing.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        say = None
        if options["say"]:
            try:
                say = wav.wav_to_mulaw(options["say"])
            except (OSError, wav.WavError) as exc:
                raise CommandError(f"Cannot use {options['say']}: {exc}") from exc
        if options["duration"] <= 0 or options["silence"] < 0:
            raise CommandError("--duration must be positive and --silence not negative.")
        public_base_url = options["public_base_url"] or settings.PUBLIC_BASE_URL
        run = simulation.SimulationOptions(
            server=options["server"],
            public_base_url=public_base_url,
            auth_token=settings.TWILIO_AUTH_TOKEN,
            from_number=options["from_number"],
            to_number=options["to_number"],
            say=say,
            say_label=Path(options["say"]).name if options["say"] else "",
            silence=options["silence"],
            duration=options["duration"],
            hang_up_after_agent=options["hang_up_after_agent"],
            record=Path(options["record"]) if options["record"] else None,
            verbosity=options["verbosity"],
        )
        try:
            result = asyncio.run(simulation.simulate(run, self.stdout.write))
        except simulation.SimulationError as exc:
            raise CommandError(str(exc)) from exc
        for line in simulation.call_report(result.call_sid, public_base_url):
            self.stdout.write(line)
