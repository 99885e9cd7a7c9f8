"""The benchmark's smoke run: it starts its own stack, runs both arms and writes every figure.

No timing assertions: a benchmark prints numbers, it is not a timed test.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.bench.timeline import STAGES
from deploy.local.processes import ROOT

ARM_FIELDS = {
    "streams", "errors", "error_kinds", "tokens", "ttft_ms", "first_event_ms", "to_upstream_ms",
    "token_delay_ms", "gap_ms", "duration_ms", "upstream_leg_ms", "relay_leg_ms", "tokens_per_s",
    "cpu_ms_per_1k_tokens", "peak_open", "client_util_max", "client_loop_lag_ms",
    "machine_busy_pct", "foreign_cpu_pct", "gateway_rss_growth_kib",
}  # fmt: skip
LEVEL_FIELDS = {
    "level", "arms", "added_ttft_ms", "added_to_upstream_ms", "added_itl_ms", "added_gap_ms",
    "duration_ratio", "errors", "tokens_per_s", "cpu_ms_per_1k_tokens", "gateway_cpu_us_per_token",
    "gateway_rss_kib_per_stream", "client_saturated", "machine_saturated",
}  # fmt: skip
PROCESSES = {"gateway", "worker1", "redis", "fake-llm", "client1"}

pytestmark = pytest.mark.serial


def test_quick_benchmark_reports_every_metric_without_errors(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "deploy.bench", "--quick", "--levels", "1,5", "--tokens", "8",
        "--pace-ms", "5", "--ttft-ms", "10", "--workers", "1", "--clients", "1", "--trials", "3",
        "--timeline", "3", "--out", str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=100)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "### Latency (ms)" in run.stdout

    results = json.loads((tmp_path / "results.json").read_text())
    assert (tmp_path / "results.md").read_text().startswith("## echotune benchmark")
    assert (tmp_path / "latency.png").stat().st_size > 0
    assert {"nproc", "cpu_model", "loadavg_before", "loadavg_after"} <= set(results["machine"])
    assert [level["level"] for level in results["levels"]] == [1, 5]
    for level in results["levels"]:
        assert set(level) >= LEVEL_FIELDS
        assert level["errors"] == {"A": 0, "B": 0}, level["arms"]["B"]["error_kinds"]
        for arm in ("A", "B"):
            stats = level["arms"][arm]
            assert set(stats) >= ARM_FIELDS
            assert stats["tokens"] == stats["streams"] * 8
            assert stats["ttft_ms"]["p50"] is not None
            assert stats["token_delay_ms"]["n"] == stats["tokens"]
            assert set(stats["cpu_ms_per_1k_tokens"]) >= PROCESSES
        assert level["arms"]["B"]["relay_leg_ms"]["n"] == level["arms"]["B"]["tokens"]
        assert level["added_ttft_ms"]["p50"] is not None
        assert level["added_itl_ms"]["p99"] is not None
    # the timeline's rounds (Redis MONITOR on) found every stage of every answer
    assert results["timeline"]["answers"] == 3
    assert {name: q["n"] for name, q in results["timeline"]["stages"].items()} == dict.fromkeys(
        (name for name, _, _ in STAGES), 3
    )
    assert "### Where the first token's time goes" in run.stdout
    for arm in ("A", "B"):
        assert results["cancel"][arm]["errors"] == 0, results["cancel"][arm]["error_kinds"]
        assert results["cancel"][arm]["upstream_close_ms"]["n"] == 3
    assert results["resume"]["errors"] == 0, results["resume"]["error_kinds"]
    assert results["resume"]["latency_ms"]["n"] == 3
    assert {t["target"] for t in results["targets"]} >= {"resume p95 (ms)"}
