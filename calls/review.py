"""What the admin shows to review a call: the latency chart, token usage, the CSV export and
the staff-only recording download. Pure functions of model rows; ``calls.admin`` wires them in."""

from __future__ import annotations

import csv
import re
from collections.abc import AsyncIterator, Callable, Iterable
from decimal import Decimal
from typing import IO, Any

from asgiref.sync import sync_to_async
from django.db.models import BigIntegerField, Count, QuerySet, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from calls.analysis import field_columns, plan_from_snapshot
from calls.models import AnalysisStatus, Call, CallAnalysis, Role, Turn

# --- latency chart -------------------------------------------------------------------------

# Around 800 ms a reply still feels immediate on the phone; past 1.5 s callers start talking again.
FAST_MS, SLOW_MS = 800, 1500
_BAR, _GAP, _LEFT, _TOP, _HEIGHT, _BOTTOM = 22, 8, 60, 8, 100, 16


# The stand-in answers the moment its VAD hears the caller stop: nothing to measure of a model.
STANDIN_LATENCY_HINT = (
    "Local stand-in, not the real model: it answers as soon as it hears you stop speaking, so its "
    "response latency is about 0 ms. Calls to OpenAI measure the model's real latency here."
)


def latency_class(ms: int) -> str:
    return "va-fast" if ms < FAST_MS else "va-fair" if ms < SLOW_MS else "va-slow"


def latency_chart(turns: Iterable[Turn], *, p50_ms: int | None = None) -> SafeString:
    """One bar per agent turn with a measured latency, as inline SVG (no script, no library)."""
    measured = [t for t in turns if t.role == Role.AGENT and t.latency_ms is not None]
    if not measured:
        return format_html('<p class="va-empty">{}</p>', "No response latency measured on this call.")
    top = max(1000, *(t.latency_ms or 0 for t in measured))
    top = -(-top // 500) * 500  # round up to half a second: readable gridlines

    def y(ms: int) -> float:
        return _TOP + _HEIGHT - _HEIGHT * min(ms, top) / top

    width = _LEFT + len(measured) * (_BAR + _GAP) + _GAP
    grid = format_html_join(
        "",
        '<line class="va-grid" x1="{}" x2="{}" y1="{}" y2="{}"/>'
        '<text class="va-axis" x="{}" y="{}" text-anchor="end">{} ms</text>',
        ((_LEFT, width, y(ms), y(ms), _LEFT - 4, y(ms) + 4, ms) for ms in (0, top // 2, top)),
    )
    bars = format_html_join(
        "",
        '<rect class="va-bar {}" x="{}" y="{}" width="{}" height="{}"><title>{}</title></rect>'
        '<text class="va-axis" x="{}" y="{}" text-anchor="middle">{}</text>',
        (
            (
                latency_class(t.latency_ms or 0),
                _LEFT + _GAP + i * (_BAR + _GAP),
                y(t.latency_ms or 0),
                _BAR,
                _TOP + _HEIGHT - y(t.latency_ms or 0),
                f"Agent turn {i + 1} at {format_offset(t.started_ms)}: {t.latency_ms} ms",
                _LEFT + _GAP + i * (_BAR + _GAP) + _BAR / 2,
                _TOP + _HEIGHT + 13,
                i + 1,
            )
            for i, t in enumerate(measured)
        ),
    )
    median = (
        format_html(
            '<line class="va-p50" x1="{}" x2="{}" y1="{}" y2="{}"><title>p50 {} ms</title></line>',
            _LEFT,
            width,
            y(p50_ms),
            y(p50_ms),
            p50_ms,
        )
        if p50_ms is not None
        else ""
    )
    return format_html(
        '<div class="va-chart"><svg role="img" aria-label="{}" width="{}" height="{}" viewBox="0 0 {} {}">'
        "{}{}{}</svg></div>",
        f"Response latency of {len(measured)} agent turns",
        width,
        _TOP + _HEIGHT + _BOTTOM,
        width,
        _TOP + _HEIGHT + _BOTTOM,
        grid,
        bars,
        median,
    )


def format_offset(ms: int | None) -> str:
    """``73450`` as ``1:13.4``: a turn's place in the call."""
    if ms is None:
        return ""
    seconds, millis = divmod(ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}:{seconds:02d}.{millis // 100}"


# --- usage and cost -----------------------------------------------------------------------


def _count(usage: dict[str, Any], *path: str) -> int:
    value: Any = usage
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def usage_rows(usage: dict[str, Any]) -> list[tuple[str, int, int, int]]:
    """Tokens by kind as ``(kind, input, cached input, output)``, from the summed ``response.done``
    usage: cached tokens are a part of the input tokens, not added to them."""
    rows = [
        (
            kind.capitalize(),
            _count(usage, "input_token_details", f"{kind}_tokens"),
            _count(usage, "input_token_details", "cached_tokens_details", f"{kind}_tokens"),
            _count(usage, "output_token_details", f"{kind}_tokens"),
        )
        for kind in ("text", "audio", "image")
    ]
    rows = [row for row in rows if row[0] != "Image" or any(row[1:])]
    rows.append(
        (
            "Total",
            _count(usage, "input_tokens"),
            _count(usage, "input_token_details", "cached_tokens"),
            _count(usage, "output_tokens"),
        )
    )
    return rows


def transcription_summary(usage: dict[str, Any]) -> str:
    """Caller transcription is billed by tokens or by seconds of audio, depending on the model."""
    billed = usage.get("transcription")
    if not isinstance(billed, dict) or not billed:
        return ""
    if "seconds" in billed:
        return f"{billed['seconds']:.1f} s of caller audio"
    return f"{_count(billed, 'input_tokens')} tokens in, {_count(billed, 'output_tokens')} out"


def usage_table(usage: dict[str, Any], cost_usd: Decimal | None) -> SafeString:
    if not usage:
        empty = format_html('<p class="va-empty">{}</p>', "No token usage recorded for this call.")
        if cost_usd is None:
            return empty
        return format_html("{}<p>Estimated cost: {}</p>", empty, format_cost(cost_usd))
    rows = format_html_join(
        "",
        "<tr><th>{}</th><td>{}</td><td>{}</td><td>{}</td></tr>",
        ((kind, f"{i:,}", f"{c:,}", f"{o:,}") for kind, i, c, o in usage_rows(usage)),
    )
    transcription = transcription_summary(usage)
    notes = format_html_join(
        "",
        "<p>{}</p>",
        (
            (note,)
            for note in (
                f"Caller transcription: {transcription}" if transcription else "",
                f"Estimated cost: {format_cost(cost_usd)}" if cost_usd is not None else "",
            )
            if note
        ),
    )
    return format_html(
        '<div class="va-usage"><table><thead><tr><th>Tokens</th><th>Input</th><th>of which cached</th>'
        "<th>Output</th></tr></thead><tbody>{}</tbody></table>{}</div>",
        rows,
        notes,
    )


def format_cost(cost_usd: Decimal | None) -> str:
    return "" if cost_usd is None else f"${cost_usd:,.4f}"


def call_totals(calls: QuerySet[Call]) -> dict[str, Any]:
    """Totals of the calls a list shows (after filters and search)."""

    def tokens(key: str) -> Sum:
        return Sum(Cast(KT(f"usage__{key}"), BigIntegerField()))

    return calls.aggregate(
        calls=Count("pk", distinct=True),
        seconds=Sum("duration_seconds"),
        cost=Sum("cost_usd"),
        input_tokens=tokens("input_tokens"),
        output_tokens=tokens("output_tokens"),
    )


def format_duration(seconds: int | None) -> str:
    if seconds is None:
        return ""
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


# --- CSV export ---------------------------------------------------------------------------

CSV_COLUMNS = [
    "call_sid",
    "created_at",
    "started_at",
    "ended_at",
    "from",
    "to",
    "direction",
    "agent",
    "status",
    "ended_reason",
    "duration_seconds",
    "turns",
    "interruptions",
    "first_audio_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "input_tokens",
    "output_tokens",
    "cost_usd",
    "error",
]
# Digits, dots, spaces and the mask's dots cannot call a function: a phone number stays as is.
_HARMLESS = re.compile(r"^[+-][\d. •]*$")


def csv_safe(value: object) -> str:
    """A cell a spreadsheet shows as text: values starting with = + - @ are formulas to Excel
    and LibreOffice, and a caller ID (SIP) or an error message can be anything."""
    text = "" if value is None else str(value)
    if text[:1] in ("=", "+", "-", "@", "\t", "\r") and not _HARMLESS.match(text):
        return "'" + text
    return text


def call_csv_row(call: Call, number: Callable[[str], str]) -> list[str]:
    usage = call.usage or {}
    turns = getattr(call, "turn_count", None)
    values: list[object] = [
        call.call_sid,
        call.created_at.isoformat() if call.created_at else "",
        call.started_at.isoformat() if call.started_at else "",
        call.ended_at.isoformat() if call.ended_at else "",
        number(call.from_number),
        number(call.to_number),
        call.direction,
        call.agent.name if call.agent else "",
        call.status,
        call.ended_reason,
        call.duration_seconds,
        turns if turns is not None else call.turns.count(),
        call.interruptions,
        call.first_audio_ms,
        call.latency_p50_ms,
        call.latency_p95_ms,
        _count(usage, "input_tokens"),
        _count(usage, "output_tokens"),
        call.cost_usd,
        call.error,
    ]
    return [csv_safe(value) for value in values]


# The newest done analysis of each call, then one column per extracted field ("data.<name>").
ANALYSIS_CSV_COLUMNS = ["analysis_success", "analysis_reason", "analysis_summary", "analysis_cost_usd"]


def newest_analyses(call_ids: list[int]) -> dict[int, CallAnalysis]:
    """Each call's newest done analysis, in one query."""
    newest: dict[int, CallAnalysis] = {}
    done = CallAnalysis.objects.filter(call_id__in=call_ids, status=AnalysisStatus.DONE).select_related(
        "plan_version"
    )
    for analysis in done.order_by("call_id", "-created_at", "-pk"):
        newest.setdefault(analysis.call_id, analysis)
    return newest


def analysis_csv_cells(analysis: CallAnalysis | None, fields: list[str]) -> list[object]:
    if analysis is None:
        return [""] * (len(ANALYSIS_CSV_COLUMNS) + len(fields))
    data = analysis.data or {}
    return [
        "" if analysis.success is None else ("yes" if analysis.success else "no"),
        analysis.reason,
        analysis.summary,
        analysis.cost_usd,
        *(_cell(data.get(name)) for name in fields),
    ]


def _cell(value: object) -> object:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return value


def calls_csv(calls: Iterable[Call], number: Callable[[str], str], filename: str) -> HttpResponse:
    response = HttpResponse(content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    rows = list(calls)
    analyses = newest_analyses([call.pk for call in rows])
    plans = [plan_from_snapshot(a.plan_version.definition) for a in analyses.values()]
    fields = field_columns(plans)
    writer = csv.writer(response)
    writer.writerow([*CSV_COLUMNS, *ANALYSIS_CSV_COLUMNS, *(f"data.{name}" for name in fields)])
    for call in rows:
        cells = analysis_csv_cells(analyses.get(call.pk), fields)
        writer.writerow([*call_csv_row(call, number), *(csv_safe(cell) for cell in cells)])
    return response


# --- recording download -------------------------------------------------------------------

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_CHUNK = 64 * 1024


async def _read(handle: IO[bytes], length: int) -> AsyncIterator[bytes]:
    # Storage files are blocking: read each chunk in a worker thread, never on the event loop.
    read = sync_to_async(handle.read, thread_sensitive=False)
    try:
        while length > 0:
            chunk = await read(min(_CHUNK, length))
            if not chunk:
                return
            length -= len(chunk)
            yield chunk
    finally:
        await sync_to_async(handle.close, thread_sensitive=False)()


def file_response(
    request: HttpRequest, handle: IO[bytes], size: int, *, content_type: str, filename: str
) -> HttpResponse | StreamingHttpResponse:
    """Stream a stored file with single-range support, so an ``<audio>`` element can seek."""
    start, end, status = 0, size - 1, 200
    requested = _RANGE.match(request.headers.get("Range", "").strip())
    if requested and any(requested.groups()):
        first, last = requested.groups()
        if first:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
        else:  # bytes=-N: the last N bytes
            start = max(0, size - int(last))
        if start > end or start >= size:
            handle.close()
            refused = HttpResponse(status=416)
            refused["Content-Range"] = f"bytes */{size}"
            return refused
        status = 206
        handle.seek(start)
    response = StreamingHttpResponse(_read(handle, end - start + 1), status=status, content_type=content_type)
    response["Content-Length"] = str(max(0, end - start + 1))
    response["Accept-Ranges"] = "bytes"
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", filename)  # a header value: no quotes, no newlines
    response["Content-Disposition"] = f'inline; filename="{safe_name}"'
    if status == 206:
        response["Content-Range"] = f"bytes {start}-{end}/{size}"
    return response
