"""The OpenAI Realtime stand-in: the fake Realtime server run as a local service, with a script.

Why: to try the product with no OpenAI account and no network. The stand-in speaks the real
Realtime GA protocol (it is ``FakeRealtimeServer``), so our server and bridge run unchanged;
only the model is simulated. It does not understand the caller: its voice activity detection
hears when the caller speaks and stops, then it answers with the next scripted reply, and it
reports the scripted caller transcripts as what the caller said.

A script is JSON (``realtime_standin --print-script`` shows the built-in one)::

    {
      "replies": [
        "Hello! Thanks for calling. How can I help you today?",
        {"transcript": "We open at nine.", "audio": "nine.wav"},
        {"transcript": "Goodbye!", "function_call": {"name": "end_call", "arguments": {}}}
      ],
      "caller_transcripts": ["When do you open?", "Thanks, bye."]
    }

Replies are used in order, one per response (the first is the greeting when the agent has
one); after the last, every answer is "OK.". A reply is its text, or an object with
``transcript``, optional ``audio`` (a WAV file, relative to the script) and optional
``function_call``. Replies without audio are spoken with ``espeak-ng`` when it is installed
(``speech="auto"``), else rendered as deterministic tones.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from calls.fakes import wav
from calls.fakes.openai_realtime import FakeRealtimeServer, Reply, Script

Speech = Literal["auto", "espeak", "tones"]
SPEECH_CHOICES: tuple[Speech, ...] = ("auto", "espeak", "tones")
ESPEAK = "espeak-ng"
DEFAULT_PORT = 8765
LOCAL_API_KEY = "sk-standin-local"  # not a secret: the stand-in only listens on this machine

BUILTIN_SCRIPT: dict[str, Any] = {
    "replies": [
        "Hello! Thanks for calling. How can I help you today?",
        "Sure! We are open every day from nine in the morning until ten at night. "
        "Is there anything else I can help you with?",
        "You're welcome. Thanks for calling, and have a great day. Goodbye!",
    ],
    "caller_transcripts": ["What time are you open today?", "No, that's all. Thank you!"],
}
_REPLY_KEYS = frozenset({"transcript", "audio", "function_call"})
_SCRIPT_KEYS = frozenset({"replies", "caller_transcripts", "vad_threshold_rms"})


class ScriptError(ValueError):
    """A stand-in script that cannot be used; the message says what to fix."""


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


def use_espeak(speech: Speech) -> bool:
    """Whether replies are spoken with espeak-ng; refuses ``espeak`` when it is not installed."""
    if speech == "espeak" and not espeak_available():
        raise ScriptError(f"{ESPEAK} is not installed (apt-get install espeak-ng), use --speech tones")
    return speech == "espeak" or (speech == "auto" and espeak_available())


def text_to_speech(text: str, *, voice: str = "en") -> bytes:
    """``text`` spoken by espeak-ng, as 8 kHz mono mu-law."""
    try:
        result = subprocess.run(
            [ESPEAK, "--stdout", "-v", voice, text], capture_output=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise ScriptError(f"{ESPEAK} failed: {exc}") from exc
    return wav.wav_to_mulaw(result.stdout)


def script_from_data(data: Any, *, speech: Speech = "auto", base_dir: Path | None = None) -> Script:
    """Build the fake server's ``Script`` from the JSON shape documented above."""
    if not isinstance(data, dict):
        raise ScriptError("a script is a JSON object with a 'replies' list")
    if unknown := set(data) - _SCRIPT_KEYS:
        raise ScriptError(f"unknown script keys {sorted(unknown)}; expected {sorted(_SCRIPT_KEYS)}")
    replies = data.get("replies", [])
    callers = data.get("caller_transcripts", [])
    if not isinstance(replies, list):
        raise ScriptError("'replies' must be a list")
    if not isinstance(callers, list) or not all(isinstance(t, str) for t in callers):
        raise ScriptError("'caller_transcripts' must be a list of strings")
    speak = use_espeak(speech)
    script = Script(
        replies=[_reply(item, n, speak, base_dir or Path.cwd()) for n, item in enumerate(replies)],
        caller_transcripts=list(callers),
    )
    if "vad_threshold_rms" in data:
        threshold = data["vad_threshold_rms"]
        if not isinstance(threshold, int | float) or threshold < 0:
            raise ScriptError("'vad_threshold_rms' must be a number >= 0")
        script.vad_threshold_rms = float(threshold)
    return script


def _reply(item: Any, n: int, speak: bool, base_dir: Path) -> Reply:
    where = f"replies[{n}]"
    if isinstance(item, str):
        item = {"transcript": item}
    if not isinstance(item, dict):
        raise ScriptError(f"{where} must be a string or an object")
    if unknown := set(item) - _REPLY_KEYS:
        raise ScriptError(f"{where}: unknown keys {sorted(unknown)}; expected {sorted(_REPLY_KEYS)}")
    transcript = item.get("transcript", "")
    if not isinstance(transcript, str):
        raise ScriptError(f"{where}.transcript must be a string")
    audio: bytes | None = None
    if item.get("audio"):
        path = base_dir / str(item["audio"])
        try:
            audio = wav.wav_to_mulaw(path)
        except (OSError, wav.WavError) as exc:
            raise ScriptError(f"{where}.audio: cannot use {path}: {exc}") from exc
    elif speak and transcript:
        audio = text_to_speech(transcript)
    call = item.get("function_call")
    function_call = None
    if call is not None:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise ScriptError(f'{where}.function_call must be {{"name": ..., "arguments": {{...}}}}')
        arguments = call.get("arguments", {})
        if not isinstance(arguments, dict):
            raise ScriptError(f"{where}.function_call.arguments must be an object")
        function_call = (call["name"], arguments)
    return Reply(transcript=transcript, audio=audio, function_call=function_call)


def load_script(path: str | Path | None, *, speech: Speech = "auto") -> Script:
    """The script in a JSON file (audio paths relative to it), or the built-in one."""
    if path is None:
        return script_from_data(BUILTIN_SCRIPT, speech=speech)
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScriptError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ScriptError(f"{path} is not valid JSON: {exc}") from exc
    return script_from_data(data, speech=speech, base_dir=path.parent)


async def serve(
    script: Script,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    api_key: str = LOCAL_API_KEY,
    ready: Callable[[str], None] = lambda url: None,
) -> None:
    """Run the stand-in until cancelled; ``ready`` gets its ``OPENAI_REALTIME_URL`` once it listens."""
    server = FakeRealtimeServer(script, api_key=api_key, host=host, port=port)
    await server.start()
    try:
        ready(server.url)
        await server.serve_forever()
    finally:
        await server.stop()
