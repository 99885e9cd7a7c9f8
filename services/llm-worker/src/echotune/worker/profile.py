"""The listener's profile for the prompt: a short Redis cache in front of one MongoDB
aggregation (``echotune.common.listening_profile``), never waited for beyond the bound.

A read that outlives the wait is not cancelled (PyMongo calls are bounded by their own
timeouts, not cancelled from outside): it finishes in the background and fills the cache for
the listener's next answer. A process runs one read per listener and time zone at a time. A
failed read leaves MongoDB alone for a while; the cache still answers meanwhile.

An entry past half its life is served and read again in the background, so a listener who
keeps talking keeps a cached profile.

The store has a MongoDB client of its own: server selection fails within the wait (a
MongoDB that is down is known as such at once) while a query may run for
``profile_query_timeout_s`` (``maxTimeMS`` and the socket timeout).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis

from echotune.common.keys import Keys
from echotune.common.listening_profile import ListeningProfile, profile_pipeline, read_profile
from echotune.common.messages import ChatJob, ProfileStatus, ProfileUse
from echotune.common.mongo import LISTENING_HISTORY, create_mongo
from echotune.worker.mongo_pause import MongoPause
from echotune.worker.settings import WorkerSettings

log = logging.getLogger(__name__)
Source = Literal["cache", "mongodb"]


class Skipped(Exception):
    """The profile cannot be had for this answer: ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class LoadedProfile:
    """How the profile was had (``use``, features not yet chosen) and the profile itself."""

    use: ProfileUse
    profile: ListeningProfile | None = None


class ProfileStore:
    def __init__(self, settings: WorkerSettings, redis: Redis, keys: Keys) -> None:
        query_ms = int(settings.profile_query_timeout_s * 1000)
        self.mongo = create_mongo(
            settings.mongodb_url,
            timeout_ms=int(settings.profile_timeout_s * 1000),
            socket_timeout_ms=query_ms + 1000,
        )
        self.collection = self.mongo.get_default_database("echotune")[LISTENING_HISTORY]
        self.redis, self.keys, self.settings = redis, keys, settings
        self.pause = MongoPause()
        self._reads: dict[str, asyncio.Task[ListeningProfile | None]] = {}

    async def load(self, job: ChatJob) -> LoadedProfile:
        """The job's profile, or why there is none; returns within ``profile_timeout_s``."""
        if not job.options.use_profile:
            return LoadedProfile(ProfileUse(status=ProfileStatus.OFF))
        started = time.monotonic()
        zone = job.options.time_zone or "UTC"
        try:
            async with asyncio.timeout(self.settings.profile_timeout_s):
                profile, source = await self._get(job.user_id, zone)
        except TimeoutError:
            return _skipped("timeout", started)
        except Skipped as skipped:
            return _skipped(skipped.reason, started)
        status = ProfileStatus.EMPTY if profile is None else ProfileStatus.USED
        use = ProfileUse(status=status, source=source, load_ms=_since(started))
        return LoadedProfile(use, profile)

    async def _get(self, user_id: str, zone: str) -> tuple[ListeningProfile | None, Source]:
        key = self.keys.profile(user_id, zone)
        cached, ttl = await self._cached(key)
        if cached is not None:
            stale = ttl < self.settings.profile_cache_s / 2
            if stale and key not in self._reads and not self.pause.active:
                self._start(key, user_id, zone)  # refreshed in the background
            return cached[0], "cache"
        if self.pause.active:
            raise Skipped("mongodb_paused")
        read = self._reads.get(key) or self._start(key, user_id, zone)
        try:
            return await asyncio.shield(read), "mongodb"
        except Exception as exc:  # already logged, and MongoDB paused, by _finished
            raise Skipped("mongodb_unavailable") from exc

    async def _cached(self, key: str) -> tuple[tuple[ListeningProfile | None] | None, float]:
        """``(profile,)`` from the cache (``(None,)``: cached as having no plays) or None, and
        the entry's remaining life in seconds."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.get(key)
                pipe.ttl(key)
                raw, ttl = await pipe.execute()
        except Exception as exc:  # the cache is optional
            log.warning("profile cache unreadable: %r", exc)
            return None, 0
        if raw is None:
            return None, 0
        if raw == "null":
            return (None,), ttl
        try:
            return (ListeningProfile.model_validate_json(raw),), ttl
        except ValueError:
            log.warning("profile cache entry %s unreadable; reading it again", key)
            return None, 0

    def _start(self, key: str, user_id: str, zone: str) -> asyncio.Task[ListeningProfile | None]:
        read = asyncio.create_task(self._read(key, user_id, zone))
        self._reads[key] = read
        read.add_done_callback(lambda done: self._finished(key, done))
        return read

    def _finished(self, key: str, read: asyncio.Task[ListeningProfile | None]) -> None:
        self._reads.pop(key, None)
        if not read.cancelled() and (exc := read.exception()) is not None:
            self.pause.failed(exc, "listening profile unavailable, answering without it")

    async def _read(self, key: str, user_id: str, zone: str) -> ListeningProfile | None:
        """One aggregation (bounded by its own timeout), then the cache is filled."""
        settings = self.settings
        pipeline = profile_pipeline(
            user_id,
            plays=settings.profile_plays,
            time_zone=zone,
            top=settings.profile_top,
            recent=settings.profile_top,
        )
        max_time_ms = int(settings.profile_query_timeout_s * 1000)
        cursor = await self.collection.aggregate(pipeline, maxTimeMS=max_time_ms)
        rows = await cursor.to_list()
        profile = read_profile(rows[0] if rows else {}, zone)
        value = profile.model_dump_json() if profile else "null"
        try:
            await self.redis.set(key, value, ex=settings.profile_cache_s)
        except Exception as exc:
            log.warning("profile not cached: %r", exc)
        return profile

    async def close(self) -> None:
        await self.mongo.close()


def _since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)


def _skipped(reason: str, started: float) -> LoadedProfile:
    use = ProfileUse(status=ProfileStatus.SKIPPED, reason=reason, load_ms=_since(started))
    return LoadedProfile(use)
