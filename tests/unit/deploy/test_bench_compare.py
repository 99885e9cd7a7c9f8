"""`make bench ARGS="--compare OLD NEW"`: two results side by side."""

from __future__ import annotations

from typing import Any

from deploy.bench.compare import compare


def result(level: int, gateway_us: float, ratio: float) -> dict[str, Any]:
    grouped = {"gateway": gateway_us, "worker": 100.0, "redis": 20.0}
    return {
        "levels": [
            {
                "level": level,
                "added_ttft_ms": {"p50": 1.5, "p95": 2.0},
                "added_itl_ms": {"p50": 0.5, "p99": 3.0},
                "duration_ratio": ratio,
                "errors": {"A": 0, "B": 0},
                "tokens_per_s": {"A": 100.0, "B": 99.0},
                "arms": {"B": {"cpu_ms_per_1k_tokens_grouped": grouped}},
            }
        ]
    }


def test_levels_both_runs_measured_are_shown_before_and_after() -> None:
    table = compare(result(100, 200.0, 1.7), result(100, 80.0, 1.03))
    assert "### 100 streams" in table
    assert "| gateway CPU µs/token | 200 | 80 |" in table
    assert "| duration ratio B/A | 1.7 | 1.03 |" in table
    assert "| path CPU µs/token (gateway+workers+Redis) | 320 | 200 |" in table
    assert compare(result(10, 1, 1), result(100, 1, 1)) == "no level measured by both runs"
