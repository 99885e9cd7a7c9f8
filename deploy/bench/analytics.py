"""Analytics benchmark: endpoint latency on N plays and N provider attempts, and provider
analytics from the per-minute rollups versus the same answer computed from raw attempts.

    uv run python -m deploy.bench.analytics --n 1000000        # make bench-analytics BENCH_N=…

Uses ``--mongodb-url`` / ``MONGODB_URL`` when given, else starts a SecantusDB process. The
table is labelled with the server it ran on: SecantusDB's absolute times say nothing about
MongoDB's, only the rows' relative costs do. Results are also written to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from pymongo.asynchronous.database import AsyncDatabase

from deploy.local.servers import local_mongo
from echotune.analytics.app import create_app
from echotune.analytics.migrations import migrate
from echotune.analytics.seed.cli import seed_attempts, seed_plays
from echotune.analytics.seed.conversations import conversations, write_conversations
from echotune.analytics.settings import AnalyticsSettings
from echotune.common.mongo import (
    LISTENING_HISTORY,
    PROVIDER_ROLLUPS,
    PROVIDER_TELEMETRY,
    create_mongo,
)

Document = dict[str, Any]
PLAYS_PER_USER = 5_000
RESULTS = Path(__file__).parent / "results"


def endpoints(user: str) -> list[tuple[str, str, Document]]:
    """(label, path, params) of every timed call."""
    providers, series = "/api/analytics/providers", "/api/analytics/providers/timeseries"
    patterns, engagement = "/api/analytics/listening-patterns", "/api/insights/engagement"
    hourly = {"window": "7d", "bucket": "1h", "group_by": "provider"}
    return [
        ("providers, 30d", providers, {"window": "30d"}),
        ("providers, 24h", providers, {"window": "24h"}),
        ("providers, 7d, provider=openai", providers, {"window": "7d", "provider": "openai"}),
        ("timeseries, 7d by 1h, per provider", series, hourly),
        ("timeseries, 24h by 5m", series, {"window": "24h", "bucket": "5m"}),
        ("listening-patterns, one user", patterns, {"user_id": user, "tz": "Europe/Paris"}),
        ("listening-patterns, all users, 7d", patterns, {"window": "7d", "granularity": "hour"}),
        ("engagement, one user", engagement, {"user_id": user}),
        ("engagement, all users, 7d", engagement, {"window": "7d"}),
        ("conversations, one user", "/api/conversations", {"user_id": user}),
    ]


def raw_pipelines(start: datetime, end: datetime) -> tuple[list[Document], list[Document]]:
    """Provider figures straight from the attempt documents (what rollups spare us)."""
    match: Document = {"$match": {"ts": {"$gte": start, "$lt": end}}}
    key = {"provider": "$provider", "model": "$model"}
    pct = {"p": [0.5, 0.95, 0.99], "method": "approximate"}
    figures: list[Document] = [
        match,
        {
            "$group": {
                "_id": key,
                "count": {"$sum": 1},
                "successes": {"$sum": {"$cond": ["$success", 1, 0]}},
                "latencyMsSum": {"$sum": "$latencyMs"},
                "latency": {"$percentile": {"input": "$latencyMs", **pct}},
                "ttft": {"$percentile": {"input": "$ttftMs", **pct}},
                "ttftAvg": {"$avg": "$ttftMs"},
                "tokensIn": {"$sum": "$tokensIn"},
                "tokensOut": {"$sum": "$tokensOut"},
            }
        },
    ]
    errors: list[Document] = [
        match,
        {"$match": {"success": False}},
        {"$group": {"_id": {**key, "code": "$errorCode"}, "n": {"$sum": 1}}},
    ]
    return figures, errors


async def from_raw(db: AsyncDatabase[Document], start: datetime, end: datetime) -> list[Document]:
    """The 30-day provider summary computed from raw attempts."""
    figures, errors = raw_pipelines(start, end)
    raw = db[PROVIDER_TELEMETRY]
    hint = {"ts": 1}
    results = await asyncio.gather(
        (await raw.aggregate(figures, hint=hint)).to_list(),
        (await raw.aggregate(errors, hint=hint)).to_list(),
    )
    return results[0]


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    """The given MongoDB, else a SecantusDB process for the run."""
    if url:
        yield url
    else:
        with local_mongo() as started:
            yield started


async def load(db: AsyncDatabase[Document], n: int, end: datetime, days: int) -> None:
    """N plays, N attempts (and rollups), some conversations; skipped when already there."""
    users = max(1, math.ceil(n / PLAYS_PER_USER))
    have = await db[LISTENING_HISTORY].estimated_document_count()
    have_raw = await db[PROVIDER_TELEMETRY].estimated_document_count()
    if have == users * (n // users) and have_raw == n:
        print(f"reusing {have} plays and {have_raw} attempts in {db.name}")
        return
    for name in (LISTENING_HISTORY, PROVIDER_TELEMETRY, PROVIDER_ROLLUPS):
        await db[name].delete_many({})
    started = time.perf_counter()

    def progress(what: str, count: int) -> None:
        print(f"  … {count} {what} ({time.perf_counter() - started:.0f} s)", flush=True)

    await seed_plays(
        db, seed=1, users=users, plays=n // users, end=end, days=days, progress=progress
    )
    print(
        f"loaded {users * (n // users)} plays in {time.perf_counter() - started:.0f} s", flush=True
    )
    started = time.perf_counter()
    await seed_attempts(db, seed=1, count=n, end=end, days=days, users=users, progress=progress)
    print(f"loaded {n} attempts + rollups in {time.perf_counter() - started:.0f} s", flush=True)
    await write_conversations(db, conversations(1, users, 20, end))


async def timed(call: Any, repeat: int) -> list[float]:
    """Milliseconds of ``repeat`` calls after one warm-up call."""
    await call()
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def run(args: argparse.Namespace) -> str:
    """Load, measure, and return the Markdown report."""
    with server(args.mongodb_url or os.environ.get("MONGODB_URL")) as url:
        base = url.rstrip("/")
        db_url = f"{base}/echotune_bench_{args.n}_{args.days}d"
        client = create_mongo(db_url, timeout_ms=60_000)
        db = client.get_default_database()
        info = await client.admin.command("buildInfo")
        label = (
            f"SecantusDB {info['secantusVersion']}" if "secantusVersion" in info
            else f"MongoDB {info.get('version')}"
        )  # fmt: skip
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        await migrate(db)
        await db[PROVIDER_TELEMETRY].create_index([("ts", 1)])
        await load(db, args.n, end, args.days)
        rollups = await db[PROVIDER_ROLLUPS].estimated_document_count()
        # a long timeout: SecantusDB answers no heartbeat while it aggregates, and PyMongo
        # drops the connections of a server whose heartbeat times out
        settings = AnalyticsSettings(
            mongodb_url=db_url,
            log_level="WARNING",
            query_timeout_ms=600_000,
            mongo_timeout_ms=60_000,
        )
        app = create_app(settings)
        rows = []
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=600) as http,
        ):
            for name, path, params in endpoints("user001"):

                async def call(path: str = path, params: Document = params) -> None:
                    response = await http.get(path, params=params)
                    response.raise_for_status()

                samples = await timed(call, args.repeat)
                rows.append((name, percentile(samples, 0.5), percentile(samples, 0.95)))
                print(f"  {name}: p50 {rows[-1][1]:.1f} ms", flush=True)
        start = end - timedelta(days=30)
        raw = await timed(lambda: from_raw(db, start, end), args.repeat)
        rows.append(
            (
                "same as 'providers, 30d', from raw attempts",
                percentile(raw, 0.5),
                percentile(raw, 0.95),
            )
        )
        await client.close()
    rollup_p50 = rows[0][1]
    lines = [
        f"### Analytics endpoints on {label}",
        "",
        f"{args.n:,} plays ({math.ceil(args.n / PLAYS_PER_USER)} users), {args.n:,} provider "
        f"attempts over {args.days} days ({rollups:,} per-minute rollups); "
        f"{args.repeat} timed calls per row after a warm-up, in-process ASGI client (no network).",
        "",
        "| endpoint | p50 ms | p95 ms |",
        "|---|---:|---:|",
        *[f"| {name} | {p50:.1f} | {p95:.1f} |" for name, p50, p95 in rows],
        "",
        f"Provider analytics from rollups vs from raw attempts (p50): raw / rollups = "
        f"**{rows[-1][1] / rollup_p50:.1f}×**.",
    ]
    if "Secantus" in label:
        lines.append(
            "SecantusDB is a test server, much slower than MongoDB: compare rows with each "
            "other, not with MongoDB's timings."
        )
    return "\n".join(lines)


def main() -> None:
    """Entry point."""
    cli = argparse.ArgumentParser(prog="deploy.bench.analytics", description=__doc__.split("\n")[0])
    cli.add_argument("--n", type=int, default=1_000_000, help="plays and attempts (1,000,000)")
    cli.add_argument("--days", type=int, default=30, help="history length in days (30)")
    cli.add_argument("--repeat", type=int, default=5, help="timed calls per endpoint (5)")
    cli.add_argument("--mongodb-url", help="a MongoDB server URL (default: start SecantusDB)")
    args = cli.parse_args()
    report = asyncio.run(run(args))
    print()
    print(report)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"analytics-{args.n}-{args.days}d.md"
    path.write_text(report + "\n")
    print(f"\n(written to {path})")


if __name__ == "__main__":
    main()
