"""Telemetry publishing: a Redis that is away for a while (a cluster failover) loses nothing."""

from __future__ import annotations

import random
import statistics
from typing import Any

import pytest
from redis.exceptions import ConnectionError

from echotune.worker.telemetry import TelemetryPublisher, percentile
from tests.support.telemetry import make_event


class AwayForAWhile:
    """A broker whose Redis refuses the first ``failures`` publishes, then takes them."""

    def __init__(self, failures: int) -> None:
        self.failures, self.published = failures, list[Any]()

    async def publish(self, body: Any, **options: Any) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("slot not served: its primary fails over")
        self.published.append(body)


async def test_an_event_is_published_once_redis_is_back() -> None:
    """It was given up at the first failure (the client's own retries last about a second;
    a failover takes the node timeout plus an election): the attempt had no document."""
    broker = AwayForAWhile(failures=3)
    publisher = TelemetryPublisher(broker, "ns:telemetry", 1000)  # type: ignore[arg-type]
    event = make_event("p", random.Random(1))
    publisher.publish(event)
    await publisher.flush(timeout_s=30)
    assert [body["eventId"] for body in broker.published] == [event.event_id]


@pytest.mark.parametrize("seed", range(40))
def test_percentile_is_the_inclusive_quantile(seed: int) -> None:
    """As statistics.quantiles gives it (the gaps' p50/p95 in every attempt's telemetry)."""
    rng = random.Random(seed)
    values = [rng.choice([rng.uniform(0, 1e6), 20.0]) for _ in range(rng.randint(1, 300))]
    for q in (0.01, 0.5, 0.95, 0.99):
        if len(values) == 1:
            expected = values[0]
        else:
            expected = statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]
        assert percentile(values, q) == pytest.approx(expected, rel=1e-12, abs=1e-9)
    assert percentile([], 0.5) is None
