"""The admin's "Save and run the tests" through the real task worker (``manage.py db_worker``,
its own process, on the test database): the queued job runs the agent's tests offline and
stores their runs, which the agent's page then shows."""

from __future__ import annotations

from django.urls import reverse

from calls import agent_testing
from calls.example_tools import restaurant_agent
from calls.models import AgentTestRun
from tests.test_agent_testing import make_test, spec
from tests.waiting import wait_until


def test_the_worker_runs_an_agents_queued_tests(start_worker, staff_client):
    restaurant = restaurant_agent()
    make_test(restaurant, "hours", spec(must_say=["noon"], rubric="The caller was told when they open."))
    make_test(restaurant, "reference", spec(must_say=["reference"]))
    # Autocommit here (transactional_db): the job is queued as the request's transaction commits.
    batch = agent_testing.queue_agent_tests(restaurant)
    start_worker()
    wait_until(
        lambda: AgentTestRun.objects.filter(batch=batch, finished_at__isnull=False).count() == 2,
        60,
        "the worker ran both tests",
    )
    runs = {run.test.name: run for run in AgentTestRun.objects.filter(batch=batch).select_related("test")}
    assert runs["hours"].passed is True and runs["hours"].judge_reason
    assert runs["reference"].passed is False
    page = staff_client.get(reverse("admin:calls_agent_change", args=[restaurant.pk])).content.decode()
    assert "1/1" in page and "0/1" in page
