"""How a held job's production ends: what becomes the answer's end, what is left for a reclaim."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import SlotNotCoveredError

from echotune.common.messages import ErrorEvent
from echotune.common.request_stream import Take, Taken
from echotune.worker.execute import _produce
from echotune.worker.inflight import InFlight
from tests.unit.worker.test_handlers import long_job


def failing(exc: Exception) -> Any:
    async def produce() -> None:
        raise exc

    return SimpleNamespace(produce=produce, partial=[])


async def end_of(exc: Exception) -> Any:
    """Built per call: a module-level job's 30 s deadline had passed when xdist ran it later."""
    held, taken = InFlight("r-00000001", "1-1"), Taken(Take.TAKEN, epoch=1)
    return await _produce(long_job("r-00000001"), held, taken, failing(exc), SimpleNamespace())


async def test_a_bug_ends_the_answer_with_an_internal_error() -> None:
    final = await end_of(OverflowError("date value out of range"))
    assert isinstance(final, ErrorEvent)
    assert (final.code.value, final.partial) == ("internal_error", False)


@pytest.mark.parametrize(
    "exc", [RedisConnectionError("gone"), SlotNotCoveredError("a cluster slot has no node")]
)
async def test_redis_away_leaves_the_job_for_a_reclaim(exc: Exception) -> None:
    """A cluster's errors are not RedisErrors: a slot outage ended answers for good."""
    with pytest.raises(type(exc)):
        await end_of(exc)
