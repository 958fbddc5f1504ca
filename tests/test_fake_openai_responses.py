"""The fake OpenAI Responses API, driven by the official ``openai`` SDK over a real socket."""

from __future__ import annotations

import copy
import datetime
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any, Literal

import openai
import pytest
from openai import OpenAI
from openai.types.responses import Response
from pydantic import BaseModel

from calls.fakes.openai_responses import FakeResponsesServer

MODEL = "gpt-5.6-mini"
CALL = (
    "Hi, my name is Maria Lopez. I'd like a table for 4 guests on 2026-03-14, on the terrace please. "
    "You can reach me at +1 (555) 010-2000. Yes, that's confirmed."
)
BOOKING: dict[str, Any] = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "caller_name": {"type": "string", "description": "Who called"},
        "callback_phone": {"type": "string"},
        "party_size": {"type": "integer", "minimum": 1, "maximum": 20},
        "date": {"type": "string", "format": "date"},
        "seating": {"type": "string", "enum": ["indoor", "terrace", "bar"]},
        "confirmed": {"type": "boolean"},
        "allergies": {"type": ["string", "null"]},
        "requests": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"kind": {"type": "string", "enum": ["highchair", "cake"]}},
                "required": ["kind"],
                "additionalProperties": False,
            },
        },
    },
    "required": [
        "summary",
        "caller_name",
        "callback_phone",
        "party_size",
        "date",
        "seating",
        "confirmed",
        "allergies",
        "requests",
    ],
    "additionalProperties": False,
}


def json_schema(schema: dict[str, Any], *, strict: bool = True, name: str = "booking") -> dict[str, Any]:
    return {"format": {"type": "json_schema", "name": name, "schema": schema, "strict": strict}}


def violations(
    value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None, at: str = "$"
) -> list[str]:
    """A small JSON Schema checker, written apart from the fake so that it can disagree with it."""
    root = root if root is not None else schema
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#").split("/")[1:]:
            target = target[part]
        return violations(value, target, root, at)
    if "anyOf" in schema:
        if any(not violations(value, branch, root, at) for branch in schema["anyOf"]):
            return []
        return [f"{at}: matches no anyOf branch"]
    if "const" in schema and value != schema["const"]:
        return [f"{at}: {value!r} is not {schema['const']!r}"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{at}: {value!r} is not one of {schema['enum']}"]
    types = schema.get("type")
    listed = types if isinstance(types, list) else [types] if types else []
    checks = {
        "null": lambda v: v is None,
        "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "string": lambda v: isinstance(v, str),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
    }
    if listed and not any(checks[kind](value) for kind in listed):
        return [f"{at}: {value!r} is not of type {types}"]
    problems: list[str] = []
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        problems += [f"{at}: missing {key!r}" for key in schema.get("required", []) if key not in value]
        if schema.get("additionalProperties") is False:
            problems += [f"{at}: unexpected {key!r}" for key in value if key not in properties]
        for key, item in value.items():
            if key in properties:
                problems += violations(item, properties[key], root, f"{at}.{key}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            problems.append(f"{at}: {len(value)} items")
        for index, item in enumerate(value):
            problems += violations(item, schema.get("items", {}), root, f"{at}[{index}]")
    if isinstance(value, str):
        if schema.get("format") == "date":
            try:
                datetime.date.fromisoformat(value)
            except ValueError:
                problems.append(f"{at}: {value!r} is not a date")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{at}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            problems.append(f"{at}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            problems.append(f"{at}: {value} > {schema['maximum']}")
    return problems


def post(server: FakeResponsesServer, body: bytes | dict[str, Any], *, auth: bool = True) -> tuple[int, Any]:
    """A raw POST, for the bodies the SDK would never send."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} | ({"Authorization": "Bearer sk-test"} if auth else {})
    request = urllib.request.Request(
        f"{server.base_url}/responses", data=data, headers=headers, method="POST"
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    try:
        with opener.open(request, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


@pytest.fixture
def server() -> Iterator[FakeResponsesServer]:
    with FakeResponsesServer() as fake:
        yield fake


@pytest.fixture
def client(server: FakeResponsesServer) -> Iterator[OpenAI]:
    with OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0) as sdk:
        yield sdk


def create_booking(client: OpenAI, text: str = CALL, schema: dict[str, Any] = BOOKING) -> dict[str, Any]:
    response = client.responses.create(model=MODEL, input=text, text=json_schema(schema))
    return json.loads(response.output_text)


# --- the happy path --------------------------------------------------------------------


def test_strict_schema_output_parses_and_validates(client: OpenAI) -> None:
    booking = create_booking(client)
    assert violations(booking, BOOKING) == []
    assert list(booking) == list(BOOKING["properties"])  # keys in schema order, as the service does


def test_the_response_object_is_complete_for_the_sdk(client: OpenAI, server: FakeResponsesServer) -> None:
    raw = client.responses.with_raw_response.create(model=MODEL, input=CALL, text=json_schema(BOOKING))
    # The SDK builds responses leniently; validating the raw body strictly proves no required
    # field of openai's Response model is missing.
    response = Response.model_validate_json(raw.http_response.content)
    assert response.id.startswith("resp_")
    assert (response.object, response.status, response.model) == ("response", "completed", MODEL)
    assert response.created_at > 0
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    usage = response.usage
    assert usage is not None
    assert usage.input_tokens == -(-len(CALL) // 4)  # about four characters a token
    assert usage.output_tokens > 0 and usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert (usage.input_tokens_details.cached_tokens, usage.output_tokens_details.reasoning_tokens) == (0, 0)
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"
    assert raw.http_response.headers["x-request-id"].startswith("req_")
    assert server.requests[-1]["text"]["format"]["strict"] is True


def test_plain_text_request_gets_a_short_text_answer(client: OpenAI) -> None:
    response = client.responses.create(model=MODEL, input=[{"role": "user", "content": CALL}])
    assert response.output_text.startswith("Hi, my name is Maria Lopez.")
    assert len(response.output_text.split()) <= 30
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "text"


class Deposit(BaseModel):
    amount: float
    currency: Literal["EUR", "USD"]


class Booking(BaseModel):
    caller_name: str
    party_size: int
    date: datetime.date
    seating: Literal["indoor", "terrace", "bar"]
    deposit: Deposit | None
    notes: str = "none"


def test_sdk_parse_with_a_pydantic_model_round_trips(client: OpenAI, server: FakeResponsesServer) -> None:
    # The SDK's own strict schema (titles, $defs, $ref, anyOf with null, a default) must pass.
    response = client.responses.parse(model=MODEL, input=CALL, text_format=Booking)
    booking = response.output_parsed
    assert isinstance(booking, Booking)
    assert (booking.caller_name, booking.party_size, booking.seating) == ("Maria Lopez", 4, "terrace")
    assert booking.date == datetime.date(2026, 3, 14)
    assert "$defs" in server.requests[-1]["text"]["format"]["schema"]


def test_recursive_schema_from_the_guide_is_accepted_and_ends(client: OpenAI) -> None:
    linked_list = {
        "type": "object",
        "properties": {"linked_list": {"$ref": "#/$defs/node"}},
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "value": {"type": "number"},
                    "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]},
                },
                "additionalProperties": False,
                "required": ["next", "value"],
            }
        },
        "additionalProperties": False,
        "required": ["linked_list"],
    }
    value = create_booking(client, "Count 3 then stop.", linked_list)
    assert violations(value, linked_list) == []
    assert value["linked_list"]["value"] == 3


def test_non_strict_schema_is_not_held_to_strict_rules(client: OpenAI) -> None:
    loose = {"type": "object", "properties": {"seating": {"type": "string", "enum": ["indoor", "terrace"]}}}
    response = client.responses.create(model=MODEL, input=CALL, text=json_schema(loose, strict=False))
    assert json.loads(response.output_text) == {"seating": "terrace"}


# --- derived values ---------------------------------------------------------------------


def test_derived_values_come_from_the_input(client: OpenAI) -> None:
    booking = create_booking(client)
    assert booking["seating"] == "terrace"  # the enum value the caller mentioned
    assert booking["date"] == "2026-03-14"
    assert booking["party_size"] == 4  # not 2026 (the date) nor 1 (the phone number)
    assert booking["callback_phone"] == "+15550102000"
    assert booking["caller_name"] == "Maria Lopez"
    assert booking["confirmed"] is True
    assert booking["allergies"] is None  # nullable and never mentioned
    assert booking["requests"] == [{"kind": "highchair"}]  # one item; no kind mentioned: the first
    assert booking["summary"].startswith("Hi, my name is Maria Lopez.")
    assert len(booking["summary"].split()) <= 30


def test_fallbacks_when_the_input_says_nothing(client: OpenAI) -> None:
    booking = create_booking(client, "Hello.")
    assert violations(booking, BOOKING) == []
    assert (booking["seating"], booking["date"], booking["callback_phone"]) == ("indoor", "1970-01-01", "")
    assert booking["party_size"] == 1  # 0, raised to the schema's minimum
    assert booking["caller_name"] == "Who called"  # the description
    assert booking["confirmed"] is False


def test_a_yes_no_is_yes_only_where_the_call_mentions_it_a_verdict_anywhere(client: OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {
            "success": {"type": "boolean"},
            "callback_requested": {"type": ["boolean", "null"]},
            "newsletter": {"type": "boolean"},
        },
        "required": ["success", "callback_requested", "newsletter"],
        "additionalProperties": False,
    }
    said = "Sure, we open at nine."
    assert create_booking(client, said, schema) == {
        "success": True,
        "callback_requested": None,
        "newsletter": False,
    }
    said = "Please call me back. Callback requested: yes."
    assert create_booking(client, said, schema) == {
        "success": True,
        "callback_requested": True,
        "newsletter": False,
    }


def test_the_same_input_gives_the_same_output(client: OpenAI) -> None:
    assert create_booking(client) == create_booking(client)


def test_numbers_follow_the_property_name_before_the_first_number(client: OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"nights": {"type": "integer"}, "budget": {"type": "number"}},
        "required": ["nights", "budget"],
        "additionalProperties": False,
    }
    value = create_booking(client, "Two rooms, 3 nights, and my budget is 120.50 euros.", schema)
    assert value == {"nights": 3, "budget": 120.5}


# --- refusals -----------------------------------------------------------------------------


def strict_refusal(client: OpenAI, schema: dict[str, Any]) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=MODEL, input=CALL, text=json_schema(schema))
    assert caught.value.param == "text.format.schema"
    assert caught.value.code == "invalid_json_schema"
    assert caught.value.type == "invalid_request_error"
    return caught.value


def test_strict_schema_without_additional_properties_false_is_refused(client: OpenAI) -> None:
    schema = copy.deepcopy(BOOKING)
    del schema["properties"]["requests"]["items"]["additionalProperties"]
    error = strict_refusal(client, schema)
    assert isinstance(error.body, dict)
    assert error.body["message"] == (
        "Invalid schema for response_format 'booking': In context=('properties', 'requests', 'items'), "
        "'additionalProperties' is required to be supplied and to be false."
    )


def test_strict_schema_missing_a_required_key_is_refused(client: OpenAI) -> None:
    schema = copy.deepcopy(BOOKING)
    schema["required"].remove("allergies")
    error = strict_refusal(client, schema)
    assert "'required' is required to be supplied" in str(error)
    assert "Missing 'allergies'" in str(error)


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda s: s.update(additionalProperties=True), "In context=(), 'additionalProperties' is required"),
        (lambda s: s["required"].append("extra"), "Extra required key 'extra' supplied"),
        (lambda s: s.update(type="array"), "schema must be a JSON Schema of 'type: \"object\"'"),
        (
            lambda s: s.update(anyOf=[{"type": "object"}]),
            "schema must be a JSON Schema of 'type: \"object\"'",
        ),
        (lambda s: s["properties"]["summary"].pop("type"), "'summary'), schema must have a 'type' key"),
        (lambda s: s["properties"]["summary"].update(type="text"), 'type "text" is not supported'),
        (lambda s: s["properties"]["date"].update(format="day"), 'format "day" is not supported'),
        (lambda s: s["properties"]["requests"].update(uniqueItems=True), "'uniqueItems' is not permitted"),
        (lambda s: s["properties"]["summary"].update(allOf=[{"type": "string"}]), "'allOf' is not permitted"),
        (lambda s: s["properties"]["summary"].update(oneOf=[{"type": "string"}]), "'oneOf' is not permitted"),
        (lambda s: s["properties"]["summary"].update({"not": {"const": ""}}), "'not' is not permitted"),
        (lambda s: s["properties"].update(summary={"$ref": "#/$defs/gone"}), "can't be resolved"),
    ],
)
def test_strict_mode_rules(client: OpenAI, change: Any, says: str) -> None:
    schema = copy.deepcopy(BOOKING)
    change(schema)
    assert says in str(strict_refusal(client, schema))


def test_strict_mode_accepts_the_documented_type_specific_keywords(client: OpenAI) -> None:
    schema = copy.deepcopy(BOOKING)
    schema["properties"]["caller_name"].update(pattern="^[A-Z][a-z]+ [A-Z][a-z]+$", title="Caller")
    schema["properties"]["party_size"].update(exclusiveMaximum=12, multipleOf=2)
    schema["properties"]["requests"].update(minItems=2, maxItems=3)
    booking = create_booking(client, schema=schema)
    assert violations(booking, schema) == []
    assert len(booking["requests"]) == 2


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        (b"{not json", None, "could not parse the JSON body"),
        ({"input": "hi"}, "model", "Missing required parameter: 'model'."),
        ({"model": "", "input": "hi"}, "model", "empty string"),
        ({"model": 4, "input": "hi"}, "model", "expected a string, but got an integer instead"),
        ({"model": MODEL}, "input", "Missing required parameter: 'input'."),
        ({"model": MODEL, "input": {"text": "hi"}}, "input", "Invalid type for 'input'"),
        ({"model": MODEL, "input": [{"role": "caller", "content": "hi"}]}, "input[0].role", "'caller'"),
        ({"model": MODEL, "input": [{"role": "user"}]}, "input[0].content", "Missing required parameter"),
        (
            {
                "model": MODEL,
                "input": [{"role": "assistant", "content": [{"type": "input_text", "text": "x"}]}],
            },
            "input[0].content[0]",
            "Supported values are: 'output_text' and 'refusal'.",
        ),
        (
            {"model": MODEL, "input": [{"role": "user", "content": [{"type": "input_text", "text": 3}]}]},
            "input[0].content[0].text",
            "expected a string",
        ),
        ({"model": MODEL, "input": [{"type": "function_call_output", "role": "user"}]}, "input[0].type", ""),
        (
            {"model": MODEL, "input": "hi", "text": json_schema(BOOKING, name="my booking")},
            "text.format.name",
            "",
        ),
        (
            {"model": MODEL, "input": "hi", "text": json_schema(BOOKING, name="b" * 65)},
            "text.format.name",
            "",
        ),
        (
            {"model": MODEL, "input": "hi", "text": {"format": {"type": "json_schema", "name": "b"}}},
            "text.format.schema",
            "Missing required parameter: 'text.format.schema'.",
        ),
        (
            # Chat Completions' shape, sent to the Responses API by mistake
            {"model": MODEL, "input": "hi", "text": {"format": {"type": "json_schema", "json_schema": {}}}},
            "text.format.name",
            "Missing required parameter",
        ),
        (
            {
                "model": MODEL,
                "input": "hi",
                "text": {"format": {**json_schema(BOOKING)["format"], "strict": "yes"}},
            },
            "text.format.strict",
            "expected a boolean",
        ),
        (
            {"model": MODEL, "input": "hi", "text": {"format": {"type": "json_object"}}},
            "text.format.type",
            "",
        ),
    ],
)
def test_malformed_requests_are_refused_with_the_param(
    server: FakeResponsesServer, body: bytes | dict[str, Any], param: str | None, says: str
) -> None:
    status, answer = post(server, body)
    assert status == 400
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == param
    assert says in answer["error"]["message"]


def test_a_request_without_an_api_key_is_unauthorized(client: OpenAI, server: FakeResponsesServer) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        client.responses.create(model=MODEL, input="hi", extra_headers={"Authorization": openai.Omit()})
    assert "You didn't provide an API key" in str(caught.value)
    assert post(server, {"model": MODEL, "input": "hi"}, auth=False)[0] == 401


def test_a_wrong_api_key_is_refused_when_one_is_configured() -> None:
    with (
        FakeResponsesServer(api_key="sk-right") as fake,
        OpenAI(base_url=fake.base_url, api_key="sk-wrong") as sdk,
    ):
        with pytest.raises(openai.AuthenticationError) as caught:
            sdk.responses.create(model=MODEL, input="hi")
        assert caught.value.code == "invalid_api_key"
        assert "sk-wrong" not in str(caught.value)


def test_other_paths_are_404(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match=r"Invalid URL \(POST /v1/chat/completions\)"):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])


# --- scripted faults ----------------------------------------------------------------------


def test_a_429_is_retried_by_the_sdk(server: FakeResponsesServer) -> None:
    server.fail_next(429, retry_after=0)
    with OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=1) as sdk:
        response = sdk.responses.create(model=MODEL, input=CALL, text=json_schema(BOOKING))
    assert violations(json.loads(response.output_text), BOOKING) == []
    assert len(server.requests) == 2


def test_a_429_carries_retry_after_and_openais_error_body(
    client: OpenAI, server: FakeResponsesServer
) -> None:
    server.fail_next(429, retry_after=1.5)
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model=MODEL, input="hi")
    assert caught.value.response.headers["retry-after"] == "1.5"
    assert (caught.value.type, caught.value.code) == ("rate_limit_error", "rate_limit_exceeded")
    assert client.responses.create(model=MODEL, input="hi").status == "completed"  # once only


def test_a_500_without_retries_is_an_internal_server_error(
    client: OpenAI, server: FakeResponsesServer
) -> None:
    server.fail_next(500)
    with pytest.raises(openai.InternalServerError) as caught:
        client.responses.create(model=MODEL, input="hi")
    assert caught.value.type == "server_error"
    assert len(server.requests) == 1


def test_a_delay_longer_than_the_client_timeout_times_out(server: FakeResponsesServer) -> None:
    server.delay_next(2)
    with OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0, timeout=0.5) as sdk:
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            sdk.responses.create(model=MODEL, input="hi")
        assert time.monotonic() - started < 1.5  # the client gave up; the fake did not answer
        assert sdk.responses.create(model=MODEL, input="hi").status == "completed"


def test_invalid_output_next_breaks_the_schema_once(client: OpenAI, server: FakeResponsesServer) -> None:
    server.invalid_output_next()
    response = client.responses.create(model=MODEL, input=CALL, text=json_schema(BOOKING))
    broken = json.loads(response.output_text)
    assert response.status == "completed"
    assert violations(broken, BOOKING) == ["$: missing 'summary'"]
    assert violations(create_booking(client), BOOKING) == []


def test_faults_are_used_in_the_order_they_were_scripted(client: OpenAI, server: FakeResponsesServer) -> None:
    server.fail_next(503)
    server.fail_next(429)
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model=MODEL, input="hi")
    with pytest.raises(openai.RateLimitError):
        client.responses.create(model=MODEL, input="hi")
    server.fail_next(500)
    server.reset()
    assert server.requests == []
    assert client.responses.create(model=MODEL, input="hi").status == "completed"


def test_requests_are_recorded_in_order_from_many_threads(
    client: OpenAI, server: FakeResponsesServer
) -> None:
    def send(index: int) -> None:
        client.responses.create(model=MODEL, input=f"call {index}", metadata={"index": str(index)})

    threads = [threading.Thread(target=send, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(int(body["metadata"]["index"]) for body in server.requests) == list(range(8))
    client.responses.create(model=MODEL, input="last")
    assert server.requests[-1]["input"] == "last"
