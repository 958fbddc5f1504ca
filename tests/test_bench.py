"""The bridge latency benchmark runs end to end and reports sane numbers (no timing thresholds)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.e2e


def run_bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bridge_latency.py"), "--pause", "0", *args],
        cwd=ROOT,
        env=None if env is None else os.environ | env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def test_bridge_latency_benchmark_reports_delivered_frames(tmp_path: Path) -> None:
    output = tmp_path / "bridge_latency.json"
    plot = tmp_path / "bridge_latency.png"
    completed = run_bench("--calls", "2", "--seconds", "3", "--output", str(output), "--plot", str(plot))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "share these" in completed.stdout  # readers are told the CPUs are shared

    report = json.loads(output.read_text())
    machine = report["machine"]
    assert machine["nproc"] >= 1 and machine["cpu_model"] is not None and machine["python"]
    assert report["config"]["seconds"] == [3.0] and report["skipped_rounds"] == []
    [result] = report["results"]
    assert result["calls"] == 2
    assert result["failed_calls"] == []
    assert result["calls_connected"] == 2 and result["calls_failed_to_connect"] == 0
    assert result["abandoned"] is None
    assert result["close_codes"] == [1000]
    assert result["twilio_protocol_errors"] == 0
    assert result["recordings_stored"] == 2  # the bench agent records, as production does

    up = result["caller_to_openai_frames"]
    assert up["sent"] == 2 * 150  # 3 s of 20 ms frames per call
    assert up["delivered"] > 0 and up["delivered"] + up["lost"] == up["sent"]
    assert up["corrupt"] == 0 and up["duplicated"] == 0

    down = result["openai_to_caller_frames"]
    assert down["expected"] > 0 and down["delivered"] > 0
    assert down["delivered"] + down["lost"] == down["expected"]
    assert down["corrupt"] == 0 and down["misrouted"] == 0

    for key in ("caller_to_openai_ms", "openai_to_caller_ms", "first_agent_audio_ms"):
        stats = result[key]
        assert stats["n"] > 0, key
        assert 0 <= stats["p50"] <= stats["p99"] <= stats["max"], (key, stats)
    assert result["first_agent_audio_ms"]["n"] == 2  # both callers heard the greeting

    assert result["server_cpu_pct"] is not None and result["server_cpu_pct"] >= 0
    assert result["server_rss_peak_mib"] > 0
    assert result["driver_loop_lag_ms"]["n"] > 0
    assert set(result["timeline"]) == {"caller_to_openai_ms", "openai_to_caller_ms"}
    assert output.with_suffix(".md").read_text().startswith("| calls |")
    assert plot.read_bytes().startswith(b"\x89PNG")


def test_daphne_with_two_frames_per_append_delivers_every_frame_and_measures_each_barge_in(
    tmp_path: Path,
) -> None:
    """The comparison's other server, and OPENAI_AUDIO_APPEND_MS=40: the fake splits each append
    back into its frames (none lost or duplicated), and every barge-in's truncation is set
    against what the caller had heard."""
    output = tmp_path / "daphne.json"
    completed = run_bench(
        "--server", "daphne", "--calls", "2", "--seconds", "10", "--barge-in-share", "1",
        "--output", str(output), env={"OPENAI_AUDIO_APPEND_MS": "40"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads(output.read_text())
    assert report["config"]["server"] == "daphne"
    [result] = report["results"]
    up = result["caller_to_openai_frames"]
    assert up["sent"] == 2 * 500 and up["delivered"] + up["lost"] == up["sent"]
    assert up["delivered"] >= 0.9 * up["sent"], up  # one frame of two if appends were not split
    assert up["duplicated"] == 0 and up["corrupt"] == 0
    truncation = result["barge_in_truncation_error_ms"]
    assert result["barge_ins"] >= 1 and truncation["n"] == result["clears"] >= 1
    assert truncation["clears_without_truncate"] == 0
    assert 0 <= truncation["p50"] <= truncation["max"] < 1000


def test_calls_that_cannot_connect_are_reported_as_such(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    output = tmp_path / "refused.json"
    completed = run_bench("--server-url", dead, "--calls", "3", "--seconds", "1", "--output", str(output))
    assert completed.returncode == 0, completed.stdout + completed.stderr

    [result] = json.loads(output.read_text())["results"]
    assert result["calls_connected"] == 0 and result["calls_failed_to_connect"] == 3
    assert {f["kind"] for f in result["failed_calls"]} == {"connect"}
    assert {f["phase"] for f in result["failed_calls"]} == {"webhook"}
    # Frames never sent are not counted as lost.
    assert result["caller_to_openai_frames"]["sent"] == 0 == result["caller_to_openai_frames"]["lost"]


def test_first_words_benchmark_compares_preconnect_off_and_on(tmp_path: Path) -> None:
    output = tmp_path / "first_words.json"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "first_words.py"), "--calls", "3", "--output", str(output)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "| off | 3 |" in completed.stdout and "| on | 3 |" in completed.stdout

    report = json.loads(output.read_text())
    assert report["config"]["handshake_ms"] == 300 and report["config"]["gap_ms"] == 300
    off, on = report["results"]
    assert (off["preconnect"], on["preconnect"]) == (False, True)
    assert off["failed"] == [] == on["failed"]
    for result in (off, on):
        stats = result["start_to_first_audio_ms"]
        assert stats["n"] == 3 and 0 < stats["p50"] <= stats["p95"] <= stats["max"]
    # Off, every call waits out the 300 ms handshake after start; on, the webhook already did.
    assert off["start_to_first_audio_ms"]["p50"] >= 300
    assert on["start_to_first_audio_ms"]["max"] < off["start_to_first_audio_ms"]["p50"]
