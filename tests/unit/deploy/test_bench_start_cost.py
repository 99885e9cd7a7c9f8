"""The start-cost instrument: every arm is served, and each is measured."""

from __future__ import annotations

from deploy.bench.start_cost import measure


async def test_every_arm_answers_and_costs_some_cpu(redis_server_url: str) -> None:
    """A start that failed would raise: each response's status is checked."""
    results = await measure(redis_server_url, n=5, rounds=1)
    assert len(results) == 3
    assert all(us > 0 for us in results.values())
