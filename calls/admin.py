"""Admin: agents are edited here; calls are a read-only log reviewed here."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from calls.models import Agent, Call, Role, Turn


def format_offset(ms: int | None) -> str:
    if ms is None:
        return ""
    seconds, millis = divmod(ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}:{seconds:02d}.{millis // 100}"


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ["name", "phone_or_default", "enabled", "voice", "model_or_default", "updated_at"]
    list_filter = ["enabled", "voice", "turn_detection"]
    search_fields = ["name", "phone_number", "instructions"]
    fieldsets = [
        (None, {"fields": ["name", "phone_number", "enabled"]}),
        ("Conversation", {"fields": ["instructions", "greeting", "model", "voice", "max_call_seconds"]}),
        ("Caller transcript", {"fields": ["transcription_model", "transcription_language"]}),
        (
            "Turn-taking",
            {
                "fields": [
                    "turn_detection",
                    "vad_threshold",
                    "vad_prefix_padding_ms",
                    "vad_silence_ms",
                    "vad_eagerness",
                    "noise_reduction",
                ],
                "description": "Server VAD uses threshold, padding and silence; semantic VAD uses eagerness.",
            },
        ),
    ]

    @admin.display(description="Phone number", ordering="phone_number")
    def phone_or_default(self, agent: Agent) -> str:
        return agent.phone_number or "(default agent)"

    @admin.display(description="Model", ordering="model")
    def model_or_default(self, agent: Agent) -> str:
        return agent.effective_model


class ReadOnlyAdmin(admin.ModelAdmin):
    """Call logs are evidence: nobody edits them by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Call)
class CallAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "from_number",
        "to_number",
        "agent",
        "direction",
        "duration_seconds",
        "status",
        "ended_reason",
        "turn_count",
    ]
    list_filter = ["status", "ended_reason", "direction", "agent", "created_at"]
    search_fields = ["from_number", "to_number", "call_sid", "turns__text"]
    date_hierarchy = "created_at"
    list_select_related = ["agent"]
    fieldsets = [
        ("Conversation", {"fields": ["conversation"]}),
        (
            "Call",
            {
                "fields": [
                    ("from_number", "to_number", "direction"),
                    ("agent", "model", "voice"),
                    ("status", "ended_reason"),
                    "error",
                ]
            },
        ),
        ("Timing", {"fields": [("created_at", "answered_at", "started_at", "ended_at"), "duration_seconds"]}),
        ("Twilio", {"fields": ["call_sid", "account_sid", "stream_sid"], "classes": ["collapse"]}),
    ]
    readonly_fields = ["conversation"]

    class Media:
        css = {"all": ["calls/admin.css"]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Call]:
        return super().get_queryset(request).annotate(turn_count=Count("turns"))

    @admin.display(description="Turns", ordering="turn_count")
    def turn_count(self, call: Call) -> int:
        return call.turn_count  # type: ignore[attr-defined]

    @admin.display(description="Transcript")
    def conversation(self, call: Call) -> SafeString:
        turns = list(call.turns.order_by("position"))
        if not turns:
            return format_html('<p class="va-empty">{}</p>', "No conversation recorded for this call yet.")
        return format_html(
            '<div class="va-conversation">{}</div>',
            format_html_join("", "{}", ((render_turn(turn),) for turn in turns)),
        )


def render_turn(turn: Turn) -> SafeString:
    """One bubble; the text is escaped by ``format_html`` (callers can say anything)."""
    side = "va-caller" if turn.role == Role.CALLER else "va-agent"
    note = ""
    if turn.interrupted:
        heard = f"{turn.heard_ms / 1000:.1f} s" if turn.heard_ms is not None else "unknown"
        note = format_html('<span class="va-interrupted">interrupted, caller heard {}</span>', heard)
    return format_html(
        '<div class="va-turn {}"><div class="va-meta"><strong>{}</strong> <span>{}</span> {}</div>'
        '<div class="va-text">{}</div></div>',
        side,
        turn.get_role_display(),
        format_offset(turn.started_ms),
        note,
        turn.text or "(no transcript)",
    )


@admin.register(Turn)
class TurnAdmin(ReadOnlyAdmin):
    list_display = ["call", "position", "role", "text", "started_ms", "interrupted"]
    list_filter = ["role", "interrupted"]
    search_fields = ["text", "call__call_sid"]
    list_select_related = ["call"]
