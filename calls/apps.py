from __future__ import annotations

from django.apps import AppConfig


class CallsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "calls"
    verbose_name = "Phone calls"

    def ready(self) -> None:
        from calls import checks  # noqa: F401 - registers the system checks
