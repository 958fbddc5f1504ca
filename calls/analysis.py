"""Post-call analysis, the pure part (issue 16): an agent's analysis plan as data, the strict
JSON Schema the model must answer in, the check of that answer, and the transcript as the
model reads it. No Django, no network: the job that calls the model and stores the rows
builds on this, and so do the admin's plan validation and its tests.

Why our own schema and checker instead of a JSON Schema library: a plan generates a small,
fixed subset (an object of scalars, enums and nullable scalars), Structured Outputs' strict
mode accepts exactly such schemas, and the answer must be checked again before it is stored
(a model, a proxy or a fake can still return something else). A general validator would be a
dependency for forty lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

FieldType = Literal["text", "number", "yes_no", "choice", "date", "phone"]
FIELD_TYPES: tuple[FieldType, ...] = ("text", "number", "yes_no", "choice", "date", "phone")

# Names are JSON keys the user's code reads (data["party_size"]): identifiers, lower case.
_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
MAX_FIELDS = 50
MAX_CHOICES = 50
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
# E.164 (+ and 8 to 15 digits), what Twilio and the example tools use.
_PHONE = re.compile(r"\+[1-9]\d{7,14}")
_PHONE_PATTERN = r"^\+[1-9][0-9]{7,14}$"


class PlanError(ValueError):
    """A plan that cannot be turned into a schema; the message says what to fix."""


@dataclass(frozen=True)
class FieldSpec:
    """One value to pull from the conversation."""

    name: str
    type: FieldType
    description: str = ""
    required: bool = False
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    """What to ask of one call's transcript."""

    summary: bool = True
    summary_instruction: str = ""
    fields: tuple[FieldSpec, ...] = ()
    success_criteria: str = ""

    @property
    def judges_success(self) -> bool:
        return bool(self.success_criteria.strip())

    @property
    def is_empty(self) -> bool:
        return not (self.summary or self.fields or self.judges_success)


@dataclass(frozen=True)
class Turn:
    """A line of the conversation as the analysis sees it (a spoken turn or a tool call)."""

    speaker: Literal["caller", "agent", "tool"]
    text: str
    interrupted: bool = False


@dataclass
class Analysis:
    """A checked answer, split into what the rows store."""

    summary: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    success: bool | None = None
    reason: str = ""


def parse_fields(raw: object) -> tuple[FieldSpec, ...]:
    """The fields of a plan as the admin stores them (a JSON list of objects), checked."""
    if raw in (None, ""):
        return ()
    if not isinstance(raw, list):
        raise PlanError("Fields must be a list of objects.")
    if len(raw) > MAX_FIELDS:
        raise PlanError(f"At most {MAX_FIELDS} fields.")
    specs: list[FieldSpec] = []
    seen: set[str] = set()
    for number, item in enumerate(raw, start=1):
        where = f"Field {number}"
        if not isinstance(item, Mapping):
            raise PlanError(f"{where} must be an object with a name and a type.")
        unknown = set(item) - {"name", "type", "description", "required", "choices"}
        if unknown:
            raise PlanError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}.")
        name = item.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise PlanError(
                f"{where}: the name {name!r} is not valid: lower-case letters, digits and _, "
                "starting with a letter, at most 64 characters."
            )
        if name in seen:
            raise PlanError(f"{where}: the name {name!r} is used twice.")
        seen.add(name)
        kind = item.get("type")
        if kind not in FIELD_TYPES:
            raise PlanError(f"{where} ({name}): the type {kind!r} is not one of {', '.join(FIELD_TYPES)}.")
        description = item.get("description", "")
        if not isinstance(description, str):
            raise PlanError(f"{where} ({name}): the description must be text.")
        required = item.get("required", False)
        if not isinstance(required, bool):
            raise PlanError(f"{where} ({name}): required must be true or false.")
        choices = item.get("choices", [])
        if kind == "choice":
            if (
                not isinstance(choices, list)
                or not choices
                or not all(isinstance(c, str) and c.strip() for c in choices)
            ):
                raise PlanError(
                    f"{where} ({name}): a choice field needs a list of choices (non-empty texts)."
                )
            if len(set(choices)) != len(choices) or len(choices) > MAX_CHOICES:
                raise PlanError(f"{where} ({name}): choices must be distinct, at most {MAX_CHOICES}.")
        elif choices:
            raise PlanError(f"{where} ({name}): only a choice field has choices.")
        specs.append(FieldSpec(name, kind, description.strip(), required, tuple(choices)))
    return tuple(specs)


def _field_schema(spec: FieldSpec) -> dict[str, Any]:
    """A field's JSON Schema: optional fields may be null ("not said in the call")."""
    base: dict[str, Any]
    if spec.type == "text":
        base = {"type": "string"}
    elif spec.type == "number":
        base = {"type": "number"}
    elif spec.type == "yes_no":
        base = {"type": "boolean"}
    elif spec.type == "choice":
        base = {"type": "string", "enum": list(spec.choices)}
    elif spec.type == "date":
        base = {"type": "string", "format": "date"}
    else:
        base = {"type": "string", "pattern": _PHONE_PATTERN}
    if not spec.required:
        base["type"] = [base["type"], "null"]
        if "enum" in base:
            base["enum"] = [*base["enum"], None]
    hint = spec.description or spec.name.replace("_", " ")
    if spec.type == "phone":
        hint += " (E.164, e.g. +14155550100)"
    elif spec.type == "date":
        hint += " (YYYY-MM-DD)"
    base["description"] = hint + ("" if spec.required else "; null if the call does not say")
    return base


def output_schema(plan: Plan) -> dict[str, Any]:
    """The strict JSON Schema of the model's answer: every property required, no others
    (Structured Outputs' strict mode), optional fields nullable instead of absent."""
    if plan.is_empty:
        raise PlanError("The plan asks for nothing: turn the summary on, add a field or success criteria.")
    properties: dict[str, Any] = {}
    if plan.summary:
        properties["summary"] = {
            "type": "string",
            "description": "What happened in the call, in a few sentences.",
        }
    if plan.fields:
        properties["data"] = {
            "type": "object",
            "properties": {spec.name: _field_schema(spec) for spec in plan.fields},
            "required": [spec.name for spec in plan.fields],
            "additionalProperties": False,
        }
    if plan.judges_success:
        properties["success"] = {
            "type": "boolean",
            "description": "Whether the call met the success criteria.",
        }
        properties["reason"] = {"type": "string", "description": "Why, in one sentence."}
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _check_field(spec: FieldSpec, value: object) -> str | None:
    if value is None:
        return f"{spec.name} is required" if spec.required else None
    if spec.type == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif spec.type == "yes_no":
        ok = isinstance(value, bool)
    elif not isinstance(value, str):
        ok = False
    elif spec.type == "choice":
        ok = value in spec.choices
    elif spec.type == "date":
        ok = bool(_DATE.fullmatch(value)) and _is_date(value)
    elif spec.type == "phone":
        ok = bool(_PHONE.fullmatch(value))
    else:
        ok = True
    return None if ok else f"{spec.name}: {value!r} is not a valid {spec.type.replace('_', '/')}"


def _is_date(value: str) -> bool:
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def check_output(plan: Plan, answer: object) -> Analysis:
    """The model's answer, checked against the plan before anything is stored. Raises
    ``PlanError`` naming every problem: a refused answer is stored as an error, never as data."""
    if not isinstance(answer, Mapping):
        raise PlanError("The answer is not a JSON object.")
    expected = set(output_schema(plan)["properties"])
    problems = [f"unexpected key {key!r}" for key in sorted(set(answer) - expected)]
    problems += [f"missing key {key!r}" for key in sorted(expected - set(answer))]
    result = Analysis()
    if plan.summary:
        summary = answer.get("summary")
        if isinstance(summary, str):
            result.summary = summary.strip()
        elif "summary" in answer:
            problems.append("summary is not text")
    if plan.fields:
        data = answer.get("data")
        if isinstance(data, Mapping):
            names = {spec.name for spec in plan.fields}
            problems += [f"unexpected field {key!r}" for key in sorted(set(data) - names)]
            problems += [f"missing field {key!r}" for key in sorted(names - set(data))]
            for spec in plan.fields:
                if spec.name in data:
                    error = _check_field(spec, data[spec.name])
                    if error:
                        problems.append(error)
                    result.data[spec.name] = data[spec.name]
        elif "data" in answer:
            problems.append("data is not an object")
    if plan.judges_success:
        success, reason = answer.get("success"), answer.get("reason")
        if isinstance(success, bool):
            result.success = success
        elif "success" in answer:
            problems.append("success is not true or false")
        if isinstance(reason, str):
            result.reason = reason.strip()
        elif "reason" in answer:
            problems.append("reason is not text")
    if problems:
        raise PlanError("The answer does not match the plan: " + "; ".join(problems) + ".")
    return result


def instructions(plan: Plan) -> str:
    """What the analysing model is told, besides the schema."""
    parts = [
        "You review a finished phone call between a caller and a voice agent. The transcript "
        "follows, in conversation order. Lines marked [interrupted] were cut off by the caller: "
        "only part of them was heard. Lines starting with 'tool' are actions the agent took and "
        "their results. Use only what the transcript says; never invent values."
    ]
    if plan.summary:
        parts.append(
            "Summary: " + (plan.summary_instruction.strip() or "what the caller wanted and what happened.")
        )
    if plan.fields:
        parts.append("Extract the fields of 'data'. When the call does not say a value, answer null.")
    if plan.judges_success:
        parts.append(
            "Judge whether the call succeeded against these criteria, answer success true or false "
            "and give the reason in one sentence:\n" + plan.success_criteria.strip()
        )
    return "\n\n".join(parts)


def transcript_text(turns: Iterable[Turn]) -> str:
    """The conversation as the model reads it, one line per turn."""
    lines = []
    for turn in turns:
        text = " ".join(turn.text.split()) or "(nothing transcribed)"
        mark = " [interrupted]" if turn.interrupted else ""
        lines.append(f"{turn.speaker}{mark}: {text}")
    return "\n".join(lines)


def plan_from_snapshot(snapshot: Mapping[str, Any]) -> Plan:
    """A stored plan version (JSON) as a Plan: versions are kept as they were when saved."""
    return Plan(
        summary=bool(snapshot.get("summary", True)),
        summary_instruction=str(snapshot.get("summary_instruction", "")),
        fields=parse_fields(snapshot.get("fields", [])),
        success_criteria=str(snapshot.get("success_criteria", "")),
    )


def snapshot(plan: Plan) -> dict[str, Any]:
    """A Plan as the JSON a plan version stores (the inverse of ``plan_from_snapshot``)."""
    return {
        "summary": plan.summary,
        "summary_instruction": plan.summary_instruction,
        "fields": [
            {
                "name": spec.name,
                "type": spec.type,
                "description": spec.description,
                "required": spec.required,
                **({"choices": list(spec.choices)} if spec.type == "choice" else {}),
            }
            for spec in plan.fields
        ],
        "success_criteria": plan.success_criteria,
    }


def field_columns(plans: Sequence[Plan]) -> list[str]:
    """Field names across plans, first seen first: one CSV column each."""
    names: dict[str, None] = {}
    for plan in plans:
        for spec in plan.fields:
            names.setdefault(spec.name, None)
    return list(names)
