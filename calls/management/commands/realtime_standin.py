"""Run a local stand-in for the OpenAI Realtime API (no key, no network)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from calls.fakes import standin


class Command(BaseCommand):
    help = (
        "Serve a scripted stand-in for the OpenAI Realtime API on this machine. Point the server "
        "at it with OPENAI_REALTIME_URL to try calls offline. See calls/fakes/standin.py for the "
        "script format."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Interface to listen on (default 127.0.0.1).")
        parser.add_argument(
            "--port", type=int, default=standin.DEFAULT_PORT, help="Port (default %(default)s)."
        )
        parser.add_argument(
            "--api-key",
            help="Key the server must present. Default: OPENAI_API_KEY, or "
            f"{standin.LOCAL_API_KEY!r} when that is not set.",
        )
        parser.add_argument(
            "--script", metavar="FILE.json", help="What the agent says (default: a built-in script)."
        )
        parser.add_argument(
            "--speech",
            choices=standin.SPEECH_CHOICES,
            default="auto",
            help="Replies as espeak-ng speech, or tones; auto: speech when espeak-ng is installed.",
        )
        parser.add_argument(
            "--print-script",
            action="store_true",
            help="Print the built-in script (a starting point) and exit.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["print_script"]:
            self.stdout.write(json.dumps(standin.BUILTIN_SCRIPT, indent=2))
            return
        try:
            script = standin.load_script(options["script"], speech=options["speech"])
            speaking = standin.use_espeak(options["speech"])
        except standin.ScriptError as exc:
            raise CommandError(str(exc)) from exc
        if options["api_key"]:
            api_key, accepts, env = (
                options["api_key"],
                "the key given with --api-key",
                "OPENAI_API_KEY=<that key> ",
            )
        elif settings.OPENAI_API_KEY:
            api_key, accepts, env = settings.OPENAI_API_KEY, "the key in OPENAI_API_KEY", ""
        else:
            api_key = standin.LOCAL_API_KEY
            accepts = env = f"OPENAI_API_KEY={api_key} "
        source = options["script"] or "built-in script"

        def ready(url: str) -> None:
            # The key itself is never printed unless it is the well-known local one.
            self.stdout.write(
                f"OpenAI Realtime stand-in listening ({source}, {len(script.replies)} replies, "
                f"{'espeak-ng speech' if speaking else 'tones'}); it accepts {accepts.strip()}.\n"
                f"OPENAI_REALTIME_URL={url}\n"
                "Run the server against it, in another terminal:\n"
                f"  OPENAI_REALTIME_URL={url} {env}make run\n"
                "Stop with Ctrl-C."
            )
            self.stdout.flush()

        try:
            asyncio.run(
                standin.serve(
                    script,
                    host=options["host"],
                    port=options["port"],
                    api_key=api_key,
                    ready=ready,
                )
            )
        except OSError as exc:
            raise CommandError(
                f"Cannot listen on {options['host']}:{options['port']} ({exc.strerror or exc}); "
                "choose another port with --port."
            ) from exc
        except KeyboardInterrupt:
            self.stdout.write("Stand-in stopped.")
