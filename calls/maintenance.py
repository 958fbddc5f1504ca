"""Keeping the call log honest and small: closing calls a dead process left open, storing
the recordings they left behind, and deleting old calls (retention)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.core.files.storage import Storage
from django.db import models, transaction
from django.db.models import QuerySet
from django.utils import timezone

from calls import analysis_jobs, services
from calls.audio import BYTES_PER_SECOND
from calls.capacity import stale_cutoff
from calls.models import TERMINAL_STATUSES, Call, CallStatus, EndedReason, ToolCall, Turn
from calls.recording import repair_wav

logger = logging.getLogger(__name__)

STALE_ERROR = "The server process handling this call stopped before the call ended."
PURGE_BATCH = 500

_AGE = re.compile(r"^\s*(\d+)\s*([dhms])\s*$")
_AGE_UNITS = {"d": "days", "h": "hours", "m": "minutes", "s": "seconds"}


def parse_age(value: str) -> timedelta:
    """``30d``, ``12h``, ``15m`` or ``90s`` as a timedelta; ValueError otherwise."""
    match = _AGE.match(value)
    if not match or int(match[1]) == 0:
        raise ValueError(f"{value!r} is not an age such as 30d, 12h, 15m or 90s")
    return timedelta(**{_AGE_UNITS[match[2]]: int(match[1])})


def calls_close_stale(
    *, older_than: timedelta | None = None, everything: bool = False, now: datetime | None = None
) -> list[str]:
    """End the calls a dead process left open, with reason "Server restarted"; their Call SIDs.

    By default only calls older than any call can last (``stale_cutoff``); ``older_than``
    picks another age; ``everything`` closes every open call, which is right only when no
    other process can be bridging one (a single server starting up).
    """
    now = now or timezone.now()
    stale = Call.objects.filter(ended_at__isnull=True)
    if not everything:
        stale = stale.filter(created_at__lt=now - older_than if older_than else stale_cutoff(now))
    closed = []
    with transaction.atomic():
        for call in stale.select_for_update().order_by("created_at"):
            call.ended_at = now
            # A reason set earlier (no agent, answering machine) is the better explanation.
            call.ended_reason = call.ended_reason or EndedReason.SERVER_RESTART
            call.error = call.error or STALE_ERROR
            if call.status not in TERMINAL_STATUSES:
                call.status = CallStatus.COMPLETED
            # duration_seconds stays unknown unless Twilio's status callback reports it.
            call.save(update_fields=["ended_at", "ended_reason", "error", "status"])
            analysis_jobs.request_for_ended_call(call)
            logger.warning(
                "call %s: closed; it was left open by a server process that stopped", call.call_sid
            )
            closed.append(call.call_sid)
    return closed


def recordings_recover(work_dir: Path | None = None) -> list[str]:
    """Store the recordings that calls left behind in ``RECORDING_WORK_DIR``: a process that
    died mid-call (or could not reach the storage backend at the end) leaves a partial WAV
    there. Only files of calls that have ended and have no recording yet are taken: a live
    call is still writing its file. Returns the Call SIDs whose recording was stored."""
    work_dir = work_dir or settings.RECORDING_WORK_DIR
    if not work_dir.is_dir():
        return []
    files = {path.stem: path for path in work_dir.glob("*.wav")}
    recovered = []
    ended = Call.objects.filter(call_sid__in=files, ended_at__isnull=False, recording="")
    for call_sid in ended.values_list("call_sid", flat=True):
        path = files[call_sid]
        try:
            seconds = repair_wav(path) / (BYTES_PER_SECOND * 4)
            services.call_save_recording(call_sid=call_sid, path=path)
            path.unlink()
        except OSError as exc:
            logger.error("call %s: could not recover its recording %s: %s", call_sid, path, exc)
            continue
        logger.warning("call %s: stored the recording it left behind (%.1f s)", call_sid, seconds)
        recovered.append(call_sid)
    return recovered


@dataclass(frozen=True)
class PurgeResult:
    calls: int
    turns: int
    tool_calls: int
    files: int


def _file_fields(model: type[models.Model]) -> list[models.FileField]:
    return [f for f in model._meta.concrete_fields if isinstance(f, models.FileField)]


def stored_files(queryset: QuerySet[models.Model]) -> list[tuple[Storage, str]]:
    """The files (storage, name) that rows of ``queryset`` reference in any FileField."""
    fields = _file_fields(queryset.model)
    if not fields:
        return []
    rows = queryset.values_list(*(f.attname for f in fields))
    return [(field.storage, name) for row in rows for field, name in zip(fields, row, strict=True) if name]


def _delete_files(files: list[tuple[Storage, str]]) -> None:
    for storage, name in files:
        try:
            storage.delete(name)
        except Exception as exc:  # any storage backend: one lost file must not stop the purge
            logger.warning("Could not delete the file %s: %s", name, exc)


def delete_with_files(queryset: QuerySet[models.Model]) -> tuple[dict[str, int], int]:
    """Delete the rows (and what cascades) and, once that is committed, the files they
    reference through the storage API. Returns the per-model counts and the file count."""
    files = stored_files(queryset)
    with transaction.atomic():
        _, per_model = queryset.delete()
        # Files go only if the rows did: a failed delete keeps both.
        transaction.on_commit(lambda: _delete_files(files))
    return per_model, len(files)


def calls_purge(*, older_than: timedelta, dry_run: bool = False, now: datetime | None = None) -> PurgeResult:
    """Delete calls created more than ``older_than`` ago, with their turns, tool calls and
    files. A call still in progress is kept, however small ``older_than`` is."""
    now = now or timezone.now()
    old = Call.objects.filter(created_at__lt=now - older_than).exclude(
        ended_at__isnull=True, created_at__gte=stale_cutoff(now)
    )
    if dry_run:
        return PurgeResult(
            calls=old.count(),
            turns=Turn.objects.filter(call__in=old).count(),
            tool_calls=ToolCall.objects.filter(call__in=old).count(),
            files=len(stored_files(old)),
        )
    totals = {"calls": 0, "turns": 0, "tool_calls": 0, "files": 0}
    labels = {Call: "calls", Turn: "turns", ToolCall: "tool_calls"}
    # In batches: one transaction per batch keeps locks short on a large log.
    while ids := list(old.order_by("pk").values_list("pk", flat=True)[:PURGE_BATCH]):
        per_model, files = delete_with_files(Call.objects.filter(pk__in=ids))
        for model, key in labels.items():
            totals[key] += per_model.get(model._meta.label, 0)
        totals["files"] += files
    if totals["calls"]:
        logger.info(
            "Purged %(calls)d calls, %(turns)d turns, %(tool_calls)d tool calls, %(files)d files", totals
        )
    return PurgeResult(**totals)
