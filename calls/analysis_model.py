"""The OpenAI Responses API, as post-call analysis uses it (issue 16): one request with
Structured Outputs (strict JSON Schema), its answer checked again before anything is stored.

Retries and their backoff are the official SDK's (``max_retries``: 429 and 5xx, connection
errors and timeouts, honouring ``retry-after``); what is left after them is an
``AnalysisFailed`` with a message fit for the analysis row, never an exception that could
cost the call its record. Blocking: run it in a worker (the background job), never in the
media path.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import openai

from calls.analysis import (
    Analysis,
    Plan,
    PlanError,
    Turn,
    check_output,
    instructions,
    output_schema,
    transcript_text,
)

DEFAULT_MODEL = "gpt-5-mini"
TIMEOUT_SECONDS = 60.0
MAX_RETRIES = 3
SCHEMA_NAME = "call_analysis"


class AnalysisFailed(Exception):
    """The analysis could not be done; ``str(error)`` is what the row stores."""


@dataclass
class ModelAnswer:
    analysis: Analysis
    model: str
    usage: dict[str, Any] = field(default_factory=dict)


def request(plan: Plan, turns: list[Turn], model: str) -> dict[str, Any]:
    """The Responses API request body: instructions, the transcript, the strict schema."""
    return {
        "model": model,
        "instructions": instructions(plan),
        "input": [{"role": "user", "content": transcript_text(turns) or "(the call has no transcript)"}],
        "text": {
            "format": {
                "type": "json_schema",
                "name": SCHEMA_NAME,
                "schema": output_schema(plan),
                "strict": True,
            }
        },
        "store": False,
    }


def analyse(
    plan: Plan,
    turns: list[Turn],
    *,
    model: str = DEFAULT_MODEL,
    client: openai.OpenAI,
) -> ModelAnswer:
    """Ask the model; the answer is checked against the plan. Raises ``AnalysisFailed``."""
    body = request(plan, turns, model)
    try:
        response = client.responses.create(**body)
    except openai.APITimeoutError as exc:
        raise AnalysisFailed(f"OpenAI did not answer in time ({exc})") from exc
    except openai.APIConnectionError as exc:
        raise AnalysisFailed(f"cannot reach the OpenAI API ({exc})") from exc
    except openai.APIStatusError as exc:
        raise AnalysisFailed(f"OpenAI refused the request (HTTP {exc.status_code}): {_message(exc)}") from exc
    if response.status != "completed":
        detail = response.incomplete_details.reason if response.incomplete_details else response.status
        raise AnalysisFailed(f"the answer is incomplete ({detail})")
    text = response.output_text
    try:
        answer = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnalysisFailed(f"the answer is not JSON: {text[:200]!r}") from exc
    try:
        analysis = check_output(plan, answer)
    except PlanError as exc:
        raise AnalysisFailed(str(exc)) from exc
    usage = response.usage.model_dump() if response.usage else {}
    return ModelAnswer(analysis=analysis, model=response.model, usage=usage)


def _message(error: openai.APIStatusError) -> str:
    body = error.body
    if isinstance(body, dict):
        detail = body.get("error", body)
        if isinstance(detail, dict) and isinstance(detail.get("message"), str):
            return str(detail["message"])
    return str(error.message)


def client(*, api_key: str, base_url: str | None = None, timeout: float = TIMEOUT_SECONDS) -> openai.OpenAI:
    """The SDK client analysis uses: our timeout and retries, ``OPENAI_BASE_URL`` if set."""
    return openai.OpenAI(api_key=api_key, base_url=base_url or None, timeout=timeout, max_retries=MAX_RETRIES)
