"""The start-cost instrument: every arm is served, and each is measured."""

from __future__ import annotations

from deploy.bench.start_cost import measure


async def test_every_arm_answers_and_costs_some_cpu(redis_server_url: str) -> None:
    """A start that failed would raise (its status is checked); a start doing less than a route
    that does nothing would mean the start was not what was measured."""
    results = await measure(redis_server_url, n=5, rounds=1)
    bare, open_start, keyed_start = results.values()
    assert 0 < bare < open_start
    assert 0 < bare < keyed_start
