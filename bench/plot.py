"""Latency, CPU and memory against concurrency, from ``bridge_latency.py`` reports.

    .venv/bin/python bench/plot.py bench/results/sqlite.json bench/results/postgres.json \\
        --output docs/bridge-latency.png

One line per report (setup), so the embedded defaults and PostgreSQL + Redis can be
compared on one figure; ``bridge_latency.py --plot PATH.png`` draws its own run the same
way. Needs matplotlib (``requirements-dev.txt``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e")
TARGET_P99_AT_100_MS = 5.0  # issue 8: at 100 calls, p99 <= 5 ms each way
CAPACITY_P99_MS = 20.0  # issue 8: >= 200 calls per machine before p99 passes 20 ms
MEMORY_PER_CALL_KIB = 1024.0  # issue 8: under 1 MiB per call


def setup_label(report: dict[str, Any]) -> str:
    from bench.bridge_latency import setup_label as label

    return label(report)


def _value(stats: dict[str, Any] | None, key: str) -> float:
    value = (stats or {}).get(key)
    return math.nan if value is None else float(value)


def plot_reports(reports: list[dict[str, Any]], path: Path, title: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    fig, axes = plt.subplots(2, 2, figsize=(13, 9), constrained_layout=True)
    (up_ax, down_ax), (cpu_ax, mem_ax) = axes
    all_calls: set[int] = set()
    notes: list[str] = []
    nproc = 1
    for index, report in enumerate(reports):
        color = COLORS[index % len(COLORS)]
        label = setup_label(report)
        results = sorted(report["results"], key=lambda r: r["calls"])
        if not results:
            continue
        nproc = max(nproc, int(report["machine"].get("nproc") or 1))
        calls = [r["calls"] for r in results]
        all_calls.update(calls)
        for ax, key in ((up_ax, "caller_to_openai_ms"), (down_ax, "openai_to_caller_ms")):
            ax.plot(calls, [_value(r[key], "p50") for r in results], "o-", color=color, label=f"{label}: p50")
            ax.plot(
                calls, [_value(r[key], "p99") for r in results], "s--", color=color, label=f"{label}: p99"
            )
            for r in results:
                frames = "caller_to_openai_frames" if key.startswith("caller") else "openai_to_caller_frames"
                if r[frames]["lost"] or r.get("calls_dropped") or r.get("calls_failed_to_connect"):
                    ax.plot([r["calls"]], [_value(r[key], "p99")], "x", color="black", markersize=9)
        for r in results:
            trouble = []
            lost = r["caller_to_openai_frames"]["lost"] + r["openai_to_caller_frames"]["lost"]
            if lost:
                trouble.append(f"{lost} frames lost")
            for key, what in (("calls_failed_to_connect", "not connected"), ("calls_dropped", "dropped")):
                if r.get(key):
                    trouble.append(f"{r[key]} call{'s' if r[key] != 1 else ''} {what}")
            if r.get("abandoned"):
                trouble.append("round cut at its time cap")
            if trouble:
                notes.append(f"x  {label}, {r['calls']} calls: " + ", ".join(trouble))
        cpu_ax.plot(
            calls,
            [math.nan if r["server_cpu_pct"] is None else r["server_cpu_pct"] for r in results],
            "o-",
            color=color,
            label=f"{label}: server",
        )
        cpu_ax.plot(
            calls,
            [math.nan if r["machine_busy_pct"] is None else r["machine_busy_pct"] * nproc for r in results],
            "^:",
            color=color,
            label=f"{label}: whole machine (server + fake + driver)",
        )
        mem_ax.plot(
            calls,
            [
                math.nan if r["server_rss_per_call_kib"] is None else r["server_rss_per_call_kib"]
                for r in results
            ],
            "o-",
            color=color,
            label=label,
        )
    ticks = sorted(all_calls)
    for ax in axes.flat:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.set_xlabel("concurrent calls")
        ax.grid(True, which="both", alpha=0.3)
    for ax, name in ((up_ax, "caller → OpenAI"), (down_ax, "OpenAI → caller")):
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.axhline(
            TARGET_P99_AT_100_MS, color="green", linestyle=":", linewidth=1.2, label="5 ms (target at 100)"
        )
        ax.axhline(
            CAPACITY_P99_MS, color="black", linestyle=":", linewidth=1.2, label="20 ms (capacity limit)"
        )
        ax.set_ylabel("added latency, ms (log)")
        ax.set_title(f"Latency the bridge adds, {name}")
        ax.legend(fontsize=8, loc="upper left")
    cpu_ax.axhline(100 * nproc, color="gray", linestyle="--", linewidth=1, label=f"all {nproc} cores")
    cpu_ax.axhline(100, color="gray", linestyle=":", linewidth=1, label="one core (one event loop)")
    cpu_ax.set_ylabel("CPU %, 100 = one core")
    cpu_ax.set_title("CPU while all calls are live")
    cpu_ax.set_ylim(bottom=0)
    cpu_ax.legend(fontsize=8, loc="upper left")
    mem_ax.axhline(MEMORY_PER_CALL_KIB, color="green", linestyle=":", linewidth=1.2, label="1 MiB (target)")
    mem_ax.set_ylabel("server RSS per call, KiB (peak above idle)")
    mem_ax.set_title("Memory per call (recording on)")
    mem_ax.set_ylim(bottom=0)
    mem_ax.legend(fontsize=8, loc="upper right")
    if title is None and reports:
        machine = reports[0]["machine"]
        title = (
            f"bench/bridge_latency.py on {machine['nproc']} CPUs ({machine['cpu_model'] or 'unknown'}), "
            f"{machine['memory_mib'] // 1024} GiB, Python {machine['python']} "
            "(driver, fake OpenAI and server share the CPUs)"
        )
    if title:
        fig.suptitle(title, fontsize=11)
    if notes:
        bottom = 0.018 * (len(notes) + 1)
        fig.get_layout_engine().set(rect=(0, bottom, 1, 1 - bottom))
        fig.text(0.01, 0.004, "\n".join(notes), fontsize=8, va="bottom")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("reports", type=Path, nargs="+", help="JSON files written by bridge_latency.py")
    parser.add_argument("--output", "-o", type=Path, required=True, help="PNG to write")
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    reports = [json.loads(path.read_text()) for path in args.reports]
    plot_reports(reports, args.output, args.title)
    print(args.output)


if __name__ == "__main__":
    main()
