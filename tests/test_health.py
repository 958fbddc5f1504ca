"""GET /healthz: what a load balancer or process monitor asks a worker."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest


@pytest.mark.django_db
def test_a_worker_with_its_database_is_healthy(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert client.head("/healthz").status_code == 200
    assert client.post("/healthz").status_code == 405


@pytest.mark.django_db
def test_probes_over_plain_http_are_not_redirected(client, settings):
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/admin/login/").status_code == 301  # the redirect is on
    assert client.get("/healthz").status_code == 200


@pytest.mark.e2e
def test_a_worker_whose_database_does_not_answer_is_unhealthy(start_server):
    # A real server whose database refuses connections: nothing listens on port 1.
    server = start_server(DATABASE_URL="postgres://postgres@127.0.0.1:1/voiceagent")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{server.url}/healthz", timeout=10)
    assert refused.value.code == 503
    assert json.loads(refused.value.read()) == {"status": "database unavailable"}
    assert "Health check: database unavailable (OperationalError)" in server.log()
