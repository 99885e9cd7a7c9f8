"""The telemetry service's metrics: every series an operator alerts on exists from the start."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import generate_latest

from echotune.common.redis import create_redis
from echotune.telemetry.decode import DEAD_LETTER_KINDS
from echotune.telemetry.metrics import Metrics
from tests.support.flaky_proxy import reply_dropping_proxy


def test_each_dead_letter_kind_is_a_series_at_zero_before_any_letter() -> None:
    """A series that appears with its first letter hides that letter from ``rate()``."""
    metrics = Metrics("telemetry", "group", "dead-letters")
    text = generate_latest(metrics.registry).decode()
    for kind in DEAD_LETTER_KINDS:
        assert f'echotune_telemetry_dead_letters_total{{kind="{kind}"}} 0.0\n' in text
    assert DEAD_LETTER_KINDS  # the loop above checked something


async def test_a_scrape_is_bounded_when_redis_stops_answering(redis_server_url: str) -> None:
    """A stopped Redis (connections open, no reply) held the scrape 25 s: Prometheus's 10 s
    scrape timeout lost every series, ``mongodb_up`` too."""
    metrics = Metrics("telemetry", "group", "dead-letters")
    async with reply_dropping_proxy(redis_server_url) as proxy:
        proxy.stop_reading()
        metrics.redis = create_redis(proxy.url)
        began = time.monotonic()
        try:
            async with asyncio.timeout(10):
                text = (await metrics.render()).decode()
        finally:
            await metrics.redis.aclose()
    assert time.monotonic() - began < 5
    assert "echotune_telemetry_mongodb_up" in text
