"""Post-call analysis in the admin: a plan edited and validated (a bad field is refused with a
message), versioned on save; the call list's success column, filter and summary search; the
call page's summary, fields and verdict; CSV columns per extracted field; the agent page's
success rate; the "analyse again" action."""

from __future__ import annotations

import csv
import io
from decimal import Decimal
from typing import Any

import pytest
from django.urls import reverse
from django.utils import timezone

from calls import analysis_jobs
from calls.models import (
    Agent,
    AnalysisField,
    AnalysisPlan,
    AnalysisPlanVersion,
    AnalysisStatus,
    Call,
    CallAnalysis,
    Role,
    Turn,
)

pytestmark = pytest.mark.django_db

PLAN_ADD = "admin:calls_analysisplan_add"


def plan_post(agent: Agent, fields: list[dict[str, Any]], **plan: Any) -> dict[str, str]:
    """The add form's POST: the plan, then its field rows (an inline formset)."""
    data = {
        "agent": str(agent.pk),
        "enabled": "on",
        "model": "",
        "summary_instruction": plan.get("summary_instruction", ""),
        "success_criteria": plan.get("success_criteria", "The caller booked a table."),
        "fields-TOTAL_FORMS": str(len(fields)),
        "fields-INITIAL_FORMS": "0",
        "fields-MIN_NUM_FORMS": "0",
        "fields-MAX_NUM_FORMS": "1000",
    }
    if plan.get("summary", True):
        data["summary"] = "on"
    for index, field in enumerate(fields):
        for key, value in field.items():
            if key == "required":
                if value:
                    data[f"fields-{index}-required"] = "on"
            else:
                data[f"fields-{index}-{key}"] = str(value)
        data.setdefault(f"fields-{index}-position", str(index))
    return data


@pytest.fixture
def agent() -> Agent:
    return Agent.objects.create(name="Bookings", phone_number="+15550009999", instructions="Book tables.")


def test_a_plan_is_saved_as_version_one(staff_client, agent):
    fields = [
        {"name": "party_size", "type": "number", "description": "Guests", "required": True},
        {"name": "seating", "type": "choice", "choices": "inside, terrace"},
    ]
    response = staff_client.post(reverse(PLAN_ADD), plan_post(agent, fields), follow=True)
    assert response.status_code == 200
    assert "Saved as version 1" in response.content.decode()
    plan = AnalysisPlan.objects.get(agent=agent)
    version = plan.versions.get()
    assert [f["name"] for f in version.definition["fields"]] == ["party_size", "seating"]
    assert version.definition["fields"][1]["choices"] == ["inside", "terrace"]


@pytest.mark.parametrize(
    ("field", "message"),
    [
        ({"name": "Party Size", "type": "number"}, "the name &#x27;Party Size&#x27; is not valid"),
        ({"name": "seating", "type": "choice", "choices": ""}, "a choice field needs a list of choices"),
        ({"name": "size", "type": "text", "choices": "a, b"}, "only a choice field has choices"),
    ],
)
def test_a_bad_field_is_refused_with_a_message(staff_client, agent, field, message):
    response = staff_client.post(reverse(PLAN_ADD), plan_post(agent, [field]))
    assert response.status_code == 200  # the form again, not a redirect
    assert message in response.content.decode()
    assert not AnalysisPlan.objects.filter(agent=agent).exists()
    assert not AnalysisPlanVersion.objects.filter(plan__agent=agent).exists()


def test_an_unknown_type_is_refused(staff_client, agent):
    response = staff_client.post(reverse(PLAN_ADD), plan_post(agent, [{"name": "size", "type": "money"}]))
    assert "Select a valid choice" in response.content.decode()
    assert not AnalysisPlan.objects.filter(agent=agent).exists()


def test_the_same_name_twice_is_refused(staff_client, agent):
    fields = [{"name": "size", "type": "text"}, {"name": "size", "type": "number"}]
    response = staff_client.post(reverse(PLAN_ADD), plan_post(agent, fields))
    assert "Please correct the duplicate data for name" in response.content.decode()
    assert not AnalysisPlan.objects.filter(agent=agent).exists()


def test_a_plan_that_asks_nothing_is_refused(staff_client, agent):
    response = staff_client.post(reverse(PLAN_ADD), plan_post(agent, [], summary=False, success_criteria=""))
    assert "The plan asks for nothing" in response.content.decode()
    assert not AnalysisPlan.objects.filter(agent=agent).exists()


def test_editing_a_plan_makes_a_new_version(staff_client, agent):
    staff_client.post(reverse(PLAN_ADD), plan_post(agent, [{"name": "party_size", "type": "number"}]))
    plan = AnalysisPlan.objects.get(agent=agent)
    field = plan.fields.get()
    change = reverse("admin:calls_analysisplan_change", args=[plan.pk])
    data = plan_post(agent, [], success_criteria="A table was booked for tonight.")
    data.update(
        {
            "fields-TOTAL_FORMS": "1",
            "fields-INITIAL_FORMS": "1",
            "fields-0-id": str(field.pk),
            "fields-0-plan": str(plan.pk),
            "fields-0-position": "0",
            "fields-0-name": "party_size",
            "fields-0-type": "number",
        }
    )
    response = staff_client.post(change, data, follow=True)
    assert "Saved as version 2" in response.content.decode()
    assert [v.number for v in plan.versions.order_by("number")] == [1, 2]
    # Saved again without a change: no new version.
    staff_client.post(change, data)
    assert plan.versions.count() == 2
    page = staff_client.get(change).content.decode()
    assert "v2 (" in page and "&quot;party_size&quot;" in page  # the schema preview


# --- calls ---------------------------------------------------------------------------------


def analysed_call(agent: Agent, n: int, *, success: bool | None, summary: str, data: dict[str, Any]) -> Call:
    plan = AnalysisPlan.objects.get_or_create(agent=agent, defaults={"success_criteria": "Booked."})[0]
    AnalysisField.objects.get_or_create(plan=plan, name="party_size", defaults={"type": "number"})
    version = analysis_jobs.plan_publish(plan)
    call = Call.objects.create(call_sid=f"CA{n:032d}", agent=agent, ended_at=timezone.now())
    Turn.objects.create(call=call, position=0, role=Role.CALLER, text="hello")
    CallAnalysis.objects.create(
        call=call,
        plan_version=version,
        status=AnalysisStatus.DONE,
        summary=summary,
        data=data,
        success=success,
        reason="Because." if success is not None else "",
        model="gpt-5-mini",
        usage={"total_tokens": 1234},
        cost_usd=Decimal("0.000512"),
    )
    return call


@pytest.fixture
def calls(agent) -> list[Call]:
    return [
        analysed_call(
            agent, 1, success=True, summary="Booked a table for 4 on the terrace.", data={"party_size": 4}
        ),
        analysed_call(
            agent, 2, success=False, summary="Wanted a table; none was free.", data={"party_size": 9}
        ),
        Call.objects.create(call_sid="CA" + "3" * 32, agent=agent),  # not analysed
    ]


def changelist(staff_client, query: str = "") -> str:
    return staff_client.get(reverse("admin:calls_call_changelist") + query).content.decode()


def test_the_call_list_shows_the_verdict_and_filters_by_it(staff_client, calls):
    page = changelist(staff_client)
    assert "✔ success" in page and "✘ failed" in page
    succeeded = changelist(staff_client, "?success=yes")
    assert calls[0].call_sid in succeeded and calls[1].call_sid not in succeeded
    failed = changelist(staff_client, "?success=no")
    assert calls[1].call_sid in failed and calls[0].call_sid not in failed
    none = changelist(staff_client, "?success=none")
    assert calls[2].call_sid in none and calls[0].call_sid not in none


def test_the_call_list_searches_summaries(staff_client, calls):
    page = changelist(staff_client, "?q=terrace")
    assert calls[0].call_sid in page and calls[1].call_sid not in page


def test_the_newest_analysis_gives_the_verdict(staff_client, calls, agent):
    # Re-analysed after a plan change: the newer verdict wins, the old row is kept.
    newer = CallAnalysis.objects.get(call=calls[1])
    newer.pk = None
    newer.automatic = False
    newer.success = True
    newer.save()
    assert calls[1].call_sid in changelist(staff_client, "?success=yes")
    assert calls[1].analyses.count() == 2


def test_the_call_page_shows_summary_fields_and_verdict(staff_client, calls):
    page = staff_client.get(reverse("admin:calls_call_change", args=[calls[0].pk])).content.decode()
    assert "Booked a table for 4 on the terrace." in page
    assert "<th>party_size</th><td>4</td>" in page
    assert "✔ success" in page and "Because." in page
    assert "Plan version 1, gpt-5-mini, 1,234 tokens" in page
    assert "not part of the call" in page


def test_the_call_page_says_why_a_call_is_not_analysed(staff_client, calls, agent):
    page = staff_client.get(reverse("admin:calls_call_change", args=[calls[2].pk])).content.decode()
    assert "The call is not over" in page
    bare = Call.objects.create(call_sid="CA" + "4" * 32, ended_at=timezone.now())
    page = staff_client.get(reverse("admin:calls_call_change", args=[bare.pk])).content.decode()
    assert "no enabled analysis plan" in page


def test_a_failed_analysis_shows_its_error(staff_client, calls):
    failed = CallAnalysis.objects.get(call=calls[0])
    failed.pk = None
    failed.automatic = False
    failed.status = AnalysisStatus.FAILED
    failed.error = "OpenAI refused the request (HTTP 503): overloaded"
    failed.save()
    page = staff_client.get(reverse("admin:calls_call_change", args=[calls[0].pk])).content.decode()
    assert "Latest analysis failed" in page and "HTTP 503" in page
    assert "Booked a table for 4 on the terrace." in page  # the last good one still shows


def test_the_csv_export_has_a_column_per_extracted_field(staff_client, calls):
    response = staff_client.post(
        reverse("admin:calls_call_changelist"),
        {"action": "export_csv", "_selected_action": [str(call.pk) for call in calls]},
    )
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    by_sid = {row["call_sid"]: row for row in rows}
    assert by_sid[calls[0].call_sid]["data.party_size"] == "4"
    assert by_sid[calls[0].call_sid]["analysis_success"] == "yes"
    assert by_sid[calls[1].call_sid]["analysis_success"] == "no"
    assert by_sid[calls[1].call_sid]["analysis_summary"] == "Wanted a table; none was free."
    assert by_sid[calls[2].call_sid]["data.party_size"] == ""


def test_the_agent_page_shows_its_success_rate(staff_client, calls, agent):
    page = staff_client.get(reverse("admin:calls_agent_change", args=[agent.pk])).content.decode()
    assert "50%" in page and "1 of the last 2 judged calls succeeded" in page
    assert reverse("admin:calls_analysisplan_change", args=[agent.analysis_plan.pk]) in page


def test_an_agent_without_a_plan_links_to_adding_one(staff_client, agent):
    page = staff_client.get(reverse("admin:calls_agent_change", args=[agent.pk])).content.decode()
    assert "No analysis plan" in page and reverse(PLAN_ADD) + f"?agent={agent.pk}" in page


def test_analyse_again_queues_new_analyses(staff_client, calls, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(
            reverse("admin:calls_call_changelist"),
            {"action": "analyse_again", "_selected_action": [str(calls[0].pk), str(calls[2].pk)]},
            follow=True,
        )
    assert "Queued 1 analysis. Skipped 1" in response.content.decode()  # calls[2] has no conversation
    assert calls[0].analyses.count() == 2
    assert calls[0].analyses.first().status == AnalysisStatus.PENDING


def test_analyses_are_read_only_for_staff(staff_client, calls):
    analysis = CallAnalysis.objects.get(call=calls[0])
    page = staff_client.get(reverse("admin:calls_callanalysis_change", args=[analysis.pk]))
    assert page.status_code == 200
    assert b'name="summary"' not in page.content  # shown, never editable
