"""Which ASGI server production runs: ``bridge_latency.py`` under each, interleaved.

    .venv/bin/python bench/compare_servers.py --rounds 2
    .venv/bin/python bench/compare_servers.py --report-only bench/results/servers

Every round runs each server once with one process (SQLite, in-memory layer) and once with
two (PostgreSQL + Redis, as production), at 50, 100 and 200 concurrent 12.5 s calls, so a
neighbour's disturbance or the machine's drift lands on all servers alike rather than on one.
Writes every run's JSON, a Markdown table (``servers.md``: per server, processes and calls,
the median over rounds of CPU per call and of each way's p50/p99, frames lost, calls not
connected or dropped) and a plot of the one-process runs of the first round
(``servers.png``) into ``--output-dir``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a file: make ``bench`` and ``calls`` importable
    sys.path.insert(0, str(ROOT))

from calls.processes import ASGI_SERVERS  # noqa: E402

POSTGRES = "postgres://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379"


def run_name(server: str, workers: int, round_index: int) -> str:
    return f"{server}-{workers}p-r{round_index}"


def run_all(args: argparse.Namespace) -> None:
    for round_index in range(1, args.rounds + 1):
        for server in args.servers:
            for workers in args.workers:
                output = args.output_dir / f"{run_name(server, workers, round_index)}.json"
                command = [
                    sys.executable, "bench/bridge_latency.py", "--server", server,
                    "--calls", *map(str, args.calls), "--seconds", str(args.seconds),
                    "--workers", str(workers), "--output", str(output),
                ]  # fmt: skip
                if workers > 1:
                    command += ["--database-url", args.database_url, "--redis-url", args.redis_url]
                started = time.monotonic()
                print(f"round {round_index}: {server}, {workers} process(es) ...", flush=True)
                log = output.with_suffix(".log")
                with log.open("wb") as handle:
                    done = subprocess.run(command, cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT)
                status = "ok" if done.returncode == 0 else f"FAILED ({done.returncode}, see {log})"
                print(f"    {status} in {time.monotonic() - started:.0f} s", flush=True)


def load(directory: Path) -> dict[tuple[str, int], list[dict[str, Any]]]:
    reports: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for path in sorted(directory.glob("*-r*.json")):
        report = json.loads(path.read_text())
        config = report["config"]
        reports.setdefault((config["server"], config["workers"]), []).append(report)
    return reports


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(reports: dict[tuple[str, int], list[dict[str, Any]]]) -> str:
    lines = [
        "| server | processes | calls | rounds | CPU % of a core per call | caller->OpenAI p50 / p99 ms"
        " | OpenAI->caller p50 / p99 ms | frames lost | calls not connected / dropped |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    order = {name: index for index, name in enumerate(ASGI_SERVERS)}
    for (server, workers), runs in sorted(reports.items(), key=lambda item: (item[0][1], order[item[0][0]])):
        by_calls: dict[int, list[dict[str, Any]]] = {}
        for report in runs:
            for result in report["results"]:
                by_calls.setdefault(result["calls"], []).append(result)
        for calls, results in sorted(by_calls.items()):
            cpu = median([r["server_cpu_pct_per_call"] for r in results])
            ways = []
            for key in ("caller_to_openai_ms", "openai_to_caller_ms"):
                p50 = median([r[key]["p50"] for r in results])
                p99 = median([r[key]["p99"] for r in results])
                ways.append(f"{fmt(p50)} / {fmt(p99)}")
            lost = sum(
                r["caller_to_openai_frames"]["lost"] + r["openai_to_caller_frames"]["lost"] for r in results
            )
            failed = sum(r["calls_failed_to_connect"] for r in results)
            dropped = sum(r["calls_dropped"] for r in results)
            lines.append(
                f"| {server} | {workers} | {calls} | {len(results)} | {fmt(cpu, 2)} | {ways[0]} | {ways[1]}"
                f" | {lost} | {failed} / {dropped} |"
            )
    return "\n".join(lines) + "\n"


def machine_line(reports: dict[tuple[str, int], list[dict[str, Any]]]) -> str:
    machine = next(iter(reports.values()))[0]["machine"]
    return (
        f"{machine.get('nproc')} CPUs ({machine.get('cpu_model', '?')}), Python {machine.get('python', '?')};"
        " driver, fake OpenAI server and server(s) share them."
    )


def report(directory: Path) -> None:
    reports = load(directory)
    if not reports:
        raise SystemExit(f"no runs in {directory}")
    markdown = f"{machine_line(reports)}\n\n{table(reports)}"
    (directory / "servers.md").write_text(markdown)
    print(markdown)
    first_round = [runs[0] for (_, workers), runs in reports.items() if workers == 1]
    order = {name: index for index, name in enumerate(ASGI_SERVERS)}
    first_round.sort(key=lambda r: order[r["config"]["server"]])
    from bench.plot import plot_reports

    plot_reports(first_round, directory / "servers.png", title="One server process per ASGI server (round 1)")
    print(f"Plot: {directory / 'servers.png'}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--servers", nargs="+", choices=ASGI_SERVERS, default=list(ASGI_SERVERS))
    parser.add_argument("--calls", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--seconds", type=float, default=12.5, help="length of every call")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="server processes per run")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--database-url", default=POSTGRES, help="for runs with several processes")
    parser.add_argument("--redis-url", default=REDIS, help="for runs with several processes")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "bench" / "results" / "servers")
    parser.add_argument(
        "--report-only", type=Path, default=None, help="only tabulate and plot this directory"
    )
    args = parser.parse_args()
    if args.report_only is not None:
        report(args.report_only)
        return
    args.output_dir.mkdir(parents=True, exist_ok=True)
    run_all(args)
    report(args.output_dir)


if __name__ == "__main__":
    main()
