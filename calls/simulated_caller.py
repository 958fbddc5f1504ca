"""The simulated caller of open-ended agent tests (issue 17): a text model, given a goal and
a persona, says the caller's next line until its goal is met or cannot be.

The Responses API through the official SDK, as post-call analysis uses it (its client, retries
and timeout), with a strict JSON Schema answer: what the caller says, and whether the call is
over for them. Blocking: the runner calls it in a thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import openai

from calls.agent_tests import Transcript
from calls.analysis_model import AnalysisFailed

SCHEMA_NAME = "caller_turn"
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "say": {"type": "string", "description": "Your next words to the agent, as spoken on the phone."},
        "done": {
            "type": "boolean",
            "description": "True once your goal is met or cannot be met and you have said goodbye.",
        },
    },
    "required": ["say", "done"],
    "additionalProperties": False,
}


@dataclass
class CallerTurn:
    say: str
    done: bool
    usage: dict[str, Any] = field(default_factory=dict)


def instructions(goal: str, persona: str) -> str:
    parts = [
        "You are a person phoning a business; a voice agent answers. Stay in character and "
        "speak as on the phone: one or two short sentences per turn, no stage directions.",
        f"Your goal: {goal}",
    ]
    if persona:
        parts.append(f"Who you are and how you speak: {persona}")
    parts.append(
        "Answer the agent's questions with details that fit your goal. When your goal is met, or "
        "clearly cannot be met, say goodbye and set done to true."
    )
    return "\n".join(parts)


def conversation_text(transcript: Transcript) -> str:
    """The call so far, from the caller's side: what the agent said and what they said."""
    lines = []
    for line in transcript.lines:
        if line.speaker == "agent":
            lines.append(f"agent: {line.text}")
        elif line.speaker == "caller":
            lines.append(f"you: {line.text}")
    return "\n".join(lines) or "(the agent has not spoken yet: you start)"


def request(goal: str, persona: str, transcript: Transcript, model: str) -> dict[str, Any]:
    return {
        "model": model,
        "instructions": instructions(goal, persona),
        "input": [{"role": "user", "content": conversation_text(transcript)}],
        "text": {"format": {"type": "json_schema", "name": SCHEMA_NAME, "schema": SCHEMA, "strict": True}},
        "store": False,
    }


def parse(text: str) -> tuple[str, bool]:
    """The model's answer, checked: ``AnalysisFailed`` if it is not what the schema says."""
    try:
        answer = json.loads(text)
    except json.JSONDecodeError as exc:
        raise AnalysisFailed(f"the simulated caller's answer is not JSON: {text[:200]!r}") from exc
    if (
        not isinstance(answer, dict)
        or set(answer) != {"say", "done"}
        or not isinstance(answer["say"], str)
        or not isinstance(answer["done"], bool)
    ):
        raise AnalysisFailed(f"the simulated caller's answer does not fit its schema: {text[:200]!r}")
    return answer["say"].strip(), answer["done"]


def next_turn(
    goal: str, persona: str, transcript: Transcript, *, model: str, client: openai.OpenAI
) -> CallerTurn:
    try:
        response = client.responses.create(**request(goal, persona, transcript, model))
    except openai.APIError as exc:
        raise AnalysisFailed(f"the simulated caller's model failed: {exc}") from exc
    say, done = parse(response.output_text)
    usage = response.usage.model_dump() if response.usage else {}
    return CallerTurn(say, done, usage)
