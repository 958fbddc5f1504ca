"""How benchmark audio identifies itself, shared by the driver and the fake OpenAI server.

Every 20 ms of audio (160 bytes of mu-law) starts with a small binary tag, so whoever
receives it can tell which frame it is without any side channel. The bridge forwards
payloads byte for byte (base64 untouched), so the tags survive the trip.

* Caller frames (Twilio ``media`` -> ``input_audio_buffer.append``): ``CALLER_TAG`` holds
  the benchmark call id, the frame's sequence number within the call and a speech flag
  that the fake's stand-in VAD reads. 9 bytes, i.e. exactly the first 12 base64 chars.
* Agent audio (``response.output_audio.delta`` -> Twilio ``media``): every 160-byte block
  starts with ``AGENT_TAG``: the fake's session index, the block's sequence number within
  that session and the response index. The bridge may split a delta anywhere; blocks are
  found again on a 160-byte grid of the caller's received stream.
"""

from __future__ import annotations

import base64
import math
import struct

FRAME_MS = 20
FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law
BLOCK_BYTES = FRAME_BYTES

CALLER_MAGIC = b"\xb1\x7e"
AGENT_MAGIC = b"\xa5\x5a"
CALLER_TAG = struct.Struct(">2sHIB")  # magic, call id, frame seq, speech flag
AGENT_TAG = struct.Struct(">2sHIH")  # magic, session index, block seq, response index
CALLER_TAG_B64 = 12  # base64 characters that encode CALLER_TAG exactly (9 bytes)


def _tone(nbytes: int, freq: float, amplitude: float) -> bytes:
    """A mu-law sine (speech stand-in). Bytes equal to a magic's first byte are avoided."""
    out = bytearray()
    for i in range(nbytes):
        sample = int(amplitude * math.sin(2 * math.pi * freq * i / 8000))
        sign = 0x80 if sample < 0 else 0
        magnitude = min(abs(sample), 32635) + 0x84
        exponent = magnitude.bit_length() - 8
        mantissa = (magnitude >> (exponent + 3)) & 0x0F
        byte = ~(sign | (exponent << 4) | mantissa) & 0xFF
        if byte in (CALLER_MAGIC[0], AGENT_MAGIC[0]):
            byte ^= 0x01
        out.append(byte)
    return bytes(out)


SILENCE_BODY = b"\xff" * (FRAME_BYTES - CALLER_TAG.size)
SPEECH_BODY = _tone(FRAME_BYTES - CALLER_TAG.size, 300.0, 9000.0)
AGENT_FILLER = _tone(BLOCK_BYTES - AGENT_TAG.size, 220.0, 6000.0)
# The caller tag is 9 bytes (a multiple of 3), so a frame's base64 is the tag's 12 characters
# followed by the body's own base64: a receiver can check the body without decoding it.
CALLER_BODY_B64 = {
    True: base64.b64encode(SPEECH_BODY).decode(),
    False: base64.b64encode(SILENCE_BODY).decode(),
}


def caller_frame(call_id: int, seq: int, speech: bool) -> bytes:
    tag = CALLER_TAG.pack(CALLER_MAGIC, call_id, seq, 1 if speech else 0)
    return tag + (SPEECH_BODY if speech else SILENCE_BODY)


def parse_caller_b64(audio: str) -> tuple[int, int, bool] | None:
    """(call id, seq, speech) from a base64 caller frame, decoding only its first 12 chars."""
    try:
        magic, call_id, seq, flag = CALLER_TAG.unpack(base64.b64decode(audio[:CALLER_TAG_B64]))
    except (ValueError, struct.error):
        return None
    if magic != CALLER_MAGIC:
        return None
    return call_id, seq, bool(flag)


def caller_body_intact(audio: str, speech: bool) -> bool:
    return audio[CALLER_TAG_B64:] == CALLER_BODY_B64[speech]


FRAME_B64 = 4 * math.ceil(FRAME_BYTES / 3)  # one frame's base64 length, padding included


def caller_frames_b64(audio: str) -> list[str]:
    """The 20 ms frames of one ``input_audio_buffer.append``, each as the base64 it had in
    its Twilio ``media`` message: the bridge may send several frames in one append."""
    if len(audio) <= FRAME_B64:
        return [audio]
    try:
        data = base64.b64decode(audio, validate=True)
    except ValueError:
        return [audio]
    return [base64.b64encode(data[i : i + FRAME_BYTES]).decode() for i in range(0, len(data), FRAME_BYTES)]


def agent_audio(session: int, first_seq: int, blocks: int, response: int) -> bytes:
    """``blocks`` consecutive tagged 20 ms blocks of agent audio."""
    pack = AGENT_TAG.pack
    return b"".join(
        pack(AGENT_MAGIC, session & 0xFFFF, first_seq + i, response & 0xFFFF) + AGENT_FILLER
        for i in range(blocks)
    )
