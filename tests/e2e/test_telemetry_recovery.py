"""The telemetry writer survives MongoDB outages and crashes: nothing lost, nothing doubled.

Run with ``-s`` to see the loss and duplicate counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from bson import ObjectId
from redis.asyncio import Redis

from deploy.local.servers import RedisServer, SecantusServer
from echotune.common.keys import TELEMETRY_GROUP
from echotune.common.mongo import PROVIDER_TELEMETRY
from echotune.common.redis import ensure_group
from echotune.telemetry.migrations import migrate
from echotune.telemetry.writer import TelemetryWriter, to_document
from tests.support.telemetry import TelemetryHarness, make_event, scrape

pytestmark = pytest.mark.e2e


async def test_mongodb_outage_loses_and_duplicates_nothing(
    redis_server_url: str, tmp_path: Path, client: httpx.AsyncClient
) -> None:
    server = SecantusServer(str(tmp_path / "mongo"))
    harness = await TelemetryHarness.create(redis_server_url, await asyncio.to_thread(server.start))
    proc, url = await harness.start("telemetry-outage")
    try:
        rng, provider = random.Random(5), "outage"
        events = [make_event(provider, rng) for _ in range(400)]
        await harness.publish(events[:100])
        await harness.wait_drained()
        await asyncio.to_thread(server.stop)
        mark = len(proc.lines)
        await harness.publish(events[100:300])
        await proc.wait_for_line(r"MongoDB write of \d+ events failed", timeout=15, start=mark)
        held = (await harness.backlog())[1]
        await harness.publish(events[300:])
        during = await scrape(client, url)
        assert during["echotune_telemetry_mongodb_up"] == 0
        assert during["echotune_telemetry_lag"] > 0  # not even read while the batch is held
        assert during["echotune_telemetry_pending"] == held
        assert during["echotune_telemetry_backlog_age_seconds"] > 0
        await asyncio.to_thread(server.start)  # same port, same storage path
        await harness.wait_drained(timeout=30)

        ids = {doc["_id"] for doc in await harness.documents(provider)}
        lost = len({e.event_id for e in events} - ids)
        duplicated = await harness.rollup_count(provider) - len(ids)
        failures = (await scrape(client, url))["echotune_telemetry_write_failures_total"]
        print(
            f"\noutage: published {len(events)}, written {len(ids)}, lost {lost}, "
            f"duplicated {duplicated}; {held} entries held pending, {failures:.0f} failed writes"
        )
        assert (lost, duplicated, len(ids)) == (0, 0, len(events))
        assert held > 0
        assert await harness.uncounted(provider) == 0
    finally:
        await proc.stop()
        with contextlib.suppress(Exception):
            await harness.close()
        await asyncio.to_thread(server.stop)


async def test_sigkilled_writer_is_taken_over(
    redis_server_url: str, mongo_server_url: str, client: httpx.AsyncClient
) -> None:
    harness = await TelemetryHarness.create(redis_server_url, mongo_server_url)
    rng, provider = random.Random(6), "crash"
    events = [make_event(provider, rng) for _ in range(2000)]
    await harness.publish(events)  # before any writer runs: the group starts at 0
    first, _ = await harness.start(
        "telemetry-a", ECHOTUNE_TELEMETRY_CONSUMER="writer-a", ECHOTUNE_TELEMETRY_BATCH_SIZE="100"
    )
    second = None
    try:
        # Freeze the writer, and kill it only if it holds a batch; nothing pushes that state,
        # so this polls XINFO / XPENDING every 5 ms, bounded.
        async with asyncio.timeout(20):
            while True:
                group = (await harness.redis.xinfo_groups(harness.keys.telemetry))[0]
                read = group["entries-read"]  # nil while Redis cannot tell; then from the lag
                if read is None:
                    read = len(events) - (group["lag"] if group["lag"] is not None else len(events))
                if read >= 300 and await harness.pending_of("writer-a"):
                    os.killpg(first.pid, signal.SIGSTOP)
                    if held := await harness.pending_of("writer-a"):
                        first.kill()
                        break
                    os.killpg(first.pid, signal.SIGCONT)
                await asyncio.sleep(0.005)
        await first.stop()
        second, url = await harness.start("telemetry-b", ECHOTUNE_TELEMETRY_CONSUMER="writer-b")
        await harness.wait_drained(timeout=30)

        ids = {doc["_id"] for doc in await harness.documents(provider)}
        lost = len({e.event_id for e in events} - ids)
        duplicated = await harness.rollup_count(provider) - len(ids)
        metrics = await scrape(client, url)
        reclaimed = metrics["echotune_telemetry_reclaimed_entries_total"]
        recovered = metrics["echotune_telemetry_rollups_recovered_total"]
        print(
            f"\nSIGKILL: writer A held {held} entries; B reclaimed {reclaimed:.0f}, completed "
            f"the rollups of {recovered:.0f} documents; lost {lost}, duplicated {duplicated}"
        )
        assert (lost, duplicated, len(ids)) == (0, 0, len(events))
        assert reclaimed >= held
        assert await harness.uncounted(provider) == 0
    finally:
        first.kill()
        if second is not None:
            await second.stop()
        await harness.close()


async def test_reclaimer_counts_what_a_crash_left_uncounted_once(
    redis_server_url: str, mongo_server_url: str, client: httpx.AsyncClient
) -> None:
    """A writer read 61 entries, stored two batches of them, counted only the first in the
    rollups and died before acknowledging: its successor counts the second batch, once. The
    61st entry already failed 50 deliveries: it is dead-lettered, not retried again."""
    harness = await TelemetryHarness.create(redis_server_url, mongo_server_url)
    rng, provider = random.Random(7), "ghost"
    events = [make_event(provider, rng) for _ in range(60)]
    poison = make_event(provider, rng)
    await harness.publish([*events, poison])
    await ensure_group(harness.redis, harness.keys.telemetry, TELEMETRY_GROUP)
    raw = Redis.from_url(harness.redis_url)  # entries hold binary FastStream envelopes
    read = await raw.xreadgroup(TELEMETRY_GROUP, "ghost", {harness.keys.telemetry: ">"}, count=100)
    poison_id = read[0][1][-1][0]
    await raw.xclaim(
        harness.keys.telemetry, TELEMETRY_GROUP, "ghost", 0, [poison_id], retrycount=50
    )
    await raw.aclose()
    assert len(read[0][1]) == len(events) + 1
    await migrate(harness.db, 30, 400)
    ghost = TelemetryWriter(harness.db, timedelta(hours=24))
    await ghost.write(events[:30], ObjectId())  # stored and counted, then no ack
    batch = ObjectId()
    uncounted = [to_document(event, batch) for event in events[30:]]
    await harness.db[PROVIDER_TELEMETRY].insert_many(uncounted)  # stored, died before counting
    assert await harness.rollup_count(provider) == 30

    # Slow enough that it never reclaims its own entries or times out a write on a loaded
    # machine (either would count twice); the ghost's entries wait 4 s for it.
    proc, url = await harness.start(
        "telemetry-successor",
        ECHOTUNE_TELEMETRY_CLAIM_IDLE_MS="4000",
        ECHOTUNE_TELEMETRY_MONGO_TIMEOUT_MS="10000",
    )
    try:
        await harness.wait_drained()
        metrics = await scrape(client, url)
        assert await harness.rollup_count(provider) == len(events)
        assert await harness.uncounted(provider) == 0
        assert metrics["echotune_telemetry_reclaimed_entries_total"] == len(events) + 1
        assert metrics["echotune_telemetry_rollups_recovered_total"] == 30
        assert metrics["echotune_telemetry_events_written_total"] == 0
        letters = await harness.redis.xrange(harness.keys.telemetry_dead_letters)
        assert [(f["entryId"], f["kind"]) for _, f in letters] == [
            (poison_id.decode(), "too_many_deliveries")
        ]
        assert poison.event_id in letters[0][1]["payload"]
    finally:
        await proc.stop()
        await harness.close()


async def test_redis_losing_its_data_does_not_stop_the_writer(
    volatile_redis: RedisServer, mongo_server_url: str, client: httpx.AsyncClient
) -> None:
    """FastStream stopped the writer's subscribers for good once the telemetry group vanished."""
    harness = await TelemetryHarness.create(volatile_redis.url, mongo_server_url)
    proc, url = await harness.start("telemetry-redis-loss")
    try:
        rng, provider = random.Random(9), "redis-loss"
        await harness.publish([make_event(provider, rng)])
        await harness.wait_drained()
        volatile_redis.stop()
        volatile_redis.start()  # empty: no stream, no consumer group
        after = [make_event(provider, rng) for _ in range(5)]
        await harness.publish(after)
        async with asyncio.timeout(20):  # documents and health push nothing to block on
            while len(await harness.documents(provider)) < 1 + len(after):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            # Each subscriber is restarted once it has stopped: the reclaimer may stop later.
            while (await client.get(f"{url}/healthz")).status_code != 204:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    finally:
        await proc.stop()
        await harness.close()
