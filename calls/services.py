"""Database services for calls: small named functions the views and the bridge call.

Nothing here runs in the per-frame audio path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import secrets
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path

from django.conf import settings
from django.core.files import File
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from calls import analysis_jobs, capacity, model_endpoint, pricing, tools, twilio_rest, twiml
from calls.bridge.actions import CallSummary, ToolCallRecord, TurnRecord
from calls.models import (
    TERMINAL_STATUSES,
    Agent,
    Call,
    CallDirection,
    CallStatus,
    EndedReason,
    MachinePolicy,
    ToolCall,
    Turn,
)
from calls.realtime import AgentConfig
from calls.signatures import public_url

logger = logging.getLogger(__name__)

_STATUS_REASONS = {
    CallStatus.BUSY: EndedReason.BUSY,
    CallStatus.NO_ANSWER: EndedReason.NO_ANSWER,
    CallStatus.FAILED: EndedReason.FAILED,
    CallStatus.CANCELED: EndedReason.CANCELED,
}


class WebhookError(ValueError):
    """A webhook request we cannot act on; the message is safe to show to the sender."""


@dataclass(frozen=True)
class IncomingCall:
    call: Call
    token: str | None  # None when no agent can take the call
    busy: bool = False  # refused: MAX_CONCURRENT_CALLS calls are in progress


def agent_for_number(to_number: str) -> Agent | None:
    """The enabled agent serving ``to_number``, else the enabled default agent."""
    agents = Agent.objects.filter(enabled=True).filter(Q(phone_number=to_number) | Q(phone_number=""))
    # The number's own agent sorts before the default one ("" < "+1...").
    return agents.order_by("-phone_number", "pk").first()


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _parse_direction(value: str) -> CallDirection:
    return CallDirection(value) if value in CallDirection.values else CallDirection.INBOUND


def _parse_status(value: str | None) -> CallStatus | None:
    return CallStatus(value) if value in CallStatus.values else None


def call_start_from_webhook(*, params: dict[str, str]) -> IncomingCall:
    """Create (or find, for Twilio's retries) the call and mint its stream token."""
    missing = [name for name in ("CallSid", "AccountSid", "From", "To") if not params.get(name)]
    if missing:
        raise WebhookError(f"Missing required parameter(s): {', '.join(missing)}.")
    call_sid = params["CallSid"]
    existing = Call.objects.select_related("agent").filter(call_sid=call_sid).first()
    # An outbound call was created with its agent; an inbound one is answered by number.
    agent = existing.agent if existing is not None and existing.agent else agent_for_number(params["To"])
    defaults = {
        "account_sid": params["AccountSid"],
        "from_number": params["From"][:64],
        "to_number": params["To"][:64],
        "direction": _parse_direction(params.get("Direction", "")),
        "status": _parse_status(params.get("CallStatus")) or CallStatus.RINGING,
        "agent": agent,
        "model": model_endpoint.recorded_model(agent.effective_model) if agent else "",
        "voice": agent.voice if agent else "",
    }
    try:
        with transaction.atomic():
            call, created = Call.objects.get_or_create(call_sid=call_sid, defaults=defaults)
    except IntegrityError:
        # Two concurrent retries of the same webhook: the other one created it.
        call, created = Call.objects.get(call_sid=call_sid), False
    if not created:
        logger.info("Webhook repeated for call %s; reusing its row", call_sid)
    if agent is None:
        call.ended_reason = EndedReason.NO_AGENT
        call.error = f"No enabled agent answers {params['To']} and there is no default agent."
        call.save(update_fields=["ended_reason", "error"])
        logger.error("call %s: %s", call_sid, call.error)
        return IncomingCall(call=call, token=None)
    if call_refuse_if_busy(call):
        return IncomingCall(call=call, token=None, busy=True)
    return IncomingCall(call=call, token=stream_token_issue(call))


def call_refuse_if_busy(call: Call) -> bool:
    """At MAX_CONCURRENT_CALLS calls in progress, record ``call`` as refused (ended reason
    Busy) and return True. Simultaneous webhooks may overshoot the cap by a call or two:
    the count is not locked, to keep the webhook fast."""
    if call.ended_reason == EndedReason.BUSY:
        return True  # Twilio retried the webhook: same answer
    limit = settings.MAX_CONCURRENT_CALLS
    if not limit:
        return False
    in_progress = capacity.calls_in_progress(exclude_call_sid=call.call_sid)
    if in_progress < limit:
        return False
    call.ended_reason = EndedReason.BUSY
    call.ended_at = timezone.now()
    call.error = f"Refused: {in_progress} calls in progress (MAX_CONCURRENT_CALLS={limit})."
    call.save(update_fields=["ended_reason", "ended_at", "error"])
    logger.warning("call %s: %s", call.call_sid, call.error)
    return True


def stream_token_issue(call: Call) -> str:
    """A fresh single-use token; a repeated webhook replaces the one it may never have seen."""
    token = secrets.token_urlsafe(24)
    call.stream_token_hash = _hash_token(token)
    call.stream_token_expires_at = timezone.now() + timedelta(seconds=settings.STREAM_TOKEN_TTL_SECONDS)
    call.stream_token_used_at = None
    call.save(update_fields=["stream_token_hash", "stream_token_expires_at", "stream_token_used_at"])
    return token


def stream_token_redeem(*, call_sid: str, token: str) -> Call | None:
    """Spend the token bound to ``call_sid``; None if unknown, expired or already spent.

    One conditional UPDATE, so two sockets racing with the same token cannot both win,
    whichever worker process they land on.
    """
    if not call_sid or not token:
        return None
    now = timezone.now()
    spent = Call.objects.filter(
        call_sid=call_sid,
        stream_token_hash=_hash_token(token),
        stream_token_used_at__isnull=True,
        stream_token_expires_at__gt=now,
    ).update(stream_token_used_at=now)
    if spent != 1:
        return None
    return Call.objects.select_related("agent").get(call_sid=call_sid)


def _parse_timestamp(value: str) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None


def _parse_int(value: str) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def call_status_apply(*, params: dict[str, str]) -> Call | None:
    """Apply a Twilio status callback. The status follows the highest SequenceNumber seen;
    facts from late callbacks (answer time, duration) are still kept."""
    call_sid = params.get("CallSid", "")
    status = _parse_status(params.get("CallStatus"))
    if not call_sid or status is None:
        raise WebhookError("CallSid and a valid CallStatus are required.")
    sequence = _parse_int(params.get("SequenceNumber", ""))
    at = _parse_timestamp(params.get("Timestamp", "")) or timezone.now()
    with transaction.atomic():
        call = Call.objects.select_for_update().filter(call_sid=call_sid).first()
        if call is None:
            logger.info("Status callback for unknown call %s ignored", call_sid)
            return None
        newest = call.status_sequence is None or (sequence is not None and sequence > call.status_sequence)
        # Twilio reports "completed" for a call it connected, though our side failed it.
        kept_failed = call.status == CallStatus.FAILED and status == CallStatus.COMPLETED
        if newest and not kept_failed:
            call.status = status
            if sequence is not None:
                call.status_sequence = sequence
        if status == CallStatus.IN_PROGRESS and call.answered_at is None:
            call.answered_at = at
        if status in TERMINAL_STATUSES:
            call.ended_at = call.ended_at or at
            duration = _parse_int(params.get("CallDuration", ""))
            if duration is not None:
                call.duration_seconds = duration
            if not call.ended_reason:
                call.ended_reason = _STATUS_REASONS.get(
                    status,
                    EndedReason.CALLER_HUNG_UP if call.stream_sid else EndedReason.NO_STREAM,
                )
        call.save()
    return call


def call_stream_event_apply(*, params: dict[str, str]) -> Call | None:
    """Record ``<Stream statusCallback>`` events; ``stream-error`` carries Twilio's reason
    (for example a failed WebSocket handshake), which is otherwise only in Twilio's console."""
    call_sid = params.get("CallSid", "")
    event = params.get("StreamEvent", "")
    call = Call.objects.filter(call_sid=call_sid).first()
    if call is None:
        return None
    if event == "stream-error":
        call.error = f"Twilio stream error: {params.get('StreamError', 'unknown')}"[:2000]
        call.save(update_fields=["error"])
        logger.warning("call %s: %s", call_sid, call.error)
    elif event == "stream-started" and not call.stream_sid:
        call.stream_sid = params.get("StreamSid", "")[:64]
        call.save(update_fields=["stream_sid"])
    return call


def agent_config(call: Call) -> AgentConfig:
    """The call's agent as the bridge sees it; the default agent if it was deleted since."""
    agent = call.agent or agent_for_number(call.to_number)
    if agent is None:
        raise WebhookError("no agent for this call")
    return agent_settings(agent)


def agent_settings(agent: Agent) -> AgentConfig:
    """An agent as a session sees it: the phone call's, and an agent test's."""
    return AgentConfig(
        instructions=agent.instructions,
        model=agent.effective_model,
        voice=agent.voice,
        greeting=agent.greeting,
        transcription_model=agent.transcription_model,
        transcription_language=agent.transcription_language,
        turn_detection=agent.turn_detection,
        vad_threshold=agent.vad_threshold,
        vad_prefix_padding_ms=agent.vad_prefix_padding_ms,
        vad_silence_ms=agent.vad_silence_ms,
        vad_eagerness=agent.vad_eagerness,
        noise_reduction=agent.noise_reduction,
        max_call_seconds=agent.max_call_seconds,
        tools=tools.definitions(list(agent.tools or []), transfer_destinations=agent.transfer_destinations),
        transfer_destinations=agent.transfer_destinations,
        idle_timeout_seconds=agent.idle_timeout_seconds if agent.turn_detection == "server_vad" else 0,
        max_silence_prompts=agent.max_silence_prompts,
        session_max_seconds=settings.OPENAI_SESSION_MAX_SECONDS,
        record=agent.record_calls,
    )


def call_stream_started(*, call: Call, stream_sid: str) -> AgentConfig:
    """The media socket authenticated: record the stream and hand the bridge its agent."""
    call.stream_sid = stream_sid
    call.started_at = timezone.now()
    fields = ["stream_sid", "started_at"]
    if call.status not in TERMINAL_STATUSES:
        call.status = CallStatus.IN_PROGRESS
        fields.append("status")
    if call.answered_at is None:
        call.answered_at = call.started_at
        fields.append("answered_at")
    call.save(update_fields=fields)
    return agent_config(call)


# Every TurnRecord field is a Turn column of the same name; (call, position) is the key.
TURN_FIELDS = [f.name for f in fields(TurnRecord) if f.name != "position"]


def turn_record(*, call_sid: str, turn: TurnRecord) -> None:
    """Store one completed utterance; idempotent per conversation position (a turn is stored
    again when it changes, e.g. cut by a barge-in). One upsert statement: no lookup first."""
    call_id = Call.objects.filter(call_sid=call_sid).values_list("pk", flat=True).first()
    if call_id is None:
        return
    Turn.objects.bulk_create(
        [Turn(call_id=call_id, **asdict(turn))],
        update_conflicts=True,
        unique_fields=["call", "position"],
        update_fields=TURN_FIELDS,
    )


def tool_call_record(*, call_sid: str, record: ToolCallRecord) -> None:
    call_id = Call.objects.filter(call_sid=call_sid).values_list("pk", flat=True).first()
    if call_id is None:
        return
    try:
        arguments = json.loads(record.arguments or "{}")
    except ValueError:
        arguments = {"raw": record.arguments[:2000]}
    ToolCall.objects.create(
        call_id=call_id,
        position=record.position,
        name=record.name[:64],
        openai_call_id=record.call_id[:64],
        arguments=arguments,
        result=record.result,
        error=record.error[:2000],
        duration_ms=record.duration_ms,
    )


def call_record_error(*, call_sid: str, message: str) -> None:
    Call.objects.filter(call_sid=call_sid).update(error=message[:2000])


def percentile(values: list[int] | tuple[int, ...], fraction: float) -> int | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]


def call_finalize(*, call_sid: str, summary: CallSummary) -> None:
    """Close the record of a call however it ended; what Twilio reported already is kept."""
    with transaction.atomic():
        call = (
            Call.objects.select_for_update(of=("self",))
            .select_related("agent")
            .filter(call_sid=call_sid)
            .first()
        )
        if call is None:
            return
        now = timezone.now()
        call.ended_at = call.ended_at or now
        if not call.ended_reason:
            call.ended_reason = summary.reason
        if summary.error:
            call.error = summary.error[:2000]
        if call.duration_seconds is None:
            began = call.answered_at or call.started_at or call.created_at
            call.duration_seconds = max(0, int((call.ended_at - began).total_seconds()))
        reported = call.status in TERMINAL_STATUSES - {CallStatus.COMPLETED}  # busy, no-answer...
        if call.ended_reason == EndedReason.ERROR and not reported:
            # Ended on an error of ours or OpenAI's (the caller heard the apology): failed,
            # even if Twilio, which connected the call, already reported it completed.
            call.status = CallStatus.FAILED
        elif call.status not in TERMINAL_STATUSES:
            call.status = CallStatus.COMPLETED
        if summary.usage:
            call.usage = summary.usage
            transcription_model = call.agent.transcription_model if call.agent else ""
            call.cost_usd = pricing.estimate_cost(call.model, summary.usage, transcription_model)
        if summary.transferred_to:
            call.transferred_to = summary.transferred_to[:64]
        call.openai_reconnects = summary.reconnects
        call.interruptions = summary.interruptions
        call.first_audio_ms = summary.first_audio_ms
        call.latency_p50_ms = percentile(summary.latencies_ms, 0.5)
        call.latency_p95_ms = percentile(summary.latencies_ms, 0.95)
        call.save()
        # Queued when this commits; run by the task worker, never in the media path.
        analysis_jobs.request_for_ended_call(call)
    logger.info(
        "call %s: ended (%s)%s", call_sid, call.ended_reason, f": {summary.error}" if summary.error else ""
    )


_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
MACHINE_ANSWERS = frozenset(
    {"machine_start", "machine_end_beep", "machine_end_silence", "machine_end_other", "fax"}
)


def call_start_web(*, call_sid: str, username: str, agent_id: str) -> Call:
    """A call from the staff web phone to the agent the page chose. ``call_sid`` is minted by
    the server, never taken from the browser. ValueError (a message fit for the page) when
    the agent cannot take it."""
    valid_id = agent_id.isascii() and agent_id.isdigit() and len(agent_id) <= 18  # fits a bigint
    agent = Agent.objects.filter(pk=int(agent_id), enabled=True).first() if valid_id else None
    if agent is None:
        raise ValueError("This agent does not exist or is disabled.")
    limit = settings.MAX_CONCURRENT_CALLS
    if limit and capacity.calls_in_progress() >= limit:
        raise ValueError(f"All {limit} lines are busy (MAX_CONCURRENT_CALLS); try again later.")
    call = Call.objects.create(
        call_sid=call_sid,
        from_number=username[:64],
        to_number=(agent.phone_number or agent.name)[:64],
        direction=CallDirection.WEB,
        agent=agent,
        model=model_endpoint.recorded_model(agent.effective_model),
        voice=agent.voice,
    )
    logger.info("call %s: web phone call by %s to agent %s", call_sid, username, agent.name)
    return call


def call_place(*, to: str, agent: Agent) -> Call:
    """Dial ``to`` through Twilio's REST API; the callee's webhook and stream then use the
    same bridge as inbound calls, answered by ``agent``."""
    if not _E164.match(to):
        raise ValueError(f"{to!r} is not an E.164 number such as +15551234567")
    if not agent.phone_number:
        raise ValueError(f"agent {agent.name!r} has no phone number to call from")
    limit = settings.MAX_CONCURRENT_CALLS
    if limit and capacity.calls_in_progress() >= limit:
        # The callee would only hear the busy message: do not ring them.
        raise ValueError(f"all {limit} lines are busy (MAX_CONCURRENT_CALLS); try again later")
    policy = agent.machine_policy
    call_sid = twilio_rest.call_create(
        to=to,
        from_=agent.phone_number,
        url=public_url("/incoming-call"),
        status_callback=public_url("/call-status"),
        machine_detection=MACHINE_DETECTION_MODES.get(policy, False),
        amd_status_callback=public_url("/amd-status") if policy else None,
        time_limit=agent.max_call_seconds + 60,
    )
    call, _ = Call.objects.update_or_create(
        call_sid=call_sid,
        defaults={
            "account_sid": settings.TWILIO_ACCOUNT_SID,
            "from_number": agent.phone_number,
            "to_number": to,
            "direction": CallDirection.OUTBOUND_API,
            "agent": agent,
            "model": model_endpoint.recorded_model(agent.effective_model),
            "voice": agent.voice,
        },
    )
    logger.info("call %s: placed to %s for agent %s", call_sid, to, agent.name)
    return call


# Leaving a message needs the beep (message end); hanging up only needs "is it a machine".
MACHINE_DETECTION_MODES: dict[str, twilio_rest.MachineDetection] = {
    MachinePolicy.HANG_UP: "Enable",
    MachinePolicy.LEAVE_MESSAGE: "DetectMessageEnd",
}


def call_answered_by(*, params: dict[str, str]) -> Call | None:
    """Asynchronous answering-machine detection result: act on the agent's policy."""
    call = Call.objects.select_related("agent").filter(call_sid=params.get("CallSid", "")).first()
    if call is None:
        return None
    answered_by = params.get("AnsweredBy", "")[:32]
    call.answered_by = answered_by
    call.save(update_fields=["answered_by"])
    policy = call.agent.machine_policy if call.agent else ""
    if answered_by not in MACHINE_ANSWERS or not policy:
        return call
    if policy == MachinePolicy.LEAVE_MESSAGE and call.agent and call.agent.voicemail_message:
        twilio_rest.call_update_twiml(call.call_sid, twiml.say_and_hang_up(call.agent.voicemail_message))
    else:
        twilio_rest.call_complete(call.call_sid)
    Call.objects.filter(pk=call.pk).update(ended_reason=EndedReason.MACHINE)
    logger.info("call %s: answered by %s; %s", call.call_sid, answered_by, policy)
    return call


def call_apology(*, call_sid: str) -> str:
    """What Twilio should say when the stream ended early: the agent's apology if the call
    ended on an error (or is still open: the socket died under it), else nothing."""
    call = Call.objects.select_related("agent").filter(call_sid=call_sid).first()
    if call is None:
        return ""
    if call.ended_at is not None and call.ended_reason not in (EndedReason.ERROR, EndedReason.SERVER_RESTART):
        return ""
    if call.agent is not None:
        return call.agent.unavailable_message
    return "Sorry, we cannot take your call right now. Please call again later. Goodbye."


def call_save_recording(*, call_sid: str, path: Path) -> None:
    """Store a finished recording through the default storage (local media, S3, ...)."""
    call = Call.objects.filter(call_sid=call_sid).first()
    if call is None:
        return
    with path.open("rb") as handle:
        call.recording.save(f"{call_sid}.wav", File(handle), save=False)
    Call.objects.filter(pk=call.pk).update(recording=call.recording.name)
