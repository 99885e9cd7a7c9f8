"""The worker's idle deadline."""

from __future__ import annotations

import asyncio

import pytest

from echotune.worker.deadline import Deadline


async def test_it_fires_once_the_clock_passes_it_and_says_so() -> None:
    deadline = Deadline()
    loop = asyncio.get_running_loop()
    deadline.move(loop.time() + 0.05)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.Event().wait()
    assert deadline.expired()
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    deadline.close()


async def test_moving_it_postpones_it() -> None:
    deadline = Deadline()
    loop = asyncio.get_running_loop()
    began = loop.time()
    for _ in range(8):  # each move leaves 0.4 s to spare: a stalled loop does not fire it
        deadline.move(loop.time() + 0.5)
        await asyncio.sleep(0.1)
    deadline.close()
    assert loop.time() - began >= 0.8  # past the first deadline, never fired


async def test_a_cancel_from_elsewhere_is_not_taken_for_the_deadline() -> None:
    async def waits() -> bool:
        deadline = Deadline()
        deadline.move(asyncio.get_running_loop().time() + 60)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return deadline.expired()
        finally:
            deadline.close()
        return True

    task = asyncio.create_task(waits())
    await asyncio.sleep(0)
    task.cancel()
    assert await task is False
