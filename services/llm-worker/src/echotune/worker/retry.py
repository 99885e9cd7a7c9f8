"""When to retry a provider call and how long to wait."""

from __future__ import annotations

import random

from echotune.worker.providers.base import ProviderError

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504, 529})
RETRYABLE_CODES = frozenset({"timeout", "connect_error", "disconnected"})
REFUSED_STATUS = frozenset({400, 413, 422})
"""The request itself was refused (too long, a bad field): no provider will take it as is."""


def is_retryable(error: ProviderError) -> bool:
    return error.status in RETRYABLE_STATUS or error.code in RETRYABLE_CODES


def refused_the_request(error: ProviderError) -> bool:
    return error.status in REFUSED_STATUS


def backoff_delay(
    attempt: int,
    *,
    base_s: float,
    cap_s: float,
    retry_after_s: float | None,
    retry_after_cap_s: float,
) -> float:
    """Exponential backoff with full jitter after failed ``attempt`` (1-based).

    A ``Retry-After`` from the provider is a floor (capped), since retrying earlier is
    known to fail.
    """
    delay = random.uniform(0, min(cap_s, base_s * 2 ** (attempt - 1)))
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, retry_after_cap_s))
    return delay
