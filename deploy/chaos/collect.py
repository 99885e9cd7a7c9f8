"""After the traffic: what the servers recorded (events in Redis, the fake upstream's attempts,
telemetry documents in MongoDB) and the Redis keyspace before and after the TTLs."""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections.abc import Iterable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError, ResponseError

from echotune.common.keys import TELEMETRY_GROUP, Keys
from echotune.common.mongo import PROVIDER_TELEMETRY, create_mongo
from echotune.fake_llm import FakeUpstream

UPSTREAM_FIELDS = (
    "key", "provider", "model", "status", "started_ns", "started_wall", "first_token_ns",
    "ended_ns", "closed_by_client", "tokens_sent", "text", "outcome", "outage",
    "concurrent_with",
)  # fmt: skip
TELEMETRY_FIELDS = {
    "_id": 1, "requestId": 1, "attempt": 1, "provider": 1, "model": 1, "latencyMs": 1,
    "ttftMs": 1, "tokensOut": 1, "success": 1, "errorCode": 1, "ts": 1,
}  # fmt: skip


class StoredEvents:
    """Each request's events as Redis stores them (``{id, type, data}``), read once its
    clients are done, before they expire; read again at the end for answers not ended then."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis, self.keys = redis, keys
        self.found: dict[str, list[dict[str, Any]]] = {}
        self.meta: dict[str, dict[str, str]] = {}
        """The meta hash, for diagnosis only (its fields belong to the request protocol)."""

    async def read(self, request_id: str) -> None:
        for _ in range(10):  # Redis may be restarting
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.xrange(self.keys.events(request_id))
                    pipe.hgetall(self.keys.meta(request_id))
                    entries, meta = await pipe.execute()
            except (RedisError, AttributeError):  # redis-py's cluster client raises the
                # latter when a failover closes a connection during its handshake
                await asyncio.sleep(0.5)
                continue
            if entries or request_id not in self.found:
                self.found[request_id] = [
                    {"id": entry_id, "type": fields.get("type"), "data": fields.get("data")}
                    for entry_id, fields in entries
                ]
                self.meta[request_id] = meta
            return

    async def read_unfinished(self, request_ids: Iterable[str]) -> None:
        for request_id in request_ids:
            events = self.found.get(request_id) or []
            if not any(e["type"] in ("done", "error") for e in events):
                await self.read(request_id)


async def upstream_attempts(
    upstream: FakeUpstream, request_ids: set[str]
) -> dict[str, list[dict[str, Any]]]:
    """The fake upstream's attempts of our requests (the fields the checker reads)."""
    everything = await upstream.all_requests()
    return {
        key: [{name: attempt.get(name) for name in UPSTREAM_FIELDS} for attempt in attempts]
        for key, attempts in everything.items()
        if key in request_ids
    }


# Counted in Redis: the entries are binary FastStream messages, which a decoding client
# cannot read.
_COUNT_AFTER = "return #redis.call('XRANGE', KEYS[1], ARGV[1], '+')"


async def telemetry_backlog(redis: Redis, keys: Keys) -> tuple[int, int, int]:
    """(stream length, entries not yet delivered to the writers, delivered but not acked).

    Undelivered entries are counted after the group's last-delivered id: its ``lag`` can be
    wrong after a failover (a replica's entries-read counter lags behind)."""
    try:
        groups = await redis.xinfo_groups(keys.telemetry)
        length = await redis.xlen(keys.telemetry)
    except ResponseError:
        return 0, 0, 0
    for group in groups:
        if group["name"] == TELEMETRY_GROUP:
            start = f"({group['last-delivered-id']}"
            after = await redis.eval(_COUNT_AFTER, 1, keys.telemetry, start)
            return length, int(after), int(group["pending"])
    return length, length, 0


async def wait_telemetry_drained(
    redis: Redis, keys: Keys, timeout_s: float
) -> tuple[bool, tuple[int, int, int] | None]:
    """Until the telemetry stream is written and acknowledged and stays so for 2 s; whether it
    was, and the last (length, undelivered, unacknowledged)."""
    deadline, calm_since, last = time.monotonic() + timeout_s, None, None
    while time.monotonic() < deadline:
        state = await telemetry_backlog(redis, keys)
        drained = state[1:] == (0, 0)
        if drained and state == last and calm_since and time.monotonic() - calm_since >= 2:
            return True, state
        if not drained or state != last:
            calm_since = time.monotonic() if drained else None
        last = state
        await asyncio.sleep(0.5)  # acks push nothing one could wait on
    return False, last


async def telemetry_documents(mongodb_url: str, request_ids: list[str]) -> list[dict[str, Any]]:
    client = create_mongo(mongodb_url, timeout_ms=10_000)
    try:
        db = client.get_default_database()
        query = {"requestId": {"$in": request_ids}}
        docs = await db[PROVIDER_TELEMETRY].find(query, TELEMETRY_FIELDS).to_list()
    finally:
        await client.close()
    for doc in docs:
        doc["ts"] = doc["ts"].timestamp()
    return docs


# --- the keyspace ---------------------------------------------------------------------------


def key_families(keys: Keys) -> list[tuple[str, str]]:
    """(pattern, family) of every key name in ``echotune.common.keys`` (and the breaker's
    sets beside its hash), the more specific patterns first."""
    return [
        (keys.events("*"), "per-request"),
        (keys.meta("*"), "per-request"),
        (keys.cancel_flag("*"), "per-request"),
        (keys.reader("*"), "per-request"),
        (keys.relayed("*"), "per-request"),
        (keys.rate_limit("*", "*"), "rate-limit"),
        (keys.open_streams("*"), "open-streams"),
        (keys.breaker("*") + ":ok", "breaker-window"),
        (keys.breaker("*") + ":fail", "breaker-window"),
        (keys.breaker("*") + ":calls", "breaker-calls"),
        (keys.breaker("*"), "breaker"),
        (f"{keys.namespace}:live:*", "live-stats"),
        (keys.profile("*", "*"), "profile-cache"),
        (keys.gateway_wakeup("*"), "gateway-wakeup"),
        (keys.telemetry_dead_letters, "telemetry-dlq"),
        (keys.telemetry, "telemetry-stream"),
        (keys.jobs, "jobs-stream"),
        (keys.api_keys, "api-keys"),
        (keys.sessions("*"), "sessions"),
        (keys.workers_alive, "workers-alive"),
        (keys.profile("*", "*"), "listening-profile"),
        (keys.provider_selection, "provider-selection"),
    ]


def family_of(key: str, families: list[tuple[str, str]]) -> str:
    for pattern, family in families:
        if fnmatch.fnmatchcase(key, pattern):
            return family
    return "unknown"


async def snapshot(redis: Redis, keys: Keys) -> dict[str, Any]:
    """Every key of the namespace (type, TTL, bytes, length of streams) and the memory figures."""
    families = key_families(keys)
    names = sorted([k async for k in redis.scan_iter(match=f"{keys.namespace}:*", count=1000)])
    async with redis.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.type(name)
            pipe.pttl(name)
            pipe.memory_usage(name)
        replies = await pipe.execute()
    found: dict[str, Any] = {}
    for index, name in enumerate(names):
        kind, ttl, size = replies[3 * index : 3 * index + 3]
        if kind == "none":  # expired meanwhile
            continue
        found[name] = {"type": kind, "ttl_ms": ttl, "bytes": size or 0}
        found[name]["family"] = family_of(name, families)
        if kind == "stream":
            found[name]["length"] = await redis.xlen(name)
    memory = await memory_figures(redis)
    return {"t": time.time(), "keys": found, **memory}


async def memory_figures(redis: Redis) -> dict[str, int]:
    """``used_memory`` and ``used_memory_dataset`` (summed over the primaries of a cluster)."""
    names = ("used_memory", "used_memory_dataset")
    if isinstance(redis, RedisCluster):
        nodes = await redis.info("memory", target_nodes=RedisCluster.PRIMARIES)
        return {name: sum(int(info[name]) for info in nodes.values()) for name in names}
    memory = await redis.info("memory")
    return {name: int(memory[name]) for name in names}


LINGERING = ("live-stats", "gateway-wakeup")  # designed TTLs longer than any wait here


async def wait_for_ttls(
    redis: Redis, keys: Keys, baseline: dict[str, Any], timeout_s: float
) -> dict[str, Any]:
    """Snapshots until every key the run added has expired, except the families whose designed
    TTL outlasts any wait (``LINGERING``) and those designed to live; the last snapshot."""
    deadline = time.monotonic() + timeout_s
    while True:
        shot = await snapshot(redis, keys)
        waiting = [
            info["ttl_ms"]
            for name, info in shot["keys"].items()
            if name not in baseline["keys"] and info["ttl_ms"] > 0
            and info["family"] not in LINGERING
        ]  # fmt: skip
        left = deadline - time.monotonic()
        if not waiting or left <= 0:
            shot["waited_for_ttls"] = not waiting
            return shot
        await asyncio.sleep(min(max(waiting) / 1000 + 0.5, 5.0, left))
