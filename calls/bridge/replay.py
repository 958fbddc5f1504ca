"""The conversation so far, for an OpenAI session that replaces a dropped one, sans-IO.

A new Realtime session knows nothing of the call. Before it answers, it is given every
turn in conversation order as ``conversation.item.create`` events: what the caller said,
what the agent said as far as the caller heard it, and each tool call with its output (as
real ``function_call`` / ``function_call_output`` items, so the model sees its own calls,
not a paraphrase). Audio cannot be replayed (the service keeps it per session), so turns
are text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from calls import realtime

# Items re-created in a new session carry this id prefix, so their echoes are not taken
# for new turns.
REPLAY_PREFIX = "replay_"

# A caller turn whose words are unknown: no transcription is configured, or the session
# dropped before the transcript arrived. Waiting would not help in the second case: the
# transcription belonged to the session that is gone, and no event of it will ever come.
# Saying that the caller spoke keeps the model from answering as if they had not.
UNKNOWN_WORDS = "[The caller spoke here; their words were not transcribed.]"
# The caller cut the agent off: the text before it is what they heard (rounded down to a
# whole word), the rest of the answer was never heard.
INTERRUPTED = "[interrupted by the caller: they heard only this much]"
# The session dropped while this answer was being generated: its audio so far was played.
CUT_OFF = "[cut off: the connection to the assistant dropped here]"


@dataclass(frozen=True, slots=True)
class Turn:
    """One turn as the bridge knows it when the session drops."""

    role: Literal["caller", "agent", "tool"]
    text: str = ""
    words_known: bool = True  # caller turns: False when the transcript never came
    interrupted: bool = False
    heard_ms: int | None = None
    audio_ms: int = 0  # agent turns: audio sent to the caller
    cut_off: bool = False
    call_id: str = ""
    tool_name: str = ""
    arguments: str = ""
    tool_output: str | None = None  # None: the tool was still running


def heard_text(text: str, *, heard_ms: int, audio_ms: int) -> str:
    """The words of ``text`` the caller heard, if they heard ``heard_ms`` of ``audio_ms``.

    Speech runs at a steady pace, so the share of characters follows the share of audio;
    the cut goes back to a word boundary so no word the caller did not finish is claimed.
    Measured against real voices this errs by a word or two either way, which is why the
    turn is also marked as interrupted."""
    if audio_ms <= 0 or heard_ms >= audio_ms:
        return text
    cut = len(text) * max(heard_ms, 0) // audio_ms
    if cut < len(text) and text[cut] != " ":
        cut = text.rfind(" ", 0, cut)
        cut = max(cut, 0)
    return text[:cut].rstrip()


def _message(role: str, text: str, item_id: str) -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "id": item_id, "content": [{"type": kind, "text": text}]}


def _agent_text(turn: Turn) -> str | None:
    text = turn.text
    if turn.interrupted:
        heard = heard_text(text, heard_ms=turn.heard_ms or 0, audio_ms=turn.audio_ms)
        return f"{heard} {INTERRUPTED}".strip()
    if turn.cut_off:
        return f"{text} {CUT_OFF}".strip()
    return text or None


def replay_items(turns: list[Turn], *, first_id: int) -> list[str]:
    """``conversation.item.create`` events (JSON text) re-creating ``turns`` in order; the
    item ids are ``replay_<first_id>``, ``replay_<first_id + 1>``..."""
    items: list[dict[str, Any]] = []

    def next_id() -> str:
        return f"{REPLAY_PREFIX}{first_id + len(items)}"

    for turn in turns:
        if turn.role == "caller":
            items.append(_message("user", turn.text if turn.words_known else UNKNOWN_WORDS, next_id()))
        elif turn.role == "agent":
            text = _agent_text(turn)
            if text is not None:
                items.append(_message("assistant", text, next_id()))
        elif turn.call_id and turn.tool_name:
            items.append(
                {
                    "type": "function_call",
                    "id": next_id(),
                    "call_id": turn.call_id,
                    "name": turn.tool_name,
                    "arguments": turn.arguments,
                }
            )
            if turn.tool_output is not None:
                items.append(
                    {
                        "type": "function_call_output",
                        "id": next_id(),
                        "call_id": turn.call_id,
                        "output": turn.tool_output,
                    }
                )
    return [realtime.dumps({"type": "conversation.item.create", "item": item}) for item in items]
