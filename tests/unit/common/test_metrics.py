"""The loop histogram exposes exactly what prometheus_client's Histogram would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from echotune.common.metrics import LAG_BUCKETS, LoopHistogram, entry_seconds


def test_loop_histogram_matches_the_reference_histogram() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    loop = LoopHistogram("lag_seconds", "lag", LAG_BUCKETS, ["door"], registry=ours)
    reference = Histogram("lag_seconds", "lag", ["door"], buckets=LAG_BUCKETS, registry=theirs)
    values = [0.0, 0.0005, 0.0007, 0.001, 0.003, 0.25, 0.26, 4.9, 5.0, 7.5, 120.0]
    for door, value in [
        (d, v) for d in ("sse", "openai") for v in values[: 7 if d == "sse" else 11]
    ]:
        loop.labels(door).observe(value)
        reference.labels(door).observe(value)
    expected = [
        line for line in generate_latest(theirs).decode().splitlines() if "_created" not in line
    ]
    assert generate_latest(ours).decode().splitlines() == expected


def test_loop_histogram_refuses_wrong_labels() -> None:
    histogram = LoopHistogram("x_seconds", "x", (1.0,), ["a"])
    with pytest.raises(ValueError, match="takes labels"):
        histogram.labels()


def test_entry_seconds_reads_the_stream_id_time() -> None:
    assert entry_seconds("1700000000123-7") == 1700000000.123
