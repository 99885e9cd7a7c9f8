"""Soak (issue 16): chats through the real stack, with and without provider failures, while
Redis is watched: used_memory and the key count level off, every key family is bounded.

``make soak`` runs it for ``ECHOTUNE_SOAK_SECONDS`` (240); ``make test`` for 30 s. Healthy and
failing phases alternate every 10 s (the "flaky" provider's upstream fails: retries, failovers
to "steady", mid-stream failures, 429s, timeouts, its breaker opening and probing), with
cancels and abandoned streams throughout. A dedicated Redis server
keeps the memory figures this test's own. After the load, the test waits for the per-request
TTLs to pass and takes the census again.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from deploy.local.servers import local_redis
from echotune.fake_llm import FakeUpstream
from tests.support.key_census import Census, take_census
from tests.support.key_census import table as census_table
from tests.support.processes import start_fake_llm
from tests.support.sse import frames
from tests.support.stack import AUTH, Stack, openai_provider, start_stack

SECONDS = float(os.environ.get("ECHOTUNE_SOAK_SECONDS", "30"))
CONCURRENCY = int(os.environ.get("ECHOTUNE_SOAK_CONCURRENCY", "12"))
PHASE_S = 10.0
RESUME_WINDOW_S = 3
MAX_STREAM_S = 15
KEY_GRACE_S = 5  # per-request keys (a cancel flag) live up to MAX_STREAM_S+RESUME_WINDOW_S+this
SETTLE_S = MAX_STREAM_S + RESUME_WINDOW_S + KEY_GRACE_S + 10
# Rate-limit windows last the limit's fixed minute: their TTL is checked, not waited for.
RATE = "rate:{scope}:{subject}"
RATE_WINDOW_MS = 60_000
TELEMETRY_MAXLEN = 1000
PROVIDERS = ["steady", "flaky"]
FLAKY_TIMEOUTS = {"connect": 1, "first_token": 1, "idle": 1, "total": 10}
FAILURES: list[list[dict[str, Any]]] = [
    [{"status": 500}, {}],  # a retry, then the answer
    [{"status": 503}],  # every attempt fails: failover to steady
    [{"status": 429, "retry_after": "0"}, {}],
    [{"disconnect_after": 2}],  # mid-stream failure: a partial error
    [{"malformed_after": 3}],
    [{"ttft_ms": 1500}],  # no first token in time (1 s): retries, then failover
]
# Bounds of the long-lived families in this stack (2 providers, 1 gateway, no sessions).
FAMILY_LIMITS = {
    "breaker:{provider}": 2,
    "breaker:{provider}:ok|fail": 4,
    "breaker:{provider}:calls": 2,
    "live:{provider}:{minute}": 2 * 11,
    "jobs": 1,
    "telemetry": 1,
    "api-keys": 1,
    "provider-selection": 1,
    "gateway:{id}:wakeup": 1,
    "workers": 1,
    RATE: 2,  # one user, one client address
}

pytestmark = [pytest.mark.serial, pytest.mark.timeout(SECONDS + 420)]


@dataclass
class Sample:
    at: float
    census: Census
    jobs_bytes: int


@dataclass
class Soak:
    outcomes: Counter[str] = field(default_factory=Counter)
    phases: Counter[str] = field(default_factory=Counter)
    samples: list[Sample] = field(default_factory=list)
    before: Census | None = None
    end_of_load: Census | None = None
    after: Census | None = None
    drained_s: float = 0.0
    leftovers: list[tuple[str, int]] = field(default_factory=list)
    """Per-request keys still there after the drain, with their TTL (ms)."""
    rate_ttls_ms: list[int] = field(default_factory=list)

    @property
    def requests(self) -> int:
        return sum(self.outcomes.values())


async def chat(
    client: httpx.AsyncClient, url: str, upstream: FakeUpstream, rng: random.Random, failing: bool
) -> str:
    """One chat; what became of it (``done:stop``, ``error:partial_answer``, ``abandoned``…)."""
    rid = f"soak-{uuid.uuid4().hex}"
    provider = rng.choice(PROVIDERS)
    if failing and rng.random() < 0.7:
        provider = "flaky"
        await upstream.script(rid, *rng.choice(FAILURES))
    action = rng.random()
    body = {"message": "soak", "provider": provider, "options": {"use_context": False}}
    cancelled = False
    async with client.stream(
        "POST", f"{url}/api/chat/stream", json=body, headers={"X-Request-Id": rid}
    ) as response:
        if response.status_code != 200:
            await response.aread()
            return f"http_{response.status_code}"
        async for frame in frames(response):
            if frame.event == "delta" and action < 0.05:
                return "abandoned"  # the client leaves; the answer runs on unread
            if frame.event == "delta" and action < 0.10 and not cancelled:
                cancelled = True
                await client.post(f"{url}/api/chat/{rid}/cancel")
            if frame.event == "done":
                return f"done:{frame.json['finish_reason']}"
            if frame.event == "error":
                return f"error:{frame.json['code']}"
    return "no_final_event"


async def sample(redis: Redis, namespace: str, started: float) -> Sample:
    census = await take_census(redis, namespace)
    jobs = await redis.memory_usage(f"{namespace}:jobs", samples=0)
    return Sample(time.monotonic() - started, census, int(jobs or 0))


async def ttls(redis: Redis, match: str) -> AsyncIterator[int]:
    async for key in redis.scan_iter(match=match, count=1000):
        yield int(await redis.pttl(key))


async def leftovers(redis: Redis, namespace: str) -> list[tuple[str, int]]:
    found = []
    async for key in redis.scan_iter(match=f"{namespace}:req:*", count=1000):
        found.append((key, int(await redis.pttl(key))))
        if len(found) >= 10:
            break
    return found


async def run_soak(stack: Stack, flaky_url: str) -> Soak:
    soak = Soak()
    redis = Redis.from_url(stack.redis_url, decode_responses=True)
    limits = httpx.Limits(max_connections=CONCURRENCY * 2 + 10, keepalive_expiry=2)
    async with httpx.AsyncClient(headers=AUTH, timeout=60, limits=limits) as client:
        upstream = FakeUpstream(client, flaky_url)
        soak.before = await take_census(redis, stack.namespace, measure=True)
        started = time.monotonic()
        deadline = started + SECONDS
        load_done = asyncio.Event()

        async def loop(n: int) -> None:
            rng = random.Random(n)
            await asyncio.sleep(n * 0.05)
            while (now := time.monotonic()) < deadline:
                failing = int((now - started) // PHASE_S) % 2 == 1
                soak.phases["failing" if failing else "healthy"] += 1
                soak.outcomes[await chat(client, stack.url, upstream, rng, failing)] += 1

        async def sampler() -> None:
            while not load_done.is_set():
                soak.samples.append(await sample(redis, stack.namespace, started))
                await asyncio.sleep(2)

        sampling = asyncio.create_task(sampler())
        await asyncio.gather(*(loop(n) for n in range(CONCURRENCY)))
        soak.end_of_load = await take_census(redis, stack.namespace, measure=True)
        load_ended = time.monotonic()
        drain_deadline = load_ended + SETTLE_S + 60
        while (
            soak.samples[-1].census.per_request_keys(but=RATE) or time.monotonic() < load_ended + 5
        ):
            if time.monotonic() > drain_deadline:
                break
            await asyncio.sleep(2)
            soak.samples.append(await sample(redis, stack.namespace, started))
        soak.drained_s = time.monotonic() - load_ended
        load_done.set()
        await sampling
        soak.after = await take_census(redis, stack.namespace, measure=True)
        soak.leftovers = await leftovers(redis, stack.namespace)
        soak.rate_ttls_ms = [ttl async for ttl in ttls(redis, f"{stack.namespace}:rate:*")]
    await redis.aclose()
    return soak


@pytest.fixture(scope="module")
async def soak() -> AsyncIterator[Soak]:
    with local_redis() as redis_url:  # used_memory of a server nobody else uses
        # Two upstreams: scripted failures reach "flaky" only, "steady" always answers.
        answers = ("--tokens", "8", "--pace-ms", "5", "--ttft-ms", "5")
        steady, steady_url = await start_fake_llm(*answers)
        flaky, flaky_url = await start_fake_llm(*answers)
        stack = await start_stack(
            redis_url,
            steady_url,
            workers=2,
            providers=[
                openai_provider(steady_url, "steady"),
                openai_provider(flaky_url, "flaky", timeouts=FLAKY_TIMEOUTS),
            ],
            ECHOTUNE_DEFAULT_PROVIDER="steady",
            ECHOTUNE_FALLBACKS=json.dumps(["steady"]),
            ECHOTUNE_RESUME_WINDOW_S=str(RESUME_WINDOW_S),
            ECHOTUNE_GATEWAY_MAX_STREAM_S=str(MAX_STREAM_S),
            ECHOTUNE_KEY_GRACE_S=str(KEY_GRACE_S),
            ECHOTUNE_BREAKER_COOLDOWN_S="1",
            ECHOTUNE_BREAKER_COOLDOWN_CAP_S="4",
            ECHOTUNE_WORKER_RETRY_BASE_S="0.05",
            ECHOTUNE_WORKER_RETRY_CAP_S="0.2",
            ECHOTUNE_WORKER_TELEMETRY_MAXLEN=str(TELEMETRY_MAXLEN),
            ECHOTUNE_GATEWAY_MAX_BACKLOG="100000",
            ECHOTUNE_GATEWAY_HEARTBEAT_S="5",
            ECHOTUNE_GATEWAY_JOBS_TRIM_S="2",
            ECHOTUNE_LOG_LEVEL="WARNING",
        )
        try:
            result = await run_soak(stack, flaky_url)
            report(result)
            yield result
        finally:
            await stack.stop()
            await steady.stop()
            await flaky.stop()


def report(soak: Soak) -> None:
    assert soak.before
    assert soak.end_of_load
    assert soak.after
    peak = max(soak.samples, key=lambda s: s.census.used_memory)
    most = max(soak.samples, key=lambda s: s.census.total_keys)
    print(
        f"\nsoak: {soak.requests} chats in {SECONDS:.0f} s ({dict(soak.phases)}) with "
        f"{CONCURRENCY} clients; outcomes {dict(soak.outcomes.most_common())}\n"
        f"used_memory before {soak.before.used_memory / 2**20:.2f} MiB, peak "
        f"{peak.census.used_memory / 2**20:.2f} MiB (at {peak.at:.0f} s), after "
        f"{soak.after.used_memory / 2**20:.2f} MiB (TTLs passed {soak.drained_s:.0f} s after "
        f"the load); keys before {soak.before.total_keys}, peak {most.census.total_keys}, after "
        f"{soak.after.total_keys}; jobs stream {soak.after.lengths['jobs']} entries "
        f"({peak.jobs_bytes / 1024:.0f} KiB at peak), telemetry "
        f"{soak.after.lengths['telemetry']} entries"
    )
    print(
        census_table(
            [("before", soak.before), ("end of load", soak.end_of_load), ("after", soak.after)]
        )
    )
    if soak.leftovers:
        print(f"per-request keys left after {soak.drained_s:.0f} s (key, TTL ms): {soak.leftovers}")
    print("time s | used_memory MiB | keys | per-request keys | jobs KiB")
    for s in soak.samples[:: max(len(soak.samples) // 20, 1)]:
        c = s.census
        print(
            f"{s.at:6.0f} | {c.used_memory / 2**20:6.2f} | {c.total_keys:5d} | "
            f"{c.per_request_keys():5d} | {s.jobs_bytes / 1024:6.0f}"
        )


def test_redis_memory_and_keys_level_off(soak: Soak) -> None:
    assert soak.before
    assert soak.after
    assert not [k for s in soak.samples for k in s.census.unknown], "a key family without bound"
    assert not soak.after.unknown
    assert soak.requests >= 500
    assert soak.phases["healthy"]
    assert soak.phases["failing"]
    assert not {o for o in soak.outcomes if not o.startswith(("done:", "error:", "abandoned"))}
    assert soak.after.per_request_keys(but=RATE) == 0, f"left after their TTLs: {soak.leftovers}"
    assert soak.rate_ttls_ms, "the load counted no chat start"
    assert all(0 < ttl <= RATE_WINDOW_MS for ttl in soak.rate_ttls_ms), soak.rate_ttls_ms
    for pattern, count in soak.after.keys.items():
        assert count <= FAMILY_LIMITS[pattern], (pattern, count)
    assert soak.after.lengths["telemetry"] <= TELEMETRY_MAXLEN + 200  # approximate trimming
    # Memory that no key accounts for (buffers, script cache…) does not pile up either.
    grown = soak.after.used_memory - soak.before.used_memory
    in_keys = sum(soak.after.bytes.values()) - sum(soak.before.bytes.values())
    assert grown - in_keys <= 2 * 2**20, f"{grown - in_keys} bytes of used_memory in no key"
    if SECONDS >= 3 * SETTLE_S:  # long enough to see a plateau once the first TTLs passed
        level_off(soak)


def level_off(soak: Soak) -> None:
    """In the steady state, the second half holds no more keys or memory than the first."""
    load = [s for s in soak.samples if SETTLE_S <= s.at <= SECONDS]
    first, second = load[: len(load) // 2], load[len(load) // 2 :]

    def keys(samples: list[Sample]) -> int:
        return max(s.census.total_keys for s in samples)

    def memory(samples: list[Sample]) -> int:  # the jobs stream is reported on its own
        return max(s.census.used_memory - s.jobs_bytes for s in samples)

    assert keys(second) <= keys(first) * 1.25, (keys(first), keys(second))
    assert memory(second) <= memory(first) * 1.25, (memory(first), memory(second))


def test_jobs_stream_is_trimmed(soak: Soak) -> None:
    assert soak.after
    assert soak.after.lengths["jobs"] <= 1000, f"{soak.after.lengths['jobs']} jobs entries kept"
