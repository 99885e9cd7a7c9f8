"""The profile store: bounded wait, late reads fill the cache, one read at a time, pauses."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from redis.asyncio import Redis

from echotune.common.keys import Keys
from echotune.common.messages import ChatJob, ChatMessage, ChatOptions, ProfileStatus, Role
from echotune.common.provider_settings import BreakerSettings
from echotune.worker.profile import ProfileStore
from echotune.worker.settings import WorkerSettings

BOUND_S = 0.2  # the bound under test; the other tests wait up to 10 s (a loaded machine)
ROW = {
    "totals": [
        {
            "plays": 4,
            "ms": 1000,
            "skipped": 1,
            "known": 4,
            "first": datetime(2024, 3, 1, tzinfo=UTC),
            "last": datetime(2024, 3, 2, tzinfo=UTC),
        }
    ],
    "top_artists": [{"n": 1, "items": [{"_id": "ar:1", "name": "Nina Simone", "plays": 4}]}],
    "top_genres": [{"n": 1, "items": [{"_id": "jazz", "plays": 4}]}],
    "by_hour": [{"_id": 21, "plays": 4}],
    "by_weekday": [{"_id": 5, "plays": 4}],
    "recent": [{"_id": "t1", "track": "Sinnerman", "artists": ["Nina Simone"]}],
}


class Cursor:
    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows

    async def to_list(self) -> list[dict[str, Any]]:
        return self.rows


class FakeHistory:
    """Stands for ``listening_history``: answers when released, or fails."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.calls = 0
        self.release = asyncio.Event()
        self.release.set()
        self.error: Exception | None = None

    async def aggregate(self, pipeline: list[dict[str, Any]], **options: Any) -> Cursor:
        self.calls += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return Cursor(self.rows)


@pytest.fixture
def bound_s() -> float:
    return 10.0


@pytest.fixture
async def store(redis_server_url: str, bound_s: float) -> AsyncIterator[ProfileStore]:
    settings = WorkerSettings(
        redis_url=redis_server_url,
        namespace=f"t{uuid.uuid4().hex[:10]}",
        profile_timeout_s=bound_s,
        breaker=BreakerSettings(probe_timeout_s=max(2 * bound_s, 15)),
        mongodb_url="mongodb://127.0.0.1:1/unused",
    )
    redis = Redis.from_url(redis_server_url, decode_responses=True)
    created = ProfileStore(settings, redis, settings.keys)
    created.collection = FakeHistory([ROW])  # type: ignore[assignment]
    yield created
    await created.close()
    await redis.aclose()


def history(store: ProfileStore) -> FakeHistory:
    assert isinstance(store.collection, FakeHistory)
    return store.collection


def job(user: str = "nina", **options: Any) -> ChatJob:
    return ChatJob(
        request_id=f"r-{uuid.uuid4().hex}",
        user_id=user,
        messages=[ChatMessage(role=Role.USER, content="hi")],
        provider="demo",
        model="m",
        options=ChatOptions(**options),
        deadline_at=time.time() + 60,
    )


async def until_cached(store: ProfileStore, key: str) -> None:
    async with asyncio.timeout(10):
        while not await store.redis.exists(key):  # noqa: ASYNC110 - polled with a deadline
            await asyncio.sleep(0.01)


async def test_read_then_cached(store: ProfileStore) -> None:
    first = await store.load(job())
    second = await store.load(job())
    assert (first.use.status, first.use.source) == (ProfileStatus.USED, "mongodb")
    assert (second.use.status, second.use.source) == (ProfileStatus.USED, "cache")
    assert second.profile == first.profile
    assert first.profile is not None
    assert first.profile.top_artists[0].name == "Nina Simone"
    assert history(store).calls == 1
    ttl = await store.redis.ttl(store.keys.profile("nina", "UTC"))
    assert 0 < ttl <= store.settings.profile_cache_s


@pytest.mark.parametrize("bound_s", [BOUND_S])
async def test_a_slow_read_is_not_waited_for_and_fills_the_cache(store: ProfileStore) -> None:
    history(store).release.clear()
    for _ in range(5):  # a cache lookup that outlasts the bound itself starts no read: again
        started = time.monotonic()
        loaded = await store.load(job())
        waited = time.monotonic() - started
        assert (loaded.use.status, loaded.use.reason) == (ProfileStatus.SKIPPED, "timeout")
        assert waited < BOUND_S + 0.5, f"waited {waited:.3f} s"
        if history(store).calls:
            break
    history(store).release.set()
    await until_cached(store, store.keys.profile("nina", "UTC"))
    later = await store.load(job())
    assert (later.use.status, later.use.source) == (ProfileStatus.USED, "cache")
    assert history(store).calls == 1


async def test_one_read_per_listener_at_a_time(store: ProfileStore) -> None:
    history(store).release.clear()
    looked, all_looked, cached = 0, asyncio.Event(), store._cached

    async def counted(key: str) -> Any:
        nonlocal looked
        found = await cached(key)
        looked += 1
        if looked == 5:
            all_looked.set()
        return found

    store._cached = counted  # type: ignore[method-assign]
    waiting = [asyncio.create_task(store.load(job())) for _ in range(5)]
    await all_looked.wait()  # all five missed the cache while the one read is held
    history(store).release.set()
    loads = await asyncio.gather(*waiting)
    assert {load.use.status for load in loads} == {ProfileStatus.USED}
    assert history(store).calls == 1


async def test_a_failed_read_pauses_mongodb_but_not_the_cache(store: ProfileStore) -> None:
    await store.load(job(user="cached"))
    history(store).error = RuntimeError("MongoDB is down")
    failed = await store.load(job(user="other"))
    paused = await store.load(job(user="other"))
    cached = await store.load(job(user="cached"))
    assert (failed.use.status, failed.use.reason) == (ProfileStatus.SKIPPED, "mongodb_unavailable")
    assert (paused.use.status, paused.use.reason) == (ProfileStatus.SKIPPED, "mongodb_paused")
    assert (cached.use.status, cached.use.source) == (ProfileStatus.USED, "cache")
    assert history(store).calls == 2


async def test_no_plays_is_cached_as_empty(store: ProfileStore) -> None:
    history(store).rows = []
    assert (await store.load(job())).use.status is ProfileStatus.EMPTY
    again = await store.load(job())
    assert (again.use.status, again.use.source) == (ProfileStatus.EMPTY, "cache")
    assert history(store).calls == 1


async def test_off_reads_nothing(store: ProfileStore) -> None:
    loaded = await store.load(job(use_profile=False))
    assert loaded.use.status is ProfileStatus.OFF
    assert history(store).calls == 0


async def test_each_time_zone_has_its_own_entry(store: ProfileStore) -> None:
    await store.load(job(time_zone="Asia/Tokyo"))
    await store.load(job())
    assert history(store).calls == 2
    keys = Keys(store.keys.namespace)
    assert (
        await store.redis.exists(keys.profile("nina", "Asia/Tokyo"), keys.profile("nina", "UTC"))
        == 2
    )


async def test_an_aging_entry_is_served_and_refreshed_in_the_background(
    store: ProfileStore,
) -> None:
    key = store.keys.profile("nina", "UTC")
    await store.load(job())
    await store.redis.expire(key, 5)  # less than half of its life left
    aging = await store.load(job())
    assert (aging.use.status, aging.use.source) == (ProfileStatus.USED, "cache")
    async with asyncio.timeout(10):
        while await store.redis.ttl(key) <= 5:  # noqa: ASYNC110 - polled with a deadline
            await asyncio.sleep(0.01)
    assert history(store).calls == 2
    fresh = await store.load(job())
    assert fresh.use.source == "cache"
    assert history(store).calls == 2, "a fresh entry is not read again"
