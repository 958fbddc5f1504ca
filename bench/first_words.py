"""Time to first words: from Twilio's ``start`` to the first agent audio, pre-connect off and on.

    .venv/bin/python bench/first_words.py                # 20 calls each way, one at a time
    .venv/bin/python bench/first_words.py --concurrency 4 --calls 20

What a real call goes through, on one machine: the signed ``/incoming-call`` webhook, then a
pause (``--gap-ms``, Twilio fetching the TwiML and opening the media socket), then the signed
Media Stream with ``connected``/``start``. The agent has a greeting, so its first audio starts
as soon as the OpenAI session is live. The lean fake OpenAI server (``bench/fake_openai_server.py``,
its own process) answers each WebSocket upgrade ``--handshake-ms`` late (TCP + TLS + upgrade to
a distant service) and sends ``session.created`` ``--session-created-ms`` after that.

For each mode a fresh server (production's, ``OPENAI_PRECONNECT`` false, then true) serves a fresh SQLite
database; one warm-up call is discarded. Reported per mode: ``start`` -> first agent ``media``
frame, and webhook answered -> first agent audio (p50/p95/max, ms, nearest rank). The table
is printed and the whole report, samples included, written as JSON (``--output``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a file: make ``bench`` and ``calls`` importable
    sys.path.insert(0, str(ROOT))

from bench.bridge_latency import (  # noqa: E402
    AUTH_TOKEN,
    BENCH_NUMBER,
    OPENAI_KEY,
    RESULTS,
    child_env,
    free_port,
    machine_info,
    prepare_database,
    start_fake,
    start_server,
)
from calls.fakes.twilio_caller import CallerConfig, SimulatedCaller  # noqa: E402
from calls.processes import PRODUCTION_SERVER, stop_process  # noqa: E402

CALL_TIMEOUT = 20.0


def first_media_at(caller: SimulatedCaller) -> float | None:
    return next(
        (t for t, m in caller.received if isinstance(m, dict) and m.get("event") == "media"),
        None,
    )


async def one_call(base_url: str, gap: float) -> dict[str, float]:
    """One call up to the first agent audio; times in seconds (monotonic clock)."""
    caller = SimulatedCaller(
        CallerConfig(
            base_url=base_url, public_base_url=base_url, auth_token=AUTH_TOKEN, to_number=BENCH_NUMBER
        )
    )
    try:
        webhook = await caller.post_webhook()
        if webhook.status != 200:
            raise RuntimeError(f"webhook answered HTTP {webhook.status}")
        answered = time.monotonic()
        await asyncio.sleep(gap)  # Twilio's own delay before the media socket, not a wait on us
        await caller.connect_stream()
        await caller.wait_for(lambda: first_media_at(caller) is not None, timeout=CALL_TIMEOUT)
        first = first_media_at(caller)
        assert first is not None and caller.stream_started_at is not None
        return {"start_to_audio": first - caller.stream_started_at, "answer_to_audio": first - answered}
    finally:
        with contextlib.suppress(Exception):
            await caller.hang_up()
        await caller.aclose()


def stats(seconds: list[float]) -> dict[str, float | int | None]:
    """p50/p95/max in ms, nearest rank."""
    if not seconds:
        return {"n": 0, "p50": None, "p95": None, "max": None}
    ordered = sorted(seconds)

    def rank(q: float) -> float:
        return round(ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000, 1)

    return {"n": len(ordered), "p50": rank(0.5), "p95": rank(0.95), "max": round(ordered[-1] * 1000, 1)}


async def run_mode(
    args: argparse.Namespace, realtime_url: str, preconnect: bool, logs: Path
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="first-words-"))
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    env = child_env(
        {
            "DATABASE_URL": f"sqlite:///{workdir / 'bench.sqlite3'}",
            "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
            "OPENAI_API_KEY": OPENAI_KEY,
            "OPENAI_REALTIME_URL": realtime_url,
            "PUBLIC_BASE_URL": base_url,
            "DEBUG": "false",
            "SECRET_KEY": "first-words-bench-not-a-secret",
            "LOG_LEVEL": "WARNING",
            "MEDIA_ROOT": str(workdir / "media"),
            "OPENAI_PRECONNECT": "true" if preconnect else "false",
        }
    )
    await asyncio.to_thread(prepare_database, env, 600)
    log_name = f"first_words_{PRODUCTION_SERVER}_{'on' if preconnect else 'off'}.log"
    server = start_server(PRODUCTION_SERVER, env, port, logs / log_name)
    try:
        await one_call(base_url, args.gap_ms / 1000)  # warm-up: imports, connections, caches
        limit = asyncio.Semaphore(args.concurrency)
        failures: list[str] = []

        async def limited() -> dict[str, float] | None:
            async with limit:
                try:
                    return await one_call(base_url, args.gap_ms / 1000)
                except Exception as exc:
                    failures.append(f"{type(exc).__name__}: {exc}")
                    return None

        samples = [s for s in await asyncio.gather(*(limited() for _ in range(args.calls))) if s]
    finally:
        stop_process(server)
    return {
        "preconnect": preconnect,
        "calls": args.calls,
        "failed": failures,
        "start_to_first_audio_ms": stats([s["start_to_audio"] for s in samples]),
        "answer_to_first_audio_ms": stats([s["answer_to_audio"] for s in samples]),
        "samples_ms": [{k: round(v * 1000, 1) for k, v in s.items()} for s in samples],
    }


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| pre-connect | calls | start → first audio p50 / p95 / max (ms) "
        "| webhook answered → first audio p50 / p95 / max (ms) |",
        "| --- | --- | --- | --- |",
    ]
    for result in results:
        a, b = result["start_to_first_audio_ms"], result["answer_to_first_audio_ms"]
        lines.append(
            f"| {'on' if result['preconnect'] else 'off'} | {a['n']} "
            f"| {a['p50']} / {a['p95']} / {a['max']} | {b['p50']} / {b['p95']} / {b['max']} |"
        )
    return "\n".join(lines)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    logs = args.output.parent / f"{args.output.stem}-logs"  # one folder per output, as bridge_latency
    logs.mkdir(parents=True, exist_ok=True)
    fake_options = [f"--handshake-ms={args.handshake_ms}", f"--session-created-ms={args.session_created_ms}"]
    fake, fake_port = start_fake(0, logs / "first_words_fake_openai.log", fake_options)
    try:
        realtime_url = f"ws://127.0.0.1:{fake_port}/v1/realtime"
        results = [await run_mode(args, realtime_url, preconnect, logs) for preconnect in (False, True)]
    finally:
        stop_process(fake)
    return {
        "machine": machine_info(),
        "config": {
            "calls": args.calls,
            "concurrency": args.concurrency,
            "handshake_ms": args.handshake_ms,
            "session_created_ms": args.session_created_ms,
            "gap_ms": args.gap_ms,
        },
        "results": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20, help="calls per mode")
    parser.add_argument("--concurrency", type=int, default=1, help="calls in flight at once")
    parser.add_argument(
        "--handshake-ms", type=int, default=300, help="fake OpenAI: upgrade answered this late"
    )
    parser.add_argument(
        "--session-created-ms", type=int, default=100, help="fake OpenAI: then session.created"
    )
    parser.add_argument("--gap-ms", type=int, default=300, help="webhook answered -> media socket opened")
    parser.add_argument("--output", type=Path, default=RESULTS / "first_words.json")
    args = parser.parse_args()
    report = asyncio.run(bench(args))
    config = report["config"]
    print(
        f"{config['calls']} calls per mode, {config['concurrency']} at a time; OpenAI handshake "
        f"{config['handshake_ms']} ms + session.created {config['session_created_ms']} ms; "
        f"webhook -> media socket {config['gap_ms']} ms; {report['machine']['nproc']} CPUs "
        f"({report['machine']['cpu_model']}), shared with whatever else runs."
    )
    print(table(report["results"]))
    for result in report["results"]:
        for failure in result["failed"]:
            print(f"  failed call (pre-connect {'on' if result['preconnect'] else 'off'}): {failure}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    print(f"Written to {args.output}")


if __name__ == "__main__":
    main()
