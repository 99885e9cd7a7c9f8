"""Held rounds: busy, at least the hold apart; what comes during a hold goes in its round."""

from __future__ import annotations

import asyncio

from echotune.worker.hold import Hold, held_rounds

HOLD_S = 0.05


def test_the_hold_rises_from_none_to_the_most_at_twice_the_answers() -> None:
    hold = Hold(most_s=0.1, from_writers=50)
    assert [hold.seconds(n) for n in (10, 50, 75, 100, 500)] == [0.0, 0.0, 0.05, 0.1, 0.1]


async def test_what_comes_during_a_hold_goes_in_its_round_and_no_empty_round_follows() -> None:
    loop, wake, came = asyncio.get_running_loop(), asyncio.Event(), []
    rounds: list[tuple[float, list[str]]] = []
    sent = asyncio.Event()

    async def send() -> None:
        rounds.append((loop.time(), came[:]))
        came.clear()
        sent.set()

    def comes(item: str) -> None:
        came.append(item)
        wake.set()

    runner = asyncio.create_task(held_rounds(wake, lambda: HOLD_S, send))
    try:
        comes("a")
        await asyncio.wait_for(sent.wait(), 5)
        sent.clear()
        comes("b")  # the loop now waits out the hold
        await asyncio.sleep(HOLD_S / 5)
        comes("c")  # during that wait
        await asyncio.wait_for(sent.wait(), 5)
        await asyncio.sleep(4 * HOLD_S)  # an empty round would come a hold later
    finally:
        runner.cancel()
    assert [items for _, items in rounds] == [["a"], ["b", "c"]]
    assert rounds[1][0] - rounds[0][0] >= HOLD_S - 0.002  # the loop's clock is coarse
