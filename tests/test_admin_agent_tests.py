"""Agent tests in the admin: "Make a test from this call", a bad test refused with a message,
runs read-only with their expectations and conversation, and the agent's page with each
test's pass rate and the button that queues the tests for the task worker."""

from __future__ import annotations

from typing import Any

import pytest
from django.urls import reverse
from django_tasks_db.models import DBTaskResult

from calls import agent_testing
from calls.admin import AgentForm
from calls.example_tools import restaurant_agent
from calls.models import Agent, AgentTest, AgentTestRun
from tests.test_agent_testing import booking_call, make_test, spec

pytestmark = pytest.mark.django_db


@pytest.fixture
def restaurant() -> Agent:
    return restaurant_agent()


def agent_post_data(agent: Agent) -> dict[str, Any]:
    """The agent's change form as the browser would post it, unchanged."""
    form = AgentForm(instance=agent)
    data: dict[str, Any] = {}
    for name in form.fields:
        value = form[name].value()
        if value is None or value is False:
            continue
        data[name] = "on" if value is True else value
    return data


def test_make_a_test_from_a_call_opens_the_new_test(staff_client, restaurant):
    call = booking_call(restaurant)
    response = staff_client.post(
        reverse("admin:calls_call_changelist"), {"action": "make_test", "_selected_action": [str(call.pk)]}
    )
    test = AgentTest.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("admin:calls_agenttest_change", args=[test.pk])
    page = staff_client.get(response["Location"]).content.decode()
    assert "made from the call: edit what it expects, then save" in page
    assert test.source_call == call and test.agent == restaurant
    assert reverse("admin:calls_call_change", args=[call.pk]) in page  # "Made from"


def test_a_call_without_a_caller_turn_makes_no_test(staff_client, restaurant):
    call = booking_call(restaurant)
    call.turns.filter(role="caller").delete()
    response = staff_client.post(
        reverse("admin:calls_call_changelist"),
        {"action": "make_test", "_selected_action": [str(call.pk)]},
        follow=True,
    )
    assert f"No test made: the caller said nothing in call {call.call_sid}." in response.content.decode()
    assert not AgentTest.objects.exists()


def test_a_test_that_cannot_run_is_refused_with_a_message(staff_client, restaurant):
    response = staff_client.post(
        reverse("admin:calls_agenttest_add"),
        {
            "agent": str(restaurant.pk),
            "name": "broken",
            "caller_turns": '["Hello"]',
            "caller_goal": "",
            "caller_persona": "",
            "max_turns": "6",
            "expect_tools": '[{"arguments": {}}]',
            "forbid_tools": "[]",
            "must_say": "[]",
            "must_not_say": "[]",
            "ending": "any",
            "rubric": "",
            "tool_results": "{}",
            "standin": "{}",
        },
    )
    assert response.status_code == 200
    assert "This test cannot run: expect_tools 1 needs a tool name" in response.content.decode()
    assert not AgentTest.objects.exists()


def test_the_run_page_shows_each_expectation_and_the_conversation(staff_client, restaurant):
    run = agent_testing.run_test(
        make_test(restaurant, "hours", spec(must_say=["reference"], ending="agent_ended"))
    )
    page = staff_client.get(reverse("admin:calls_agenttestrun_change", args=[run.pk])).content.decode()
    assert "the agent never said &#x27;reference&#x27;" in page
    assert "agent_ended" in page
    assert "When are you open, and can I book?" in page and "opening_hours({})" in page
    assert 'name="passed"' not in page  # a log, never edited


def test_the_agent_page_shows_pass_rates_and_queues_the_tests(
    staff_client, restaurant, django_capture_on_commit_callbacks
):
    passing = make_test(restaurant, "hours", spec(must_say=["noon"]))
    failing = make_test(restaurant, "reference", spec(must_say=["reference"]))
    make_test(restaurant, "new", spec())
    for _ in range(3):
        agent_testing.run_test(passing)
    agent_testing.run_test(failing)
    url = reverse("admin:calls_agent_change", args=[restaurant.pk])
    page = staff_client.get(url).content.decode()
    assert "3/3" in page and "0/1" in page and "never run" in page
    assert 'name="_run_tests"' in page

    with django_capture_on_commit_callbacks(execute=True):
        response = staff_client.post(url, {**agent_post_data(restaurant), "_run_tests": "1"}, follow=True)
    assert "the tests of Restaurant are queued" in response.content.decode()
    [job] = DBTaskResult.objects.filter(task_path="calls.agent_testing.run_agent_tests")
    agent_id, batch = job.args_kwargs["args"]
    assert agent_id == restaurant.pk

    # What the task worker runs:
    result = agent_testing.run_agent_tests.call(agent_id, batch)
    assert result == {"passed": 2, "tests": 3}
    assert AgentTestRun.objects.filter(batch=batch).count() == 3
    page = staff_client.get(url).content.decode()
    assert "4/4" in page and "0/2" in page and "1/1" in page


def test_the_action_runs_the_selected_tests_now(staff_client, restaurant):
    hours = make_test(restaurant, "hours", spec(must_say=["noon"]))
    reference = make_test(restaurant, "reference", spec(must_say=["reference"]))
    response = staff_client.post(
        reverse("admin:calls_agenttest_changelist"),
        {"action": "run_offline", "_selected_action": [str(hours.pk), str(reference.pk)]},
        follow=True,
    )
    page = response.content.decode()
    assert "1 of 2 tests passed. Failed: reference." in page
    assert [run.passed for run in AgentTestRun.objects.order_by("test__name")] == [True, False]
    assert "1/1" in page and "0/1" in page  # the list's pass rates
