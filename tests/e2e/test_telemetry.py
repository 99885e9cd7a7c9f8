"""The telemetry writer as a real process: Redis stream in, MongoDB documents and rollups out.

Run with ``-s`` to see the measured lag, throughput and outage/crash counts.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from bson import ObjectId
from pymongo.errors import OperationFailure, WriteError

from echotune.common.histogram import MAX_RELATIVE_ERROR
from echotune.common.messages import TelemetryEvent
from echotune.common.mongo import PROVIDER_ROLLUPS, PROVIDER_TELEMETRY
from echotune.common.rollup_layout import field_key
from echotune.telemetry.migrations import migrate
from tests.support.telemetry import (
    TelemetryHarness,
    exact_quantile,
    make_event,
    merged_quantile,
    scrape,
)

pytestmark = pytest.mark.e2e
DAY_S = 86_400


@pytest.fixture(scope="module")
async def harness(redis_server_url: str, mongo_server_url: str) -> AsyncIterator[TelemetryHarness]:
    running = await TelemetryHarness.create(redis_server_url, mongo_server_url)
    yield running
    await running.close()


@pytest.fixture(scope="module")
async def writer(harness: TelemetryHarness) -> AsyncIterator[str]:
    """One telemetry process on the harness's namespace and database; its HTTP URL. No test
    here needs a quick reclaim or timeout: on a loaded machine they counted a write twice."""
    proc, url = await harness.start(
        ECHOTUNE_TELEMETRY_CLAIM_IDLE_MS="10000", ECHOTUNE_TELEMETRY_MONGO_TIMEOUT_MS="10000"
    )
    yield url
    await proc.stop()


def percentiles(values: list[float]) -> str:
    return ", ".join(f"p{round(q * 100)} {exact_quantile(values, q):.1f} ms" for q in (0.5, 0.95))


async def publish_timed(harness: TelemetryHarness, events: list[TelemetryEvent]) -> list[float]:
    """Publish one event every 3 ms; per event, ms from publish until its document is seen
    (change stream; a standalone MongoDB has none, then a 5 ms poll stands in)."""
    published: dict[str, float] = {}
    seen: dict[str, float] = {}
    collection = harness.db[PROVIDER_TELEMETRY]

    async def poll() -> None:
        while len(seen) < len(events):
            unseen = [e.event_id for e in events if e.event_id not in seen]
            async for doc in collection.find({"_id": {"$in": unseen}}, {"_id": 1}):
                seen[doc["_id"]] = time.perf_counter()
            await asyncio.sleep(0.005)

    try:
        stream = await collection.watch([{"$match": {"operationType": "insert"}}])
    except OperationFailure:
        stream = None

    async def watch() -> None:
        assert stream is not None
        async for change in stream:
            seen[change["documentKey"]["_id"]] = time.perf_counter()
            if len(seen) >= len(events):
                return

    task = asyncio.create_task(watch() if stream else poll())
    for event in events:
        published[event.event_id] = time.perf_counter()
        await harness.publish([event])
        await asyncio.sleep(0.003)
    await asyncio.wait_for(task, 20)
    if stream is not None:
        await stream.close()
    return [(seen[i] - published[i]) * 1000 for i in published]


async def test_events_become_documents_and_exact_rollups(
    harness: TelemetryHarness, writer: str
) -> None:
    rng, provider = random.Random(1), f"p-{uuid.uuid4().hex[:6]}"
    events = [make_event(provider, rng) for _ in range(300)]
    lags = await publish_timed(harness, events)
    await harness.wait_drained()
    print(f"\ntelemetry lag publish → document, {len(lags)} events: {percentiles(lags)}")

    docs = {doc["_id"]: doc for doc in await harness.documents(provider)}
    assert len(docs) == len(events)
    for event in events:
        expected = event.model_dump(mode="json", by_alias=True, exclude={"event_id", "ts"})
        doc = dict(docs[event.event_id])
        assert abs((doc.pop("ts") - event.ts).total_seconds()) < 0.001  # BSON dates are ms
        assert isinstance(doc.pop("batch"), ObjectId)
        assert {k: v for k, v in doc.items() if k != "_id"} == expected
    assert await harness.uncounted(provider) == 0

    rollups = await harness.rollups(provider)
    for model in ("model-a", "model-b"):
        raw = [d for d in docs.values() if d["model"] == model]
        ups = [r for r in rollups if r["model"] == model]
        assert all(r["_id"] == f"{provider}|{model}|{r['minute'].isoformat()}" for r in ups)
        assert sum(r["count"] for r in ups) == len(raw)
        assert sum(r.get("successes", 0) for r in ups) == sum(d["success"] for d in raw)
        for code in {d["errorCode"] for d in raw if not d["success"]}:
            expected_errors = sum(d["errorCode"] == code for d in raw)
            assert sum(r["errors"].get(field_key(code), 0) for r in ups) == expected_errors
        assert sum(r["tokensIn"] for r in ups) == sum(d["tokensIn"] for d in raw)
        assert sum(r["tokensOut"] for r in ups) == sum(d["tokensOut"] for d in raw)
        latency_sum = sum(d["latencyMs"] for d in raw)
        assert sum(r["latencyMsSum"] for r in ups) == pytest.approx(latency_sum)
        assert sum(r.get("ttftCount", 0) for r in ups) == sum(d["ttftMs"] is not None for d in raw)

    for field, histogram in (("latencyMs", "latencyHist"), ("ttftMs", "ttftHist")):
        values = [d[field] for d in docs.values() if d[field] is not None]
        for q in (0.5, 0.9, 0.95, 0.99):
            exact, estimate = exact_quantile(values, q), merged_quantile(rollups, histogram, q)
            assert estimate is not None
            assert abs(estimate - exact) / exact <= MAX_RELATIVE_ERROR + 1e-9, (field, q)


async def test_throughput_in_batches(
    harness: TelemetryHarness, writer: str, client: httpx.AsyncClient
) -> None:
    rng, provider = random.Random(2), f"burst-{uuid.uuid4().hex[:6]}"
    events = [make_event(provider, rng) for _ in range(2000)]
    before = await scrape(client, writer)
    started = time.perf_counter()
    await asyncio.gather(*(harness.publish(events[i::20]) for i in range(20)))
    await harness.wait_drained(timeout=40)
    elapsed = time.perf_counter() - started
    after = await scrape(client, writer)
    assert await harness.rollup_count(provider) == len(events)
    batches = (
        after["echotune_telemetry_batch_size_count"] - before["echotune_telemetry_batch_size_count"]
    )
    write_s = (
        after["echotune_telemetry_write_seconds_sum"]
        - before["echotune_telemetry_write_seconds_sum"]
    )
    print(
        f"\nthroughput: {len(events)} events written in {elapsed:.2f} s = "
        f"{len(events) / elapsed:.0f} events/s, {batches:.0f} batches "
        f"(mean {len(events) / batches:.0f} events), MongoDB time per batch "
        f"{write_s / batches * 1000:.1f} ms"
    )


async def test_duplicates_are_stored_and_counted_once(
    harness: TelemetryHarness, writer: str, client: httpx.AsyncClient
) -> None:
    provider = f"dup-{uuid.uuid4().hex[:6]}"
    event = make_event(provider, random.Random(3), success=True)
    before = await scrape(client, writer)
    await harness.publish([event, event])  # twice in a row: usually in one batch
    await harness.wait_drained()
    await harness.publish([event])  # and once more later, as a redelivery would
    await harness.wait_drained()
    after = await scrape(client, writer)
    assert [d["_id"] for d in await harness.documents(provider)] == [event.event_id]
    assert await harness.rollup_count(provider) == 1
    name = "echotune_telemetry_duplicates_skipped_total"
    assert after[name] - before[name] == 2


@pytest.mark.cluster
async def test_malformed_events_are_dead_lettered_with_a_reason(
    harness: TelemetryHarness, writer: str
) -> None:
    provider = f"dlq-{uuid.uuid4().hex[:6]}"
    rng = random.Random(4)
    good = make_event(provider, rng)
    dead_before = await harness.redis.xlen(harness.keys.telemetry_dead_letters)
    await harness.publish_body({"provider": provider})
    await harness.publish_body(
        {**make_event(provider, rng).model_dump(mode="json", by_alias=True), "latencyMs": -5}
    )
    await harness.publish_body({**good.model_dump(mode="json", by_alias=True), "schemaVersion": 2})
    await harness.publish_body("not an object")
    await harness.redis.xadd(harness.keys.telemetry, {"__data__": b"\xff\xfe broken"})
    await harness.redis.xadd(harness.keys.telemetry, {"plain": "entry"})
    await harness.publish([make_event("", rng)])  # passes the contract, not the validator
    surrogate = make_event(provider, rng).model_dump_json(by_alias=True).replace("dlq-", "\\ud800")
    await harness.publish_body(surrogate.encode())  # valid JSON, but no BSON string can hold it
    await harness.publish([good])
    await harness.wait_drained()

    letters = (await harness.redis.xrange(harness.keys.telemetry_dead_letters))[dead_before:]
    kinds = sorted(fields["kind"] for _, fields in letters)
    assert kinds == sorted(
        [
            "invalid_event",
            "invalid_event",
            "bad_version",
            "bad_json",
            "bad_json",
            "invalid_event",
            "rejected",
            "rejected",
        ]
    )
    for _, fields in letters:
        assert fields["reason"]
        assert fields["payload"]
        assert fields["entryId"]
    reasons = " | ".join(fields["reason"] for _, fields in letters)
    assert "latencyMs" in reasons
    assert "schemaVersion 2" in reasons
    assert "validator" in reasons
    assert "not storable as BSON" in reasons
    assert [d["_id"] for d in await harness.documents(provider)] == [good.event_id]


async def test_validators_and_ttl_indexes_exist(harness: TelemetryHarness, writer: str) -> None:
    options = {c["name"]: c["options"] async for c in await harness.db.list_collections()}
    for name in (PROVIDER_TELEMETRY, PROVIDER_ROLLUPS):
        assert "$jsonSchema" in options[name]["validator"]
        assert options[name]["validationLevel"] == "strict"
        assert options[name]["validationAction"] == "error"

    async def indexes(name: str) -> dict[tuple[tuple[str, int], ...], dict[str, object]]:
        info = await harness.db[name].index_information()
        return {tuple((f, int(d)) for f, d in i["key"]): i for i in info.values()}

    raw, rollups = await indexes(PROVIDER_TELEMETRY), await indexes(PROVIDER_ROLLUPS)
    assert (("provider", 1), ("ts", -1)) in raw
    assert (("requestId", 1),) in raw
    assert raw[(("ts", 1),)]["expireAfterSeconds"] == 30 * DAY_S
    assert rollups[(("minute", -1),)]["expireAfterSeconds"] == 400 * DAY_S
    assert (("provider", 1), ("model", 1), ("minute", -1)) in rollups

    with pytest.raises(WriteError) as refused:
        await harness.db[PROVIDER_TELEMETRY].insert_one({"_id": "bad", "provider": 42})
    assert refused.value.code == 121
    with pytest.raises(WriteError) as refused:
        await harness.db[PROVIDER_ROLLUPS].insert_one({"_id": "bad", "count": "many"})
    assert refused.value.code == 121

    scratch = harness.mongo[f"{harness.namespace}_migrations"]
    try:
        for _ in range(2):  # idempotent
            await migrate(scratch, 30, 400)
        await migrate(scratch, 7, 90)  # a changed TTL is applied in place
        ttl = await scratch[PROVIDER_TELEMETRY].index_information()
        assert ttl["ts_ttl"]["expireAfterSeconds"] == 7 * DAY_S
        assert len(ttl) == 5
        minute = (await scratch[PROVIDER_ROLLUPS].index_information())["minute_ttl"]
        assert minute["expireAfterSeconds"] == 90 * DAY_S
    finally:
        await harness.mongo.drop_database(scratch.name)


async def test_metrics_and_health(writer: str, client: httpx.AsyncClient) -> None:
    assert (await client.get(f"{writer}/healthz")).status_code == 204
    response = await client.get(f"{writer}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    for name in (
        "events_written_total",
        "duplicates_skipped_total",
        "dead_letters_total",
        "batch_size_bucket",
        "write_seconds_bucket",
        "stream_length",
        "pending",
        "lag",
        "backlog_age_seconds",
        "dlq_length",
        "reclaimed_entries_total",
    ):
        assert f"\nechotune_telemetry_{name}" in response.text, name
