"""Point one of your Twilio numbers at this server, then prove Twilio can reach it."""

from __future__ import annotations

import os
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from calls import number_setup, twilio_rest


class Command(BaseCommand):
    help = (
        "Set the number's voice webhook (POST /incoming-call) and status callback (POST "
        "/call-status) to this server's public URL (PUBLIC_BASE_URL, or the running ngrok "
        "agent's https URL), then send a signed test request to it and report the answer."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("phone_number", help="Your Twilio number, E.164 (+15551234567).")
        parser.add_argument("--dry-run", action="store_true", help="Show what would change; change nothing.")
        parser.add_argument(
            "--ngrok-api-url",
            default=os.environ.get("NGROK_API_URL") or number_setup.DEFAULT_NGROK_API_URL,
            help="The ngrok agent's local API, read when PUBLIC_BASE_URL is unset "
            "(default: $NGROK_API_URL or %(default)s).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            base_url, source = number_setup.base_url_resolve(ngrok_api_url=options["ngrok_api_url"])
            self.stdout.write(f"Public URL: {base_url} (from {source})")
            plan = number_setup.number_plan(phone_number=options["phone_number"], base_url=base_url)
            for name, current, new in plan.changes:
                self.stdout.write(f"  {name}: {current or '(empty)'} -> {new or '(empty)'}")
            if not plan.changes:
                self.stdout.write(f"{plan.number.phone_number} already points at this server.")
            elif options["dry_run"]:
                self.stdout.write(f"Dry run: {plan.number.phone_number} ({plan.number.sid}) was not changed.")
            else:
                number_setup.number_connect(plan=plan)
                self.stdout.write(f"Updated {plan.number.phone_number} ({plan.number.sid}).")
        except (number_setup.SetupError, twilio_rest.TwilioNotConfigured, twilio_rest.TwilioRestError) as exc:
            raise CommandError(str(exc)) from exc

        check = number_setup.path_check(base_url=base_url, auth_token=settings.TWILIO_AUTH_TOKEN)
        for warning in check.warnings:
            self.stdout.write(self.style.WARNING(warning))
        if not check.ok:
            raise CommandError(check.message)
        self.stdout.write(self.style.SUCCESS(check.message))
        if not options["dry_run"]:
            self.stdout.write(f"Call {plan.number.phone_number}: the call appears in the admin at once.")
