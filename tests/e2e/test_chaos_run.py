"""The short, fixed-seed chaos run (``make chaos`` runs long ones): about 60 s of random traffic
and faults against the real stack, then every invariant over the recorded history.

The seed names the run: a failure prints the report (with the request ids of each violation)
and ``make chaos ARGS="--seed 20261201 --duration 60"`` replays the same plan. The TTL wait is
skipped here (keys must still have a TTL within their designed bound); ``make chaos`` waits.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from deploy.local.processes import ROOT

SEED = 20261201


@pytest.mark.timeout(600)
def test_a_short_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "deploy.chaos", "--seed", str(SEED), "--duration", "60",
        "--ttl-wait", "skip", "--out", str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=560)
    report = tmp_path / "report.txt"
    shown = report.read_text() if report.exists() else run.stdout[-4000:] + run.stderr[-4000:]
    print(shown)
    assert run.returncode != 2, f"the chaos run could not be carried out:\n{run.stderr[-4000:]}"
    assert run.returncode == 0, shown
