"""OpenAI Realtime API, GA interface: session configuration and client events, sans-IO.

Targets the GA shape (``session.type: "realtime"``, ``audio/pcmu``, nested ``audio``
config, no ``OpenAI-Beta`` header). Server events are handled by ``calls.bridge``.
"""

from __future__ import annotations

import json
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


def session_update(agent: AgentConfig) -> dict[str, Any]:
    audio_input: dict[str, Any] = {
        "format": AUDIO_FORMAT,
        "turn_detection": _turn_detection(agent),
        "noise_reduction": {"type": agent.noise_reduction} if agent.noise_reduction else None,
        "transcription": None,
    }
    if agent.transcription_model:
        transcription = {"model": agent.transcription_model}
        if agent.transcription_language:
            transcription["language"] = agent.transcription_language
        audio_input["transcription"] = transcription
    return {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "model": agent.model,
            "output_modalities": ["audio"],
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
    audio = session.get("audio") if isinstance(session.get("audio"), dict) else {}
    for direction in ("input", "output"):
        block = audio.get(direction) if isinstance(audio.get(direction), dict) else {}
        fmt = block.get("format") if isinstance(block.get("format"), dict) else {}
        if fmt.get("type") != AUDIO_FORMAT["type"]:
            problems.append(f"{direction} audio format is {fmt.get('type')!r}, expected 'audio/pcmu'")
    return problems


def dumps(event: dict[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"))


def audio_append(payload: str) -> str:
    """``input_audio_buffer.append`` with Twilio's base64 payload as is (pcmu both sides)."""
    return f'{{"type":"input_audio_buffer.append","audio":"{payload}"}}'


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


def greeting_instructions(greeting: str) -> str:
    return f"Start the call now. Greet the caller with exactly these words: {greeting}"


def json_object(text: str) -> dict[str, Any]:
    """Parse function-call arguments; ValueError unless they are a JSON object."""
    value = json.loads(text or "{}")
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value
