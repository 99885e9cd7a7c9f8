"""A reader's inbox: entries in order, timed waits that end on time without a timer per entry."""

from __future__ import annotations

import asyncio
import time

from echotune.gateway.chat.relay import Entry, Inbox


def entry(n: int) -> Entry:
    return Entry(f"1-{n}", "delta", "{}")


async def test_entries_come_out_in_order_and_a_waiting_reader_is_woken() -> None:
    inbox = Inbox()
    waiting = asyncio.create_task(inbox.get_within(5.0))
    await asyncio.sleep(0)
    inbox.put_nowait(entry(1))
    inbox.put_nowait(entry(2))
    assert await waiting == entry(1)
    assert await inbox.get_within(5.0) == entry(2)
    assert inbox.empty()


async def test_a_timed_wait_ends_empty_on_time() -> None:
    inbox = Inbox()
    started = time.monotonic()
    assert await inbox.get_within(0.1) is None
    assert 0.09 <= time.monotonic() - started < 1.0


async def test_a_shorter_wait_after_a_longer_one_is_not_held_by_the_older_timer() -> None:
    inbox = Inbox()
    inbox.put_nowait(entry(1))
    long_wait = asyncio.create_task(inbox.get_within(30.0))
    assert await long_wait == entry(1)  # served at once, its 30 s timer never armed
    first = asyncio.create_task(inbox.get_within(30.0))
    await asyncio.sleep(0)
    inbox.put_nowait(entry(2))
    assert await first == entry(2)  # leaves a timer armed for 30 s
    started = time.monotonic()
    assert await inbox.get_within(0.1) is None
    assert time.monotonic() - started < 1.0
    inbox.close()
