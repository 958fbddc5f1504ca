from __future__ import annotations

from django.apps import AppConfig


class CallsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "calls"
    verbose_name = "Phone calls"

    def ready(self) -> None:
        from django.conf import settings

        from calls import checks  # noqa: F401 - registers the system checks

        if "calls.example_tools" in settings.VOICE_AGENT_TOOLS:
            # Connects the example's call_analysed receiver in every process, the task worker too.
            from calls import example_tools  # noqa: F401
