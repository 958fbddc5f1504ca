"""The bridge latency benchmark runs end to end and reports sane numbers (no timing thresholds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.e2e


def test_bridge_latency_benchmark_reports_delivered_frames(tmp_path: Path) -> None:
    output = tmp_path / "bridge_latency.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bridge_latency.py"),
            "--calls",
            "2",
            "--seconds",
            "3",
            "--pause",
            "0",
            "--output",
            str(output),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "share these" in completed.stdout  # readers are told the CPUs are shared

    report = json.loads(output.read_text())
    machine = report["machine"]
    assert machine["nproc"] >= 1 and machine["cpu_model"] is not None and machine["python"]
    [result] = report["results"]
    assert result["calls"] == 2
    assert result["failed_calls"] == []
    assert result["close_codes"] == [1000]
    assert result["twilio_protocol_errors"] == 0

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
