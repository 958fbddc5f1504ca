"""Agent tests in the admin (issue 17): tests edited and checked as the runner reads them,
runs as a read-only log, "Make a test from this call", and each test's pass rate on the
agent's page with the button that queues a run."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from calls import agent_testing
from calls.agent_tests import SPEC_KEYS, SpecError, line_from_data, line_text, spec_from_data
from calls.models import Agent, AgentTest, AgentTestRun, Call


class AgentTestForm(forms.ModelForm[AgentTest]):
    class Meta:
        model = AgentTest
        fields = ["agent", "name", *SPEC_KEYS]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not self.errors:
            try:
                spec_from_data({key: data.get(key) for key in SPEC_KEYS if key in data})
            except SpecError as exc:
                raise forms.ValidationError(f"This test cannot run: {exc}") from exc
        return data


def outcome_table(run: AgentTestRun) -> SafeString:
    if run.error:
        return format_html('<p class="va-fail">{}</p>', f"The run failed: {run.error}")
    rows = format_html_join(
        "",
        '<tr><td class="{}">{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>',
        (
            (
                "va-pass" if o["passed"] else "va-fail",
                "✔" if o["passed"] else "✘",
                o["kind"],
                o["expectation"],
                o["message"],
            )
            for o in run.outcomes
        ),
    )
    return format_html('<table class="va-outcomes">{}</table>', rows)


def transcript_block(run: AgentTestRun) -> SafeString:
    lines = [line_from_data(data) for data in run.transcript]
    return format_html(
        '<div class="va-test-transcript">{}</div>',
        format_html_join(
            "", "<p><strong>{}</strong>: {}</p>", ((line.speaker, line_text(line)) for line in lines)
        ),
    )


@admin.register(AgentTest)
class AgentTestAdmin(admin.ModelAdmin[AgentTest]):
    form = AgentTestForm
    list_display = ["name", "agent", "listed_pass_rate", "listed_last", "updated_at"]
    list_filter = ["agent"]
    search_fields = ["name", "caller_turns"]
    actions = ["run_offline"]
    readonly_fields = ["made_from", "recent_runs"]
    fieldsets = [
        (None, {"fields": ["agent", "name", "made_from"]}),
        (
            "The caller",
            {
                "fields": ["caller_turns", "caller_goal", "caller_persona", "max_turns"],
                "description": "Scripted turns, or a goal and persona for a simulated caller "
                "(offline, it says the offline replies' caller lines).",
            },
        ),
        (
            "Expectations",
            {"fields": ["expect_tools", "forbid_tools", "must_say", "must_not_say", "ending", "rubric"]},
        ),
        ("Offline", {"fields": ["tool_results", "standin"]}),
        ("Runs", {"fields": ["recent_runs"]}),
    ]

    @admin.display(description="Made from")
    def made_from(self, test: AgentTest) -> SafeString | str:
        if test.source_call_id is None:
            return "-"
        url = reverse("admin:calls_call_change", args=[test.source_call_id])
        return format_html('<a href="{}">{}</a>', url, test.source_call)

    @admin.display(description="Pass rate")
    def listed_pass_rate(self, test: AgentTest) -> str:
        results = list(test.runs.exclude(passed__isnull=True).values_list("passed", flat=True)[:20])
        return f"{sum(1 for passed in results if passed)}/{len(results)}" if results else "never run"

    @admin.display(description="Last run")
    def listed_last(self, test: AgentTest) -> SafeString | str:
        run = test.runs.exclude(passed__isnull=True).first()
        if run is None:
            return "-"
        return format_html('<span class="{}">{}</span>', "va-pass" if run.passed else "va-fail", run)

    @admin.display(description="Recent runs")
    def recent_runs(self, test: AgentTest) -> SafeString:
        runs = list(test.runs.all()[:5])
        if not runs:
            return format_html(
                '<p class="va-empty">{}</p>',
                "Never run: use the action, the agent's page or manage.py test_agents.",
            )
        return format_html_join(
            "",
            '<div class="va-run"><p><a href="{}">{}</a> {} ({})</p>{}</div>',
            (
                (
                    reverse("admin:calls_agenttestrun_change", args=[run.pk]),
                    run.started_at.strftime("%Y-%m-%d %H:%M:%S"),
                    "passed" if run.passed else "failed",
                    run.get_mode_display(),
                    outcome_table(run),
                )
                for run in runs
            ),
        )

    @admin.action(description="Run the selected tests now (offline)")
    def run_offline(self, request: HttpRequest, queryset: QuerySet[AgentTest]) -> None:
        reports = agent_testing.run_tests(queryset.select_related("agent"))
        passed = sum(1 for report in reports if report.passed)
        level = messages.SUCCESS if passed == len(reports) else messages.WARNING
        failed = ", ".join(report.test.name for report in reports if not report.passed)
        self.message_user(
            request,
            f"{passed} of {len(reports)} tests passed." + (f" Failed: {failed}." if failed else ""),
            level,
        )


@admin.register(AgentTestRun)
class AgentTestRunAdmin(admin.ModelAdmin[AgentTestRun]):
    list_display = ["started_at", "test", "mode", "audio", "passed", "batch", "cost_usd"]
    list_filter = ["passed", "mode", "audio", "test__agent"]
    search_fields = ["test__name", "batch", "judge_reason"]
    fields = readonly_fields = (
        "test",
        "batch",
        "mode",
        "audio",
        "passed",
        "results",
        "conversation",
        "judge_reason",
        "model",
        "usage",
        "cost_usd",
        "error",
        "started_at",
        "finished_at",
    )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: AgentTestRun | None = None) -> bool:
        return False

    @admin.display(description="Expectations")
    def results(self, run: AgentTestRun) -> SafeString:
        return outcome_table(run)

    @admin.display(description="Conversation")
    def conversation(self, run: AgentTestRun) -> SafeString:
        return transcript_block(run)


def make_tests_from_calls(
    request: HttpRequest, calls: QuerySet[Call], model_admin: Any
) -> HttpResponse | None:
    """The Call list's action: one test per selected call; with one call, its new test's page."""
    made, refused = [], []
    for call in calls.select_related("agent"):
        try:
            made.append(agent_testing.make_test_from_call(call))
        except agent_testing.CannotMakeTest as exc:
            refused.append(str(exc))
    for reason in refused:
        model_admin.message_user(request, f"No test made: {reason}.", messages.WARNING)
    if len(made) == 1:
        model_admin.message_user(
            request,
            f"Test {made[0].name!r} made from the call: edit what it expects, then save.",
            messages.SUCCESS,
        )
        return HttpResponseRedirect(reverse("admin:calls_agenttest_change", args=[made[0].pk]))
    if made:
        model_admin.message_user(request, f"Made {len(made)} tests.", messages.SUCCESS)
    return None


def agent_tests_overview(agent: Agent) -> SafeString:
    """Each test's pass rate over its recent runs, and the button that runs them all."""
    if not agent.pk:
        return format_html('<p class="va-empty">{}</p>', "Save the agent first.")
    rates = agent_testing.pass_rates(agent)
    add = reverse("admin:calls_agenttest_add") + f"?agent={agent.pk}"
    if not rates:
        return format_html(
            '<p>No tests yet. <a href="{}">Add one</a>, or select a call in the call list and use '
            '"Make a test from this call".</p>',
            add,
        )
    rows = format_html_join(
        "",
        '<tr><td><a href="{}">{}</a></td><td class="{}">{}</td><td>{}</td></tr>',
        (
            (
                reverse("admin:calls_agenttest_change", args=[test.pk]),
                test.name,
                "va-pass" if total and passes == total else ("va-fail" if total else "va-empty"),
                f"{passes}/{total}" if total else "never run",
                f"{round(100 * passes / total)}%" if total else "",
            )
            for test, passes, total in rates
        ),
    )
    return format_html(
        '<table class="va-test-rates"><tr><th>Test</th><th>Passed</th><th>Rate</th></tr>{}</table>'
        '<p>Over each test\'s last {} runs. <button type="submit" name="_run_tests" class="button">'
        "Save and run the tests</button> (offline, in the task worker; reload to see the results)</p>",
        rows,
        agent_testing.PASS_RATE_RUNS,
    )
