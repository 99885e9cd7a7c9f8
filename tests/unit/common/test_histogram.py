"""The shared log-scale histogram: bucket layout, merging, and quantile error bounds."""

from __future__ import annotations

import math
import random

import pytest

from echotune.common.histogram import (
    BUCKETS,
    GROWTH,
    MAX_RELATIVE_ERROR,
    MIN_MS,
    PER_DOUBLING,
    bucket_of,
    bucket_value,
    merge,
    quantile,
)

EPSILON = 1e-12


def exact_quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile, the definition ``histogram.quantile`` approximates."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


def histogram_of(values: list[float]) -> dict[str, int]:
    """A sparse histogram keyed by strings, as stored in MongoDB."""
    counts: dict[str, int] = {}
    for value in values:
        key = str(bucket_of(value))
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_layout_eight_buckets_per_doubling_from_one_ms() -> None:
    assert MIN_MS == 1.0
    assert PER_DOUBLING == 8
    assert pytest.approx(2.0) == GROWTH**PER_DOUBLING
    assert BUCKETS == 24 * PER_DOUBLING
    assert pytest.approx(2 ** (1 / 16) - 1) == MAX_RELATIVE_ERROR
    assert 0.044 < MAX_RELATIVE_ERROR < 0.045
    assert bucket_of(1.0) == 0
    assert bucket_of(2.0) == PER_DOUBLING
    assert bucket_of(1024.0) == 10 * PER_DOUBLING


def test_every_bucket_covers_its_range_and_its_value_is_the_geometric_midpoint() -> None:
    for index in range(BUCKETS - 1):
        low, high = MIN_MS * GROWTH**index, MIN_MS * GROWTH ** (index + 1)
        assert bucket_of(low * (1 + 1e-9)) == index
        assert bucket_of(high * (1 - 1e-9)) == index
        middle = bucket_value(index)
        assert low < middle < high
        assert pytest.approx(math.sqrt(low * high)) == middle
        assert middle / low - 1 <= MAX_RELATIVE_ERROR + EPSILON
        assert 1 - middle / high <= MAX_RELATIVE_ERROR + EPSILON


def test_values_outside_the_range_are_clamped() -> None:
    assert bucket_of(0.0) == 0
    assert bucket_of(0.3) == 0
    assert bucket_of(1e12) == BUCKETS - 1
    assert bucket_of(MIN_MS * 2**24 * 1.01) == BUCKETS - 1


def test_buckets_are_monotonic() -> None:
    rng = random.Random(7)
    values = sorted(rng.uniform(0, 1e7) for _ in range(5000))
    indexes = [bucket_of(v) for v in values]
    assert indexes == sorted(indexes)


def test_merge_adds_sparse_histograms_with_string_keys() -> None:
    merged = merge([{"3": 2, "10": 1}, {"3": 5}, {}, {"40": 4, "10": 2}])
    assert merged == {3: 7, 10: 3, 40: 4}


def test_quantile_of_an_empty_histogram_is_none() -> None:
    assert quantile({}, 0.5) is None
    assert quantile(merge([]), 0.99) is None


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_quantiles_are_within_the_relative_error_of_exact_percentiles(seed: int) -> None:
    rng = random.Random(seed)
    latencies = [rng.lognormvariate(math.log(300), 1.2) + 1 for _ in range(20_000)]
    histogram = merge([histogram_of(latencies)])
    for q in (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0):
        exact = exact_quantile(latencies, q)
        estimate = quantile(histogram, q)
        assert estimate is not None
        assert abs(estimate - exact) / exact <= MAX_RELATIVE_ERROR + EPSILON, (q, exact, estimate)


def test_quantiles_of_merged_shards_equal_those_of_the_whole() -> None:
    rng = random.Random(11)
    values = [rng.expovariate(1 / 800) + 1 for _ in range(6000)]
    shards = [histogram_of(values[i::7]) for i in range(7)]
    whole = merge([histogram_of(values)])
    assert merge(shards) == whole
    for q in (0.5, 0.95, 0.99):
        assert quantile(merge(shards), q) == quantile(whole, q)
        exact = exact_quantile(values, q)
        estimate = quantile(whole, q)
        assert estimate is not None
        assert abs(estimate - exact) / exact <= MAX_RELATIVE_ERROR + EPSILON
