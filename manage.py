#!/usr/bin/env python
"""Django's command-line utility for administrative tasks."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "voiceagent.settings")
    from django.core.management import execute_from_command_line

    from voiceagent.env import exit_on_configuration_error

    # A malformed variable prints one line naming it, not a traceback through Django's start-up.
    exit_on_configuration_error()
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
