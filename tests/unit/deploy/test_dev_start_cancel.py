"""`make dev` start-up steps that block (Redis, SecantusDB) under a Ctrl-C."""

from __future__ import annotations

import asyncio
import gc
import threading

import pytest

from deploy.local.dev import _in_thread


async def test_a_cancelled_blocking_start_is_waited_for_and_its_failure_not_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    started, release, ended = threading.Event(), threading.Event(), threading.Event()

    def start() -> str:
        started.set()
        release.wait(10)
        ended.set()
        raise RuntimeError("the server got the same Ctrl-C")

    step = asyncio.create_task(_in_thread(start))
    await asyncio.to_thread(started.wait, 10)
    step.cancel()
    await asyncio.sleep(0.05)
    assert not step.done(), "the cancel must wait for the blocking start to end"
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await step
    assert ended.is_set()
    del step
    gc.collect()
    await asyncio.sleep(0)
    assert "never retrieved" not in caplog.text
