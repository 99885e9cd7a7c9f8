"""Synthetic provider telemetry: TelemetryEvent-shaped attempt documents with retries,
failovers and incidents, and their per-minute rollups (the telemetry service's layout)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from echotune.analytics.seed.listening import user_id
from echotune.common.messages import TelemetryEvent
from echotune.common.mongo import PROVIDER_ROLLUPS, PROVIDER_TELEMETRY
from echotune.common.rollup_layout import increments

Document = dict[str, Any]
DUPLICATE_KEY = 11000
UTC_HOURS = (
    3, 2, 2, 2, 3, 4, 6, 8, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 8, 8, 7, 6, 5, 4,
)  # fmt: skip


@dataclass(frozen=True)
class Model:
    """How one provider model behaves: share of requests, speed, reliability."""

    provider: str
    model: str
    share: float
    ttft_ms: float
    tokens_per_s: float
    error_rate: float


MODELS = (
    Model("openai", "gpt-4o-mini", 0.35, 380, 85, 0.02),
    Model("openai", "gpt-4o", 0.15, 650, 45, 0.03),
    Model("anthropic", "claude-3-5-haiku", 0.25, 480, 70, 0.025),
    Model("gemini", "gemini-1.5-flash", 0.15, 320, 110, 0.04),
    Model("demo", "echotune-demo-1", 0.10, 15, 400, 0.0),
)
ERRORS = (
    ("timeout", 3),
    ("rate_limited", 4),
    ("http_503", 2),
    ("http_500", 1),
    ("connect_error", 1),
)


def to_document(event: TelemetryEvent) -> Document:
    """The attempt document as the telemetry writer stores it (``_id`` = event id)."""
    doc = event.model_dump(mode="json", by_alias=True, exclude={"event_id"})
    doc["ts"] = event.ts
    return {"_id": event.event_id, **doc}


def _incidents(
    rnd: random.Random, start: datetime, days: int
) -> dict[str, list[tuple[datetime, datetime]]]:
    """One or two degraded periods (1–3 h) per provider."""
    windows: dict[str, list[tuple[datetime, datetime]]] = {}
    for provider in {m.provider for m in MODELS if m.error_rate > 0}:
        for _ in range(rnd.randint(1, 2)):
            begin = start + timedelta(seconds=rnd.uniform(0, days * 86_400))
            windows.setdefault(provider, []).append(
                (begin, begin + timedelta(hours=rnd.uniform(1, 3)))
            )
    return windows


def _attempt(rnd: random.Random, model: Model, degraded: bool) -> tuple[bool, str | None, Document]:
    """Outcome and figures of one attempt."""
    failure = rnd.random() < (0.45 if degraded else model.error_rate)
    slow = 3.0 if degraded else 1.0
    ttft = model.ttft_ms * slow * rnd.lognormvariate(0, 0.35)
    tokens_out = int(min(max(rnd.lognormvariate(5.4, 0.6), 5), 2_000))
    figures: Document = {"tokens_in": rnd.randint(150, 4_000)}
    if not failure:
        rate = model.tokens_per_s * rnd.lognormvariate(0, 0.15) / slow
        latency = ttft + tokens_out / rate * 1000
        gap = 1000 / rate
        figures.update(latency_ms=latency, ttft_ms=ttft, tokens_out=tokens_out, tokens_per_s=rate)
        figures.update(gap_p50_ms=gap, gap_p95_ms=gap * 2.2)
        return True, None, figures
    code = rnd.choices([c for c, _ in ERRORS], weights=[w for _, w in ERRORS])[0]
    if code == "timeout":
        figures.update(latency_ms=rnd.uniform(20_000, 30_000) if rnd.random() < 0.5 else ttft * 4)
    else:
        figures.update(latency_ms=rnd.uniform(30, 1_500) * slow)
    return False, code, figures


def attempts(seed: int, count: int, end: datetime, days: int, users: int) -> Iterator[Document]:
    """About ``count`` attempt documents (requests with their retries and failovers)."""
    rnd = random.Random(f"telemetry:{seed}")
    start = end - timedelta(days=days)
    incidents = _incidents(rnd, start, days)
    shares = [m.share for m in MODELS]
    made, request = 0, 0
    while made < count:
        request += 1
        day = start + timedelta(days=rnd.randrange(days))
        hour = rnd.choices(range(24), weights=UTC_HOURS)[0]
        ts = day.replace(hour=hour, minute=0, second=0, microsecond=0, tzinfo=UTC)
        ts += timedelta(seconds=rnd.uniform(0, 3_600))
        model = rnd.choices(MODELS, weights=shares)[0]
        conversation = f"seedconv{rnd.randrange(10**8):08d}"
        switched = False
        for number in range(1, 4):
            if made >= count or ts >= end:
                break
            degraded = any(a <= ts < b for a, b in incidents.get(model.provider, []))
            ok, code, figures = _attempt(rnd, model, degraded)
            event = TelemetryEvent(
                event_id=f"seed{seed}-{request:08d}-{number}",
                request_id=f"seed{seed}-{request:08d}",
                attempt=number,
                provider=model.provider,
                model=model.model,
                success=ok,
                error_code=code,
                is_retry=number > 1 and not switched,
                is_failover=switched,
                user_id=user_id(rnd.randint(1, max(users, 1))),
                conversation_id=conversation,
                ts=ts,
                **figures,
            )
            yield to_document(event)
            made += 1
            if ok:
                break
            ts += timedelta(milliseconds=figures["latency_ms"] + rnd.uniform(200, 2_000))
            switched = code != "rate_limited" and rnd.random() < 0.5
            if switched:
                others = [m for m in MODELS if m.provider != model.provider and m.error_rate > 0]
                model = rnd.choice(others)


async def write_attempts(db: AsyncDatabase[Document], docs: list[Document]) -> tuple[int, int]:
    """Insert attempt documents and add the new ones (only) to their rollups.

    Returns ``(inserted, duplicates)``. An interrupted run may leave the rollups of one
    batch short; ``echotune-seed --reset`` starts over.
    """
    if not docs:
        return 0, 0
    duplicates: set[int] = set()
    try:
        await db[PROVIDER_TELEMETRY].insert_many(docs, ordered=False)
    except BulkWriteError as exc:
        for error in exc.details["writeErrors"]:
            if error["code"] != DUPLICATE_KEY:
                raise
            duplicates.add(error["index"])
    fresh = [doc for index, doc in enumerate(docs) if index not in duplicates]
    ops = [
        UpdateOne({"_id": key}, {"$inc": inc, "$setOnInsert": ident}, upsert=True)
        for key, (ident, inc) in increments(fresh).items()
    ]
    if ops:
        await db[PROVIDER_ROLLUPS].bulk_write(ops, ordered=False)
    return len(fresh), len(duplicates)
