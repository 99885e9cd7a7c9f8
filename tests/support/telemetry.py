"""Publishing telemetry the way the worker does, and waiting for the telemetry writer."""

from __future__ import annotations

import asyncio
import math
import random
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from faststream.redis import RedisBroker
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from redis.asyncio import Redis

from deploy.local.processes import ServiceProcess, start_telemetry
from echotune.common.histogram import merge, quantile
from echotune.common.keys import TELEMETRY_GROUP, Keys
from echotune.common.messages import TelemetryEvent
from echotune.common.mongo import PROVIDER_ROLLUPS, PROVIDER_TELEMETRY, create_mongo
from echotune.common.redis import create_broker, create_redis
from echotune.common.rollup_layout import minute_of, rollup_id

Document = dict[str, Any]


def with_database(server_url: str, database: str) -> str:
    """``server_url`` pointing at ``database`` (query options such as authSource kept)."""
    parts = urlsplit(server_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{database}", parts.query, ""))


def make_event(provider: str, rng: random.Random, **fields: Any) -> TelemetryEvent:
    """A plausible attempt: log-normal latency, 10 % failures."""
    ok = rng.random() >= 0.1
    latency = rng.lognormvariate(math.log(400), 0.9) + 1
    values: dict[str, Any] = {
        "request_id": f"req-{uuid.uuid4().hex}",
        "attempt": rng.randint(1, 3),
        "provider": provider,
        "model": rng.choice(["model-a", "model-b"]),
        "latency_ms": latency,
        "ttft_ms": latency * rng.uniform(0.05, 0.5) if ok else None,
        "tokens_in": rng.randint(5, 500),
        "tokens_out": rng.randint(0, 800) if ok else 0,
        "success": ok,
        "error_code": None if ok else rng.choice(["timeout", "rate_limited", "http.503"]),
    }
    return TelemetryEvent(**{**values, **fields})


def exact_quantile(values: Iterable[float], q: float) -> float:
    """Nearest-rank quantile (what ``histogram.quantile`` approximates)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@dataclass
class TelemetryHarness:
    """One namespace and database, its Redis stream, and telemetry processes writing them."""

    redis_url: str
    mongo_url: str
    namespace: str
    redis: Redis
    broker: RedisBroker
    mongo: AsyncMongoClient[Document]

    @classmethod
    async def create(cls, redis_url: str, mongo_server_url: str) -> TelemetryHarness:
        namespace = f"t{uuid.uuid4().hex[:10]}"
        broker = create_broker(redis_url)
        await broker.connect()
        mongo_url = with_database(mongo_server_url, namespace)
        mongo = create_mongo(mongo_url)
        redis = create_redis(redis_url, max_connections=8)
        return cls(redis_url, mongo_url, namespace, redis, broker, mongo)

    async def close(self) -> None:
        await self.mongo.drop_database(self.db.name)
        await self.mongo.close()
        await self.broker.stop()
        await self.redis.aclose()

    @property
    def keys(self) -> Keys:
        return Keys(self.namespace)

    @property
    def db(self) -> AsyncDatabase[Document]:
        return self.mongo.get_default_database()

    def env(self, **overrides: str) -> dict[str, str]:
        return {
            "ECHOTUNE_REDIS_URL": self.redis_url,
            "ECHOTUNE_MONGODB_URL": self.mongo_url,
            "ECHOTUNE_NAMESPACE": self.namespace,
            "ECHOTUNE_LOG_LEVEL": "INFO",
            "ECHOTUNE_TELEMETRY_CLAIM_IDLE_MS": "1500",
            "ECHOTUNE_TELEMETRY_CLAIM_POLL_MS": "200",
            "ECHOTUNE_TELEMETRY_RETRY_BASE_S": "0.05",
            "ECHOTUNE_TELEMETRY_RETRY_CAP_S": "0.5",
            "ECHOTUNE_TELEMETRY_MONGO_TIMEOUT_MS": "1000",
            **overrides,
        }

    async def start(self, name: str = "telemetry", **overrides: str) -> tuple[ServiceProcess, str]:
        return await start_telemetry(self.env(**overrides), name=name)

    async def publish(self, events: Iterable[TelemetryEvent]) -> None:
        """Publish as the worker does: FastStream ``publish`` of the camelCase JSON body."""
        for event in events:
            body = event.model_dump(mode="json", by_alias=True)
            await self.broker.publish(body, stream=self.keys.telemetry, maxlen=1_000_000)

    async def publish_body(self, body: Any) -> None:
        await self.broker.publish(body, stream=self.keys.telemetry)

    async def backlog(self) -> tuple[int, int]:
        """(entries not yet delivered to the group, entries delivered but not acked)."""
        groups = await self.redis.xinfo_groups(self.keys.telemetry)
        group = next(g for g in groups if g["name"] == TELEMETRY_GROUP)
        return int(group["lag"] or 0), int(group["pending"])

    async def wait_drained(self, timeout: float = 20.0) -> None:
        """Until every entry is delivered and acknowledged. Acks push nothing one could
        block on, so this polls XINFO GROUPS every 20 ms, bounded by ``timeout``."""
        async with asyncio.timeout(timeout):
            while await self.backlog() != (0, 0):  # noqa: ASYNC110 - no event to await
                await asyncio.sleep(0.02)

    async def pending_of(self, consumer: str) -> int:
        """Entries delivered to ``consumer`` and not acked."""
        summary = await self.redis.xpending(self.keys.telemetry, TELEMETRY_GROUP)
        counts = {c["name"]: int(c["pending"]) for c in summary["consumers"]}
        return counts.get(consumer, 0)

    async def documents(self, provider: str) -> list[Document]:
        return await self.db[PROVIDER_TELEMETRY].find({"provider": provider}).to_list()

    async def rollups(self, provider: str) -> list[Document]:
        return await self.db[PROVIDER_ROLLUPS].find({"provider": provider}).to_list()

    async def rollup_count(self, provider: str) -> int:
        return sum(int(doc["count"]) for doc in await self.rollups(provider))

    async def uncounted(self, provider: str) -> int:
        """Attempt documents whose write batch is missing from their rollup's ``batches``."""
        batches = {doc["_id"]: set(doc.get("batches", ())) for doc in await self.rollups(provider)}
        return sum(
            doc["batch"]
            not in batches.get(rollup_id(provider, doc["model"], minute_of(doc["ts"])), ())
            for doc in await self.documents(provider)
        )


async def scrape(client: httpx.AsyncClient, url: str) -> dict[str, float]:
    """The samples of ``/metrics`` without labels, by name."""
    response = await client.get(f"{url}/metrics")
    response.raise_for_status()
    samples: dict[str, float] = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#") and "{" not in line:
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def merged_quantile(rollups: list[Document], field: str, q: float) -> float | None:
    """``q``-quantile of the histograms ``field`` of all ``rollups``, merged."""
    return quantile(merge(doc.get(field, {}) for doc in rollups), q)
