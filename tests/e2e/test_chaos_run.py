"""The short, fixed-seed chaos run (``make chaos`` runs long ones): about 60 s of random traffic
and faults against the real stack, then every invariant over the recorded history.

The seed names the run: a failure prints the report (with the request ids of each violation)
and ``make chaos ARGS="--seed 20261201 --duration 60"`` replays the same plan. The TTL wait is
skipped here (keys must still have a TTL within their designed bound); ``make chaos`` waits.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.local.processes import ROOT
from deploy.local.servers import wanted_cluster

SEED = 20261201

pytestmark = pytest.mark.serial


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


@pytest.mark.cluster
@pytest.mark.timeout(600)
@pytest.mark.skipif(
    not wanted_cluster(), reason="in `make test-cluster` (ECHOTUNE_REDIS_CLUSTER=1)"
)
def test_primary_failovers_mid_stream_keep_every_invariant(tmp_path: Path) -> None:
    """The same traffic on a local Redis Cluster whose only fault is a failover: a primary is
    SIGKILLed mid-stream (every 4-9 s), its replica takes over, it rejoins as a replica."""
    command = [
        sys.executable, "-m", "deploy.chaos", "--seed", str(SEED), "--duration", "35",
        "--ttl-wait", "skip", "--redis-cluster", "--faults", "redis_failover", "--out",
        str(tmp_path),
    ]  # fmt: skip
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=560)
    report = tmp_path / "report.txt"
    shown = report.read_text() if report.exists() else run.stdout[-4000:] + run.stderr[-4000:]
    print(shown)
    assert run.returncode != 2, f"the chaos run could not be carried out:\n{run.stderr[-4000:]}"
    failovers = re.search(r"faults: redis_failover (\d+)", shown)
    assert failovers is not None, shown
    assert int(failovers.group(1)) >= 2, "primaries failed over mid-stream"
    assert run.returncode == 0, shown
