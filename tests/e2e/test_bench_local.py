"""Smoke run of the local-model benchmark (`make bench ARGS="--upstream local"`), untimed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.local.processes import ROOT

pytestmark = [pytest.mark.local_model, pytest.mark.serial, pytest.mark.timeout(660)]


def test_quick_local_benchmark_reports_both_arms_and_the_cancels(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "deploy.bench", "--upstream", "local", "--quick", "--tokens", "16",
        "--trials", "2", "--out", str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "## echotune benchmark: local model" in run.stdout

    results = json.loads((tmp_path / "results.json").read_text())
    [level] = results["levels"]
    for arm in ("A", "B"):
        stats = level["arms"][arm]
        assert stats["errors"] == 0, stats["error_kinds"]
        assert stats["tokens_per_stream"]["p50"] == 16
        assert stats["ttft_ms"]["n"] == 1
        assert stats["stream_tokens_per_s"]["p50"] > 0
        cancel = results["cancel"][arm]
        assert cancel["errors"] == 0, cancel["error_kinds"]
        assert cancel["tokens_after"]["n"] == 2
    assert results["cancel"]["B"]["cancel_to_final_ms"]["n"] == 2
