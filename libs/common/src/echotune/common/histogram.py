"""Fixed log-scale histogram of milliseconds, shared by the telemetry writer and analytics.

Bucket ``i`` (0 ≤ i < ``BUCKETS``) holds values in ``[MIN_MS·G^i, MIN_MS·G^(i+1))`` with
``G = 2^(1/8)``: eight buckets per doubling, from 1 ms to about 2^24 ms (4.7 h). Values
below ``MIN_MS`` fall in bucket 0, values above the range in the last bucket. A percentile
read from the histogram is the bucket's geometric midpoint, so its relative error is at most
``G^(1/2) − 1 ≈ 4.4 %`` (for values inside the range).

Stored in MongoDB as a sparse map ``{"<i>": count}`` so that rollups can ``$inc`` it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

MIN_MS = 1.0
PER_DOUBLING = 8
GROWTH = 2 ** (1 / PER_DOUBLING)
BUCKETS = 24 * PER_DOUBLING
MAX_RELATIVE_ERROR = math.sqrt(GROWTH) - 1


def bucket_of(value_ms: float) -> int:
    """Index of the bucket holding ``value_ms``."""
    if value_ms <= MIN_MS:
        return 0
    index = int(math.log2(value_ms / MIN_MS) * PER_DOUBLING)
    return min(index, BUCKETS - 1)


def bucket_value(index: int) -> float:
    """Representative value of a bucket: its geometric midpoint."""
    return float(MIN_MS * GROWTH ** (index + 0.5))


def merge(histograms: Iterable[Mapping[str, int]]) -> dict[int, int]:
    """Sum sparse histograms (string keys as stored) into one with int keys."""
    total: dict[int, int] = {}
    for histogram in histograms:
        for key, count in histogram.items():
            total[int(key)] = total.get(int(key), 0) + int(count)
    return total


def quantile(histogram: Mapping[int, int], q: float) -> float | None:
    """The ``q``-quantile (0 < q ≤ 1) of a merged histogram; ``None`` when it is empty."""
    count = sum(histogram.values())
    if count == 0:
        return None
    rank = max(1, math.ceil(q * count))
    seen = 0
    for index in sorted(histogram):
        seen += histogram[index]
        if seen >= rank:
            return bucket_value(index)
    return bucket_value(max(histogram))
