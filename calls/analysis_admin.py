"""Admin for post-call analysis (issue 16): the plan of each agent (edited, validated,
versioned on save), the analyses as a read-only log, and the pieces the call and agent pages
show (the verdict column and filter, the analysis panel, the success rate)."""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import Q, QuerySet
from django.forms.models import BaseInlineFormSet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from calls import analysis_jobs, review
from calls.analysis import PlanError, output_schema
from calls.models import (
    Agent,
    AnalysisField,
    AnalysisPlan,
    AnalysisPlanVersion,
    AnalysisStatus,
    Call,
    CallAnalysis,
)

# --- the plan ------------------------------------------------------------------------------


class AnalysisFieldFormSet(BaseInlineFormSet[AnalysisField, AnalysisPlan, forms.ModelForm[AnalysisField]]):
    """Checks the fields together, as the model will receive them: names, types, choices."""

    def clean(self) -> None:
        super().clean()
        if any(self.errors):
            return
        rows = [
            form.cleaned_data
            for form in self.forms
            if form.cleaned_data and not form.cleaned_data.get("DELETE")
        ]
        fields = [
            {
                "name": row.get("name", ""),
                "type": row.get("type", ""),
                "description": row.get("description", ""),
                "required": bool(row.get("required")),
                "choices": [c.strip() for c in (row.get("choices") or "").split(",") if c.strip()],
            }
            for row in rows
        ]
        # The plan's own answers come in the same POST as its fields (checkbox: "on" or absent).
        plan = AnalysisPlan(
            summary=self.data.get("summary") == "on",
            summary_instruction=self.data.get("summary_instruction", ""),
            success_criteria=self.data.get("success_criteria", ""),
        )
        try:
            output_schema(analysis_jobs.plan_of(plan, fields))
        except PlanError as exc:
            raise forms.ValidationError(str(exc)) from exc


class AnalysisFieldInline(admin.TabularInline[AnalysisField, AnalysisPlan]):
    model = AnalysisField
    formset = AnalysisFieldFormSet
    extra = 1
    fields = ["position", "name", "type", "description", "required", "choices"]


@admin.register(AnalysisPlan)
class AnalysisPlanAdmin(admin.ModelAdmin[AnalysisPlan]):
    inlines = [AnalysisFieldInline]
    list_display = ["agent", "enabled", "summary", "field_count", "judges_success", "version", "updated_at"]
    list_filter = ["enabled"]
    fieldsets = [
        (None, {"fields": ["agent", "enabled", "model"]}),
        ("Summary", {"fields": ["summary", "summary_instruction"]}),
        (
            "Success",
            {
                "fields": ["success_criteria"],
                "description": "Judged after every call as pass or fail, with a one-sentence reason.",
            },
        ),
        ("Versions", {"fields": ["version", "schema_preview"]}),
    ]
    readonly_fields = ["version", "schema_preview"]

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        plan = form.instance
        before = plan.versions.count()
        version = analysis_jobs.plan_publish(plan)
        if plan.versions.count() > before:
            messages.info(request, f"Saved as version {version.number}: calls ending from now on use it.")

    @admin.display(description="Fields")
    def field_count(self, plan: AnalysisPlan) -> int:
        return plan.fields.count()

    @admin.display(description="Verdict", boolean=True)
    def judges_success(self, plan: AnalysisPlan) -> bool:
        return bool(plan.success_criteria.strip())

    @admin.display(description="Version")
    def version(self, plan: AnalysisPlan) -> str:
        latest = plan.versions.order_by("-number").first() if plan.pk else None
        return f"v{latest.number} ({latest.created_at:%Y-%m-%d %H:%M})" if latest else "not saved yet"

    @admin.display(description="JSON Schema the model answers in")
    def schema_preview(self, plan: AnalysisPlan) -> SafeString:
        if not plan.pk:
            return format_html('<p class="va-empty">{}</p>', "Shown once the plan is saved.")
        try:
            schema = output_schema(analysis_jobs.plan_of(plan))
        except PlanError as exc:
            return format_html('<p class="va-error">{}</p>', str(exc))
        return format_html("<pre>{}</pre>", json.dumps(schema, indent=2))


@admin.register(CallAnalysis)
class CallAnalysisAdmin(admin.ModelAdmin[CallAnalysis]):
    """The analyses, as a log: read-only, filterable, re-runnable."""

    list_display = ["call", "status", "success", "plan_version", "model", "listed_cost", "created_at"]
    list_filter = ["status", "success", "call__agent"]
    search_fields = ["summary", "call__call_sid"]
    list_select_related = ["call", "plan_version__plan__agent"]
    actions = ["analyse_again"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: CallAnalysis | None = None) -> bool:
        return False

    @admin.display(description="Cost", ordering="cost_usd")
    def listed_cost(self, analysis: CallAnalysis) -> str:
        return review.format_cost(analysis.cost_usd)

    @admin.action(description="Analyse these calls again with their agent's current plan")
    def analyse_again(self, request: HttpRequest, queryset: QuerySet[CallAnalysis]) -> None:
        calls = Call.objects.filter(pk__in=queryset.values("call_id"))
        analyse_again_message(request, calls, self)


def analyse_again_message(request: HttpRequest, calls: QuerySet[Call], model_admin: Any) -> None:
    created, skipped = analysis_jobs.request_again(calls, rerun=True)
    text = f"Queued {len(created)} analys{'is' if len(created) == 1 else 'es'}."
    if skipped:
        text += f" Skipped {skipped}: no enabled plan for their agent, or no conversation."
    model_admin.message_user(request, text, messages.SUCCESS if created else messages.WARNING)


# --- on the call pages ---------------------------------------------------------------------


class VerdictFilter(admin.SimpleListFilter):
    """Calls by their newest analysis's verdict (``analysis_jobs.with_verdict``)."""

    title = "success"
    parameter_name = "success"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("yes", "Successful"), ("no", "Unsuccessful"), ("none", "No verdict")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Call]) -> QuerySet[Call]:
        value = self.value()
        if value == "yes":
            return queryset.filter(Q(verdict=True))
        if value == "no":
            return queryset.filter(Q(verdict=False))
        if value == "none":
            return queryset.filter(Q(verdict__isnull=True))
        return queryset


def verdict_badge(verdict: bool | None) -> SafeString | str:
    if verdict is None:
        return ""
    if verdict:
        return format_html('<span class="va-pass">{}</span>', "✔ success")
    return format_html('<span class="va-fail">{}</span>', "✘ failed")


def analysis_panel(call: Call) -> SafeString:
    """The newest analysis of a call: summary, extracted fields as a table, the verdict, and
    what it cost; or why there is none yet."""
    newest = call.analyses.select_related("plan_version").first()
    done = newest if newest and newest.status == AnalysisStatus.DONE else analysis_jobs.latest_done(call)
    parts: list[SafeString] = []
    if newest is not None and newest is not done:
        state = newest.get_status_display().lower()
        detail = f": {newest.error}" if newest.error else ""
        parts.append(
            format_html(
                '<p class="va-meta">Latest analysis {} (attempt {}){}</p>', state, newest.attempts, detail
            )
        )
    if done is None:
        if not parts:
            parts.append(format_html('<p class="va-empty">{}</p>', _why_not_analysed(call)))
        return format_html(
            '<div class="va-analysis">{}</div>', format_html_join("", "{}", ((p,) for p in parts))
        )
    if done.success is not None:
        parts.append(
            format_html(
                '<p class="va-verdict">{} <span>{}</span></p>', verdict_badge(done.success), done.reason
            )
        )
    if done.summary:
        parts.append(format_html('<p class="va-summary">{}</p>', done.summary))
    if done.data:
        rows = format_html_join(
            "",
            "<tr><th>{}</th><td>{}</td></tr>",
            ((name, _shown(value)) for name, value in done.data.items()),
        )
        parts.append(format_html('<table class="va-fields"><tbody>{}</tbody></table>', rows))
    version = done.plan_version
    parts.append(
        format_html(
            '<p class="va-meta">Plan version {}, {}, {} tokens, {} (not part of the call\'s cost). '
            '<a href="{}">All analyses of this call</a></p>',
            version.number,
            done.model,
            f"{(done.usage or {}).get('total_tokens', 0):,}",
            review.format_cost(done.cost_usd) or "cost unknown",
            reverse("admin:calls_callanalysis_changelist") + f"?call__id__exact={call.pk}",
        )
    )
    return format_html('<div class="va-analysis">{}</div>', format_html_join("", "{}", ((p,) for p in parts)))


def _shown(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _why_not_analysed(call: Call) -> str:
    if call.ended_at is None:
        return "The call is not over: it is analysed once it ends."
    if call.agent_id is None or analysis_jobs.current_version(call.agent_id) is None:
        return "Not analysed: the call's agent has no enabled analysis plan."
    if not analysis_jobs.has_conversation(call):
        return "Not analysed: nothing was said in this call."
    return "Not analysed yet: use the action 'Analyse again' on the call list."


# --- on the agent page ---------------------------------------------------------------------


def agent_analysis_overview(agent: Agent) -> SafeString:
    """Success rate over recent calls, and where the plan is edited."""
    if not agent.pk:
        return format_html('<p class="va-empty">{}</p>', "Save the agent first.")
    plan = AnalysisPlan.objects.filter(agent=agent).first()
    if plan is None:
        add = reverse("admin:calls_analysisplan_add") + f"?agent={agent.pk}"
        return format_html(
            '<p>No analysis plan: calls of this agent are not analysed. <a href="{}">Add a plan</a></p>', add
        )
    link = format_html(
        '<a href="{}">Edit the analysis plan</a>', reverse("admin:calls_analysisplan_change", args=[plan.pk])
    )
    successes, judged = analysis_jobs.success_rate(agent.pk)
    if not judged:
        rate = format_html("<span>{}</span>", "No verdict yet.")
    else:
        rate = format_html(
            '<strong class="va-rate">{}%</strong> <span>{} of the last {} judged calls succeeded.</span> '
            '<a href="{}">See them</a>',
            round(100 * successes / judged),
            successes,
            judged,
            reverse("admin:calls_call_changelist") + f"?agent__id__exact={agent.pk}&success=yes",
        )
    state = "" if plan.enabled else " (plan disabled: new calls are not analysed)"
    return format_html("<p>{}{}</p><p>{}</p>", link, state, rate)


__all__ = [
    "AnalysisPlanVersion",
    "VerdictFilter",
    "agent_analysis_overview",
    "analyse_again_message",
    "analysis_panel",
    "verdict_badge",
]
