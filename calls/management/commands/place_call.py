"""Place an outbound call answered by one of your agents."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from calls import services, twilio_rest
from calls.models import Agent


class Command(BaseCommand):
    help = "Call a phone number through Twilio; the agent talks when the callee picks up."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--to", required=True, help="Number to call, E.164 (+15551234567).")
        parser.add_argument("--agent", required=True, help="Name of the agent (its number is the caller ID).")

    def handle(self, *args: Any, **options: Any) -> None:
        agent = Agent.objects.filter(name=options["agent"], enabled=True).first()
        if agent is None:
            names = ", ".join(Agent.objects.filter(enabled=True).values_list("name", flat=True))
            raise CommandError(
                f"No enabled agent named {options['agent']!r}. Enabled agents: {names or 'none'}."
            )
        try:
            call = services.call_place(to=options["to"], agent=agent)
        except (ValueError, twilio_rest.TwilioNotConfigured, twilio_rest.TwilioRestError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            self.style.SUCCESS(f"Placed call {call.call_sid} to {call.to_number} ({agent.name}).")
        )
