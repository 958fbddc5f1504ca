"""OpenAI Realtime API, GA interface: session configuration and client events, sans-IO.

Targets the GA shape (``session.type: "realtime"``, ``audio/pcmu``, nested ``audio``
config, no ``OpenAI-Beta`` header). Server events the bridge acts on are parsed here into
small typed values (``parse_server_event``); every other event is ``Unknown`` and a frame
that is not a well-formed event is ``Malformed``: parsing never raises, so one bad frame
costs that frame, never the call. Field names follow ``openai.types.realtime`` (the
official SDK), which the fake server checks every event against.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

# G.711 mu-law at 8 kHz, Twilio's only format: forwarded both ways without transcoding.
AUDIO_FORMAT = {"type": "audio/pcmu"}


@dataclass(frozen=True)
class AgentConfig:
    """What the bridge needs of an agent, detached from the ORM."""

    instructions: str
    model: str
    voice: str = "marin"
    greeting: str = ""
    transcription_model: str = ""
    transcription_language: str = ""
    turn_detection: str = "server_vad"
    vad_threshold: float = 0.5
    vad_prefix_padding_ms: int = 300
    vad_silence_ms: int = 500
    vad_eagerness: str = "auto"
    noise_reduction: str = "near_field"
    max_call_seconds: int = 600
    tools: list[dict[str, Any]] = field(default_factory=list)  # definitions for session.update
    transfer_destinations: list[str] = field(default_factory=list)
    idle_timeout_seconds: int = 0  # server VAD only; 0 = never prompt a silent caller
    max_silence_prompts: int = 2
    # OpenAI ends a session after 60 minutes: replace it (quietly) before that.
    session_max_seconds: float = 55 * 60
    record: bool = False  # keep a recording of the call

    @property
    def tool_names(self) -> set[str]:
        return {str(t.get("name")) for t in self.tools}


def connect_url(base_url: str, model: str) -> str:
    parts = urlsplit(base_url)
    query = urlencode({"model": model})
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


def connect_headers(api_key: str) -> dict[str, str]:
    # GA: a bearer token only. Sending OpenAI-Beta now gets ``beta_api_shape_disabled``.
    return {"Authorization": f"Bearer {api_key}"}


def _turn_detection(agent: AgentConfig) -> dict[str, Any]:
    if agent.turn_detection == "semantic_vad":
        return {
            "type": "semantic_vad",
            "eagerness": agent.vad_eagerness,
            "create_response": True,
            "interrupt_response": True,
        }
    detection: dict[str, Any] = {
        "type": "server_vad",
        "threshold": agent.vad_threshold,
        "prefix_padding_ms": agent.vad_prefix_padding_ms,
        "silence_duration_ms": agent.vad_silence_ms,
        "create_response": True,
        "interrupt_response": True,
    }
    if agent.idle_timeout_seconds:
        # After this much silence the service prompts the caller by itself.
        detection["idle_timeout_ms"] = agent.idle_timeout_seconds * 1000
    return detection


def session_update(agent: AgentConfig, *, text_only: bool = False) -> dict[str, Any]:
    """The call's session. ``text_only``: the same session answering in text to typed turns
    (agent tests, ``calls.agent_test_runner``): no turn detection, no transcription."""
    audio_input: dict[str, Any] = {
        "format": AUDIO_FORMAT,
        "turn_detection": None if text_only else _turn_detection(agent),
        "noise_reduction": {"type": agent.noise_reduction} if agent.noise_reduction else None,
        "transcription": None,
    }
    if agent.transcription_model and not text_only:
        transcription = {"model": agent.transcription_model}
        if agent.transcription_language:
            transcription["language"] = agent.transcription_language
        audio_input["transcription"] = transcription
    return {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "model": agent.model,
            "output_modalities": ["text"] if text_only else ["audio"],
            "instructions": agent.instructions,
            "audio": {
                "input": audio_input,
                "output": {"format": AUDIO_FORMAT, "voice": agent.voice},
            },
            "tools": agent.tools,
            "tool_choice": "auto",
        },
    }


def session_problems(session: object) -> list[str]:
    """What in a ``session.updated`` differs from what the bridge needs to pass audio through."""
    if not isinstance(session, dict):
        return ["session.updated carries no session object"]
    problems = []
    if session.get("type") != "realtime":
        problems.append(f"session type is {session.get('type')!r}, expected 'realtime'")
    audio = _object(session, "audio")
    for direction in ("input", "output"):
        fmt = _object(_object(audio, direction), "format")
        if fmt.get("type") != AUDIO_FORMAT["type"]:
            problems.append(f"{direction} audio format is {fmt.get('type')!r}, expected 'audio/pcmu'")
    return problems


def dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


def audio_append(payload: str) -> str:
    """``input_audio_buffer.append`` with Twilio's base64 payload as is (pcmu both sides)."""
    return f'{{"type":"input_audio_buffer.append","audio":"{payload}"}}'


def joined_payloads(payloads: Iterable[str]) -> str:
    """Several Twilio payloads as one: base64 strings with padding cannot just be concatenated
    (a 160-byte frame ends in ``==``), so the audio is decoded and encoded once more."""
    return base64.b64encode(b"".join(base64.b64decode(payload) for payload in payloads)).decode("ascii")


def response_create(
    instructions: str | None = None, metadata: dict[str, str] | None = None, *, tools: bool = True
) -> str:
    """``tools=False``: this response may not call a tool (a goodbye must be spoken)."""
    response: dict[str, Any] = {}
    if instructions is not None:
        response["instructions"] = instructions
    if metadata:
        response["metadata"] = metadata  # echoed on response.created/done
    if not tools:
        response["tool_choice"] = "none"
    if not response:
        return '{"type":"response.create"}'
    return dumps({"type": "response.create", "response": response})


def response_cancel(response_id: str | None = None) -> str:
    """Cancel ``response_id`` only: a bare cancel would hit whichever response is active by
    the time it arrives, possibly a newer one."""
    if response_id is None:
        return '{"type":"response.cancel"}'
    return dumps({"type": "response.cancel", "response_id": response_id})


def truncate(item_id: str, audio_end_ms: int) -> str:
    return dumps(
        {
            "type": "conversation.item.truncate",
            "item_id": item_id,
            "content_index": 0,
            "audio_end_ms": audio_end_ms,
        }
    )


def text_item(text: str, *, role: str = "user", item_id: str | None = None) -> str:
    """A text message in the conversation; the assistant's own words are ``output_text``."""
    kind = "output_text" if role == "assistant" else "input_text"
    item: dict[str, Any] = {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}
    if item_id:
        item["id"] = item_id
    return dumps({"type": "conversation.item.create", "item": item})


def function_output(call_id: str, output: str) -> str:
    return dumps(
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": call_id, "output": output},
        }
    )


@dataclass(frozen=True)
class ResponseOutput:
    """What one finished response said and asked for, read from its ``response.done``."""

    status: str
    texts: tuple[str, ...]
    calls: tuple[tuple[str, str, str], ...]  # (call_id, name, arguments JSON)
    usage: Mapping[str, Any]


def response_output(response: Mapping[str, Any]) -> ResponseOutput:
    """The messages (text, or an audio message's transcript) and function calls of a
    ``response.done``'s response object, in output order."""
    texts: list[str] = []
    calls: list[tuple[str, str, str]] = []
    output = response.get("output")
    for item in output if isinstance(output, list) else []:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call":
            calls.append(
                (
                    str(item.get("call_id") or ""),
                    str(item.get("name") or ""),
                    str(item.get("arguments") or ""),
                )
            )
        elif item.get("type") == "message":
            content = item.get("content")
            parts = [
                str(part.get("text") or part.get("transcript") or "")
                for part in (content if isinstance(content, list) else [])
                if isinstance(part, dict)
            ]
            if text := " ".join(part for part in parts if part).strip():
                texts.append(text)
    usage = response.get("usage")
    return ResponseOutput(
        status=str(response.get("status") or ""),
        texts=tuple(texts),
        calls=tuple(calls),
        usage=usage if isinstance(usage, dict) else {},
    )


def greeting_instructions(greeting: str) -> str:
    return f"Start the call now. Greet the caller with exactly these words: {greeting}"


def json_object(text: str) -> dict[str, Any]:
    """Parse function-call arguments; ValueError unless they are a JSON object."""
    value = json.loads(text or "{}")
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


# -- server events ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionUpdated:
    """The session as the service will run it; ``problems``: what would stop audio passing."""

    problems: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ServerError:
    code: str
    message: str
    param: str


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    item_id: str
    audio_start_ms: int | None


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    item_id: str
    audio_end_ms: int | None


@dataclass(frozen=True, slots=True)
class AudioCommitted:
    item_id: str


@dataclass(frozen=True, slots=True)
class ItemAdded:
    """``conversation.item.added``: ``role`` is the item's (``user``, ``assistant``...) or ""."""

    item_id: str
    role: str


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    response_id: str
    metadata: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class OutputItemAdded:
    """``item_type``: ``message`` (speech) or ``function_call``."""

    response_id: str
    item_id: str
    item_type: str


@dataclass(frozen=True, slots=True)
class AudioDelta:
    response_id: str
    item_id: str
    delta: str  # base64 pcmu, forwarded to Twilio as is


@dataclass(frozen=True, slots=True)
class AudioDone:
    item_id: str


@dataclass(frozen=True, slots=True)
class TranscriptDelta:
    item_id: str
    delta: str


@dataclass(frozen=True, slots=True)
class TranscriptDone:
    item_id: str
    transcript: str


@dataclass(frozen=True, slots=True)
class ResponseDone:
    response_id: str
    output_item_ids: tuple[str, ...]
    usage: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class FunctionCall:
    """``response.function_call_arguments.done``: the model asks for a tool."""

    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class IdleTimeout:
    """``input_audio_buffer.timeout_triggered``: the service is prompting a silent caller."""


@dataclass(frozen=True, slots=True)
class TranscriptionCompleted:
    item_id: str
    transcript: str
    usage: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class TranscriptionFailed:
    item_id: str
    message: str


@dataclass(frozen=True, slots=True)
class Unknown:
    """An event the bridge does not act on (there are many: rate limits, content parts...)."""

    type: str


@dataclass(frozen=True, slots=True)
class Malformed:
    """Not an event: not JSON, not an object, no type, or a handled event missing a field."""

    type: str
    reason: str


ServerEvent = (
    AudioDelta
    | SessionUpdated
    | ServerError
    | SpeechStarted
    | SpeechStopped
    | AudioCommitted
    | ItemAdded
    | ResponseCreated
    | OutputItemAdded
    | AudioDone
    | TranscriptDelta
    | TranscriptDone
    | ResponseDone
    | FunctionCall
    | IdleTimeout
    | TranscriptionCompleted
    | TranscriptionFailed
    | Unknown
    | Malformed
)


class _MissingField(Exception):
    pass


def _text(data: Mapping[str, Any], key: str) -> str:
    """An optional string field: "" when absent or null."""
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _MissingField(f"{key} is not a string")
    return value


def _required(data: Mapping[str, Any], key: str) -> str:
    value = _text(data, key)
    if not value:
        raise _MissingField(f"no {key}")
    return value


def _object(data: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = data.get(key)
    return value if isinstance(value, dict) else {}


def _int(data: Mapping[str, Any], key: str) -> int | None:
    value = data.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _audio_delta(event: Mapping[str, Any]) -> AudioDelta:
    # Most of the traffic (bench: ~1 us per delta to parse): the well-formed case first,
    # with no helper calls; anything else gets the helpers' exact reason.
    item_id, delta, response_id = event.get("item_id"), event.get("delta"), event.get("response_id")
    if type(item_id) is str and item_id and type(delta) is str and delta and type(response_id) is str:
        return AudioDelta(response_id, item_id, delta)
    return AudioDelta(_text(event, "response_id"), _required(event, "item_id"), _required(event, "delta"))


def _session_updated(event: Mapping[str, Any]) -> SessionUpdated:
    return SessionUpdated(tuple(session_problems(event.get("session"))))


def _error(event: Mapping[str, Any]) -> ServerError:
    error = _object(event, "error")
    return ServerError(
        code=str(error.get("code") or ""),
        message=str(error.get("message") or "")[:500],
        param=str(error.get("param") or ""),
    )


def _response_created(event: Mapping[str, Any]) -> ResponseCreated:
    response = _object(event, "response")
    metadata = _object(response, "metadata")
    return ResponseCreated(
        _text(response, "id"), {str(k): str(v) for k, v in metadata.items() if isinstance(v, str)}
    )


def _output_item_added(event: Mapping[str, Any]) -> OutputItemAdded:
    item = _object(event, "item")
    return OutputItemAdded(_text(event, "response_id"), _required(item, "id"), _text(item, "type"))


def _item_added(event: Mapping[str, Any]) -> ItemAdded:
    item = _object(event, "item")
    return ItemAdded(_required(item, "id"), _text(item, "role"))


def _response_done(event: Mapping[str, Any]) -> ResponseDone:
    response = _object(event, "response")
    output = response.get("output")
    ids = tuple(
        str(item["id"])
        for item in (output if isinstance(output, list) else [])
        if isinstance(item, dict) and item.get("id")
    )
    return ResponseDone(_text(response, "id"), ids, _object(response, "usage"))


def _function_call(event: Mapping[str, Any]) -> FunctionCall:
    return FunctionCall(
        response_id=_text(event, "response_id"),
        item_id=_text(event, "item_id"),
        call_id=_required(event, "call_id"),
        name=_text(event, "name"),
        arguments=_text(event, "arguments"),
    )


_PARSERS: dict[str, Callable[[Mapping[str, Any]], ServerEvent]] = {
    # The hot one first (dict order is irrelevant to lookup; listed for the reader).
    "response.output_audio.delta": _audio_delta,
    "session.updated": _session_updated,
    "error": _error,
    "input_audio_buffer.speech_started": lambda e: SpeechStarted(
        _text(e, "item_id"), _int(e, "audio_start_ms")
    ),
    "input_audio_buffer.speech_stopped": lambda e: SpeechStopped(
        _text(e, "item_id"), _int(e, "audio_end_ms")
    ),
    "input_audio_buffer.committed": lambda e: AudioCommitted(_text(e, "item_id")),
    "input_audio_buffer.timeout_triggered": lambda e: IdleTimeout(),
    "conversation.item.added": _item_added,
    "response.created": _response_created,
    "response.output_item.added": _output_item_added,
    "response.output_audio.done": lambda e: AudioDone(_text(e, "item_id")),
    "response.output_audio_transcript.delta": lambda e: TranscriptDelta(
        _text(e, "item_id"), _text(e, "delta")
    ),
    "response.output_audio_transcript.done": lambda e: TranscriptDone(
        _text(e, "item_id"), _text(e, "transcript")
    ),
    "response.done": _response_done,
    "response.function_call_arguments.done": _function_call,
    "conversation.item.input_audio_transcription.completed": lambda e: TranscriptionCompleted(
        _text(e, "item_id"), _text(e, "transcript").strip(), _object(e, "usage")
    ),
    "conversation.item.input_audio_transcription.failed": lambda e: TranscriptionFailed(
        _text(e, "item_id"), str(_object(e, "error").get("message") or "")
    ),
}

# The server events the bridge acts on (tests check each is a GA event of the official SDK).
HANDLED_EVENT_TYPES = frozenset(_PARSERS)


def server_event(data: object) -> ServerEvent:
    """A decoded JSON value as the event the bridge handles."""
    if not isinstance(data, dict):
        return Malformed("", "not a JSON object")
    kind = data.get("type")
    if not isinstance(kind, str):
        return Malformed("", "no event type")
    parse = _PARSERS.get(kind)
    if parse is None:
        return Unknown(kind)
    try:
        return parse(data)
    except _MissingField as exc:
        return Malformed(kind, str(exc))


def parse_server_event(message: str | bytes) -> ServerEvent:
    """One WebSocket message from the service as a typed event; never raises."""
    try:
        data = json.loads(message)
    except ValueError:  # UnicodeDecodeError included
        return Malformed("", "not JSON")
    return server_event(data)
