"""Small known data sets for the analytics tests, and how they are written."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from echotune.analytics.documents import play_document
from echotune.common.mongo import LISTENING_HISTORY, PROVIDER_ROLLUPS, PROVIDER_TELEMETRY
from echotune.common.rollup_layout import increments

Document = dict[str, Any]
START = datetime(2024, 3, 8, tzinfo=UTC)  # spans the US switch to daylight time (March 10)
ARTISTS = [f"Artist {n}" for n in range(10)]
ARTIST_GENRES = {name: ["rock", "indie", "jazz", "pop"][: n % 4] for n, name in enumerate(ARTISTS)}
USERS = ("alice", "bob", "carol")

FAILURES = ["timeout", "http_503", "rate_limited", "cancelled", "http_400", "http_401"]
"""Error codes of failed calls: a provider's, a Stop, a request's own fault, a revoked key."""


def make_plays(seed: int = 7, users: tuple[str, ...] = USERS, days: int = 4) -> list[Document]:
    """Sessions of 1–8 back-to-back plays per user; gaps around the 30-minute rule."""
    rnd = random.Random(seed)
    tracks = [
        (f"t{n}", f"Track {n}", rnd.sample(ARTISTS, 2 if n % 5 == 0 else 1)) for n in range(30)
    ]
    plays = []
    for user in users:
        moment = START + timedelta(minutes=rnd.uniform(0, 120))
        while moment < START + timedelta(days=days):
            for _ in range(rnd.randint(1, 8)):
                track_id, name, artists = rnd.choice(tracks)
                ms = rnd.randint(5_000, 300_000)
                genres = sorted({g for a in artists for g in ARTIST_GENRES[a]})
                plays.append(
                    play_document(
                        user_id=user,
                        played_at=moment,
                        track_id=track_id,
                        track_name=name,
                        artist_names=artists,
                        genres=genres,
                        ms_played=ms,
                        skipped=rnd.choice([True, False, False, None]),
                    )
                )
                gap = rnd.choice([0.5, 2, 10, 25, 29, 31, 45])  # minutes after this play ends
                moment += timedelta(milliseconds=ms, minutes=gap)
            moment += timedelta(hours=rnd.uniform(0.6, 9))
    return plays


async def insert_plays(db: AsyncDatabase[Document], plays: list[Document]) -> None:
    """Store plays as the importer does."""
    await db[LISTENING_HISTORY].insert_many([dict(p) for p in plays])


def make_attempts(seed: int = 11, count: int = 600, start: datetime = START) -> list[Document]:
    """Attempt documents over six hours: three provider models, errors, missing TTFTs."""
    rnd = random.Random(seed)
    models = [("openai", "gpt-a"), ("openai", "gpt-b"), ("anthropic", "claude-c")]
    docs = []
    for n in range(count):
        provider, model = rnd.choice(models)
        ok = rnd.random() > 0.15
        latency = rnd.lognormvariate(7, 0.8) + 1
        ttft = rnd.uniform(1, latency) if ok or rnd.random() < 0.3 else None
        docs.append(
            {
                "_id": f"ev{n}",
                "schemaVersion": 1,
                "requestId": f"req{n}",
                "attempt": 1,
                "provider": provider,
                "model": model,
                "latencyMs": latency,
                "ttftMs": ttft,
                "tokensIn": rnd.randint(10, 500),
                "tokensOut": rnd.randint(0, 900) if ok else 0,
                "success": ok,
                "errorCode": None
                if ok
                else rnd.choice(
                    ["timeout", "http_503", "rate_limited", "cancelled", "http_400", "http_401"]
                ),
                "ts": start + timedelta(seconds=rnd.uniform(0, 6 * 3600)),
            }
        )
    return docs


async def insert_attempts(db: AsyncDatabase[Document], docs: list[Document]) -> None:
    """Store attempts and their per-minute rollups (the telemetry service's layout)."""
    await db[PROVIDER_TELEMETRY].insert_many([dict(d) for d in docs])
    ops = [
        UpdateOne({"_id": key}, {"$inc": inc, "$setOnInsert": ident}, upsert=True)
        for key, (ident, inc) in increments(docs).items()
    ]
    await db[PROVIDER_ROLLUPS].bulk_write(ops)
