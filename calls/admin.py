"""Admin: agents are edited here; calls are a read-only log reviewed here."""

from __future__ import annotations

import json
from typing import Any, TypedDict, TypeVar

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import quote, unquote
from django.db.models import Count, Model, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, StreamingHttpResponse
from django.template.response import SimpleTemplateResponse, TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django_stubs_ext import WithAnnotations

from calls import (
    agent_test_admin,
    agent_testing,
    analysis_admin,
    analysis_jobs,
    model_endpoint,
    review,
    services,
    tools,
    twilio_rest,
)
from calls.models import Agent, Call, Role, ToolCall, Turn, TurnKind
from calls.review import format_offset

STANDIN_LABEL = "Local stand-in, not the real model"

_M = TypeVar("_M", bound=Model)


class AgentForm(forms.ModelForm[Agent]):
    tools = forms.MultipleChoiceField(
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Functions the agent may call. Register your own with @tool (see the README).",
    )

    class Meta:
        model = Agent
        fields = "__all__"  # every agent setting is editable here

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        tools_field = self.fields["tools"]
        assert isinstance(tools_field, forms.MultipleChoiceField)
        tools_field.choices = [
            (name, f"{name}: {found.description[:90]}") for name, found in sorted(tools.registered().items())
        ]


class PlaceCallForm(forms.Form):
    to = forms.RegexField(
        regex=r"^\+[1-9]\d{6,14}$", label="Number to call", help_text="E.164, for example +15551234567"
    )


def mask_phone(number: str) -> str:
    """``+15550001111`` as ``+1555•••1111``: enough to tell calls apart, not to call back.
    The hidden part is always three dots, so the length is not shown either."""
    if len(number) <= 8:
        return f"•••{number[-2:]}" if number else ""
    return f"{number[:5]}•••{number[-4:]}"


def listed_number(number: str) -> str:
    """A number as the admin's lists show it: masked with MASK_PHONE_NUMBERS."""
    return mask_phone(number) if settings.MASK_PHONE_NUMBERS else number


def call_label(call: Call) -> str:
    """``str(call)``, with the numbers as the lists show them."""
    return f"{call.call_sid} {listed_number(call.from_number)} → {listed_number(call.to_number)}"


@admin.display(description="Call", ordering="call")
def call_of(row: Turn | ToolCall) -> str:
    return call_label(row.call)


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin[Agent]):
    form = AgentForm
    actions = ["place_call"]
    list_display = ["name", "phone_or_default", "enabled", "voice", "model_or_default", "updated_at"]
    list_filter = ["enabled", "voice", "turn_detection"]
    search_fields = ["name", "phone_number", "instructions"]
    fieldsets = [
        (None, {"fields": ["name", "phone_number", "enabled"]}),
        ("Conversation", {"fields": ["instructions", "greeting", "model", "voice"]}),
        ("Tools", {"fields": ["tools", "transfer_numbers"]}),
        ("Limits", {"fields": ["max_call_seconds", "idle_timeout_seconds", "max_silence_prompts"]}),
        ("Post-call analysis", {"fields": ["analysis_overview"]}),
        ("Tests", {"fields": ["tests_overview"]}),
        ("Outbound calls", {"fields": ["machine_policy", "voicemail_message"]}),
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

    @admin.action(description="Place an outbound call with the selected agent")
    def place_call(self, request: HttpRequest, queryset: QuerySet[Agent]) -> HttpResponse | None:
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one agent to place a call.", messages.WARNING)
            return None
        agent = queryset.get()
        form = PlaceCallForm(request.POST if "to" in request.POST else None)
        if form.is_valid():
            try:
                call = services.call_place(to=form.cleaned_data["to"], agent=agent)
            except (ValueError, twilio_rest.TwilioNotConfigured, twilio_rest.TwilioRestError) as exc:
                self.message_user(request, f"Could not place the call: {exc}", messages.ERROR)
                return None
            self.message_user(request, f"Calling {call.to_number} (call {call.call_sid}).", messages.SUCCESS)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": f"Place a call with {agent.name}",
            "agent": agent,
            "form": form,
            "opts": self.model._meta,
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/calls/agent/place_call.html", context)

    readonly_fields = ["analysis_overview", "tests_overview"]

    @admin.display(description="Success rate")
    def analysis_overview(self, agent: Agent) -> SafeString:
        return analysis_admin.agent_analysis_overview(agent)

    @admin.display(description="Pass rates")
    def tests_overview(self, agent: Agent) -> SafeString:
        return agent_test_admin.agent_tests_overview(agent)

    def response_change(self, request: HttpRequest, obj: Agent) -> HttpResponse:
        """ "Save and run the tests": the agent is saved, its tests queued for the task worker."""
        if "_run_tests" in request.POST:
            batch = agent_testing.queue_agent_tests(obj)
            self.message_user(
                request,
                f"Saved; the tests of {obj.name} are queued (batch {batch}). Reload to see the results.",
                messages.SUCCESS,
            )
            return HttpResponseRedirect(request.path)
        return super().response_change(request, obj)

    @admin.display(description="Phone number", ordering="phone_number")
    def phone_or_default(self, agent: Agent) -> str:
        return agent.phone_number or "(default agent)"

    @admin.display(description="Model", ordering="model")
    def model_or_default(self, agent: Agent) -> str:
        return agent.effective_model


class ReadOnlyAdmin(admin.ModelAdmin[_M]):
    """Call logs are evidence: nobody edits them by hand."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: _M | None = None) -> bool:
        return False


class _TurnCount(TypedDict):
    turn_count: int  # CallAdmin.get_queryset's annotation


@admin.register(Call)
class CallAdmin(ReadOnlyAdmin[Call]):
    list_display = [
        "created_at",
        "listed_from",
        "listed_to",
        "agent",
        "listed_duration",
        "status",
        "ended_reason",
        "turn_count",
        "listed_cost",
        "listed_p50",
        "listed_verdict",
        "has_error",
    ]
    actions = ["export_csv", "analyse_again", "make_test"]
    list_filter = [analysis_admin.VerdictFilter, "status", "ended_reason", "direction", "agent", "created_at"]
    search_fields = ["from_number", "to_number", "call_sid", "turns__text", "analyses__summary"]
    date_hierarchy = "created_at"
    list_select_related = ["agent"]
    fieldsets = [
        ("Analysis", {"fields": ["analysis"]}),
        ("Recording", {"fields": ["recording_player"]}),
        ("Conversation", {"fields": ["conversation"]}),
        (
            "Call",
            {
                "fields": [
                    ("from_number", "to_number", "direction"),
                    ("agent", "model_shown", "voice"),
                    ("status", "ended_reason"),
                    ("answered_by", "transferred_to"),
                    "error",
                ]
            },
        ),
        (
            "Latency",
            {
                "fields": [
                    ("first_audio_ms", "latency_p50_ms", "latency_p95_ms"),
                    ("interruptions", "reconnects"),
                    "latency_chart",
                ],
                "description": "Response latency: the caller's end of speech to the first agent "
                "audio sent to Twilio. Time to first audio: stream start to the greeting's first audio.",
            },
        ),
        (
            "Usage and cost",
            {
                "fields": ["usage_table"],
                "description": "Tokens summed over every response of the call; the cost is estimated "
                "from the price table in calls/pricing.py.",
            },
        ),
        ("Timing", {"fields": [("created_at", "answered_at", "started_at", "ended_at"), "duration_seconds"]}),
        ("Twilio", {"fields": ["call_sid", "account_sid", "stream_sid"], "classes": ["collapse"]}),
    ]
    readonly_fields = [
        "analysis",
        "conversation",
        "recording_player",
        "model_shown",
        "latency_chart",
        "usage_table",
        "reconnects",
    ]

    class Media:
        css = {"all": ["calls/admin.css"]}

    def get_queryset(self, request: HttpRequest) -> QuerySet[Call]:
        calls = super().get_queryset(request).annotate(turn_count=Count("turns", distinct=True))
        return analysis_jobs.with_verdict(calls)

    def get_urls(self) -> list[URLPattern]:
        recording = path(
            "<path:object_id>/recording.wav",
            self.admin_site.admin_view(self.recording_view),
            name="calls_call_recording",
        )
        return [recording, *super().get_urls()]

    def recording_view(self, request: HttpRequest, object_id: str) -> HttpResponse | StreamingHttpResponse:
        """The recording, to staff only: media files are never served publicly."""
        call = self.get_object(request, unquote(object_id))
        if call is None or not self.has_view_permission(request, call) or not call.recording.name:
            raise Http404("No recording for this call.")
        storage, name = call.recording.storage, call.recording.name
        try:
            size = storage.size(name)
            handle = storage.open(name, "rb")
        except (FileNotFoundError, OSError) as exc:
            raise Http404("The recording file is missing.") from exc
        return review.file_response(
            request, handle, size, content_type="audio/wav", filename=f"{call.call_sid}.wav"
        )

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        response = super().changelist_view(request, extra_context)
        # A redirect (after an action) has no context.
        if not isinstance(response, SimpleTemplateResponse) or not response.context_data:
            return response
        changelist = response.context_data.get("cl")
        if changelist is not None:
            totals = review.call_totals(changelist.queryset)
            response.context_data["totals"] = {
                "calls": totals["calls"],
                "duration": review.format_duration(totals["seconds"]),
                "cost": review.format_cost(totals["cost"]),
                "tokens": totals["input_tokens"] or totals["output_tokens"],
                "input_tokens": f"{totals['input_tokens'] or 0:,}",
                "output_tokens": f"{totals['output_tokens'] or 0:,}",
            }
        return response

    @admin.action(description="Export the selected calls as CSV")
    def export_csv(self, request: HttpRequest, queryset: QuerySet[Call]) -> HttpResponse:
        filename = f"calls-{timezone.now():%Y%m%d-%H%M%S}.csv"
        return review.calls_csv(queryset.select_related("agent"), listed_number, filename)

    @admin.action(description="Analyse the selected calls again with their agent's current plan")
    def analyse_again(self, request: HttpRequest, queryset: QuerySet[Call]) -> None:
        analysis_admin.analyse_again_message(request, queryset, self)

    @admin.action(description="Make a test from this call")
    def make_test(self, request: HttpRequest, queryset: QuerySet[Call]) -> HttpResponse | None:
        return agent_test_admin.make_tests_from_calls(request, queryset, self)

    @admin.display(description="Success", ordering="verdict")
    def listed_verdict(self, call: Call) -> SafeString | str:
        return analysis_admin.verdict_badge(getattr(call, "verdict", None))

    @admin.display(description="Summary, extracted data and verdict")
    def analysis(self, call: Call) -> SafeString:
        return analysis_admin.analysis_panel(call)

    # Lists (and search results) may mask numbers; the call's own page shows them in full.
    def action_checkbox(self, obj: Call) -> SafeString:
        # Django labels each row's checkbox with str(call), which holds both numbers.
        label = f"Select this object for an action - {call_label(obj)}"
        attrs = {"class": "action-select", "aria-label": label}  # escaped by the widget template
        return forms.CheckboxInput(attrs, lambda value: False).render(
            helpers.ACTION_CHECKBOX_NAME, str(obj.pk)
        )

    @admin.display(description="From", ordering="from_number")
    def listed_from(self, call: Call) -> str:
        return listed_number(call.from_number)

    @admin.display(description="To", ordering="to_number")
    def listed_to(self, call: Call) -> str:
        return listed_number(call.to_number)

    @admin.display(description="Turns", ordering="turn_count")
    def turn_count(self, call: WithAnnotations[Call, _TurnCount]) -> int:
        return call.turn_count

    @admin.display(description="Duration", ordering="duration_seconds")
    def listed_duration(self, call: Call) -> str:
        return review.format_duration(call.duration_seconds)

    @admin.display(description="Cost", ordering="cost_usd")
    def listed_cost(self, call: Call) -> str:
        return review.format_cost(call.cost_usd)

    @admin.display(description="p50", ordering="latency_p50_ms")
    def listed_p50(self, call: Call) -> str:
        return f"{call.latency_p50_ms} ms" if call.latency_p50_ms is not None else ""

    @admin.display(description="OpenAI reconnects")
    def reconnects(self, call: Call) -> int:
        return call.openai_reconnects

    @admin.display(description="Error")
    def has_error(self, call: Call) -> str:
        if not call.error:
            return ""
        return format_html('<span class="va-error" title="{}">⚠ error</span>', call.error[:300])

    @admin.display(description="Recording")
    def recording_player(self, call: Call) -> SafeString:
        if not call.recording:
            return format_html(
                '<p class="va-empty">{}</p>',
                "No recording for this call (recording is off for its agent, or the call is still going).",
            )
        url = reverse("admin:calls_call_recording", args=[quote(call.pk)])
        return format_html(
            '<div class="va-recording"><audio controls preload="metadata" src="{}"></audio>'
            '<span class="va-meta">Caller on the left channel, agent on the right. '
            '<a href="{}" download>Download WAV</a></span></div>',
            url,
            url,
        )

    @admin.display(description="Model")
    def model_shown(self, call: Call) -> str | SafeString:
        if call.model == model_endpoint.STANDIN_MODEL:
            return format_html('<span class="va-standin-label">{}</span>', STANDIN_LABEL)
        return call.model

    @admin.display(description="Per agent turn")
    def latency_chart(self, call: Call) -> SafeString:
        chart = review.latency_chart(call.turns.all(), p50_ms=call.latency_p50_ms)
        if call.model != model_endpoint.STANDIN_MODEL:
            return chart
        return format_html('<p class="va-standin-hint">{}</p>{}', review.STANDIN_LATENCY_HINT, chart)

    @admin.display(description="Tokens")
    def usage_table(self, call: Call) -> SafeString:
        return review.usage_table(call.usage or {}, call.cost_usd)

    @admin.display(description="Transcript")
    def conversation(self, call: Call) -> SafeString:
        entries: list[tuple[int, SafeString]] = [(t.position, render_turn(t)) for t in call.turns.all()]
        entries += [(c.position, render_tool_call(c)) for c in call.tool_calls.all()]
        if not entries:
            return format_html('<p class="va-empty">{}</p>', "No conversation recorded for this call yet.")
        entries.sort(key=lambda entry: entry[0])
        return format_html(
            '<div class="va-conversation">{}</div>',
            format_html_join("", "{}", ((html,) for _, html in entries)),
        )


def render_tool_call(tool_call: ToolCall) -> SafeString:
    """A tool call between the turns: what the model asked for and what it got back."""
    outcome = (
        format_html('<span class="va-error">error: {}</span>', tool_call.error)
        if tool_call.error
        else format_html("→ <code>{}</code>", json.dumps(tool_call.result, ensure_ascii=False)[:500])
    )
    took = f"{tool_call.duration_ms} ms" if tool_call.duration_ms is not None else ""
    return format_html(
        '<div class="va-tool"><strong>{}</strong>(<code>{}</code>) {} <span class="va-meta">{}</span></div>',
        tool_call.name,
        json.dumps(tool_call.arguments, ensure_ascii=False)[:500],
        outcome,
        took,
    )


def render_turn(turn: Turn) -> SafeString:
    """One bubble; the text is escaped by ``format_html`` (callers can say anything)."""
    side = "va-caller" if turn.role == Role.CALLER else "va-agent"
    if turn.kind == TurnKind.DTMF:
        side += " va-dtmf"
    note = ""
    if turn.interrupted:
        heard = f"{turn.heard_ms / 1000:.1f} s" if turn.heard_ms is not None else "unknown"
        note = format_html('<span class="va-interrupted">interrupted, caller heard {}</span>', heard)
    latency = ""
    if turn.latency_ms is not None:
        latency = format_html(
            '<span class="va-latency {}" title="{}">{} ms</span>',
            review.latency_class(turn.latency_ms),
            "Response latency: the caller's end of speech to this turn's first audio",
            turn.latency_ms,
        )
    return format_html(
        '<div class="va-turn {}"><div class="va-meta"><strong>{}</strong> <span>{}</span> {} {}</div>'
        '<div class="va-text">{}</div></div>',
        side,
        turn.get_role_display(),
        format_offset(turn.started_ms),
        latency,
        note,
        turn.text or "(no transcript)",
    )


@admin.register(ToolCall)
class ToolCallAdmin(ReadOnlyAdmin[ToolCall]):
    list_display = [call_of, "name", "created_at", "duration_ms", "error"]
    list_filter = ["name"]
    search_fields = ["call__call_sid", "name"]
    list_select_related = ["call"]


@admin.register(Turn)
class TurnAdmin(ReadOnlyAdmin[Turn]):
    list_display = [call_of, "position", "role", "text", "started_ms", "interrupted"]
    list_filter = ["role", "interrupted"]
    search_fields = ["text", "call__call_sid"]
    list_select_related = ["call"]
