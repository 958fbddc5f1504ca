"""TwiML documents, built with the twilio library so they are always well formed."""

from __future__ import annotations

from twilio.twiml.voice_response import Connect, VoiceResponse

from calls.signatures import public_url, stream_url

# Names of the <Parameter>s the media socket reads back from ``start.customParameters``.
PARAM_CALL_SID = "call_sid"
PARAM_TOKEN = "token"


def connect_stream(*, call_sid: str, token: str) -> str:
    """``<Connect><Stream>`` to our media socket. The Stream URL may not carry a query
    string, so the call's identity and its single-use token travel as parameters."""
    response = VoiceResponse()
    # When the stream ends without the call being hung up (our socket closed on an error),
    # Twilio asks ``action`` what next: an apology, so the caller is never left in silence.
    connect = Connect(action=public_url("/stream-ended"), method="POST")
    stream = connect.stream(
        url=stream_url(),
        status_callback=public_url("/stream-status"),
        status_callback_method="POST",
    )
    stream.parameter(name=PARAM_CALL_SID, value=call_sid)
    stream.parameter(name=PARAM_TOKEN, value=token)
    response.append(connect)
    return str(response)


def say_and_hang_up(message: str) -> str:
    response = VoiceResponse()
    response.say(message)
    response.hangup()
    return str(response)


def dial(number: str, *, caller_id: str = "") -> str:
    """Transfer: the live call leaves ``<Connect>`` and dials a human. ``answerOnBridge``
    keeps the caller hearing ringing until the human picks up."""
    response = VoiceResponse()
    options: dict[str, bool | str] = {"answer_on_bridge": True}
    if caller_id.startswith("+"):
        options["caller_id"] = caller_id
    response.dial(number, **options)
    return str(response)


def hang_up() -> str:
    response = VoiceResponse()
    response.hangup()
    return str(response)
