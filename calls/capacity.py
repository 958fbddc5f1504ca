"""Which calls hold a line now, whichever worker process bridges them: the count behind
``MAX_CONCURRENT_CALLS``, and the age past which an open call cannot be live any more."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.db.models import Max, Q
from django.utils import timezone

from calls.models import Agent, Call

# A live call is at most its agent's max_call_seconds old (plus the 10 s the bridge allows
# past it), counted from a stream that connects within STREAM_TOKEN_TTL_SECONDS of the
# webhook, and an outbound call rings for at most a minute first. This covers all of it.
STALE_MARGIN = timedelta(minutes=5)


def stale_cutoff(now: datetime | None = None) -> datetime:
    """Open calls created before this cannot be live any more: their process died."""
    now = now or timezone.now()
    longest = Agent.objects.aggregate(longest=Max("max_call_seconds"))["longest"]
    if longest is None:
        longest = Agent._meta.get_field("max_call_seconds").default
    return now - timedelta(seconds=longest) - STALE_MARGIN


def calls_in_progress(*, exclude_call_sid: str = "", now: datetime | None = None) -> int:
    """Calls holding a line now, whichever worker process bridges them: the stream started,
    or the webhook admitted the call and its token is still unspent (so a burst of calls
    cannot all slip in before their streams connect). Rows a crash left open stop counting
    at ``stale_cutoff``."""
    now = now or timezone.now()
    admitted = Q(started_at__isnull=False) | Q(
        stream_token_used_at__isnull=True, stream_token_expires_at__gt=now
    )
    open_calls = Call.objects.filter(admitted, ended_at__isnull=True, created_at__gte=stale_cutoff(now))
    return open_calls.exclude(call_sid=exclude_call_sid).count()
