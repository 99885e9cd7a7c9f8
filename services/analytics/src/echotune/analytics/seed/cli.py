"""``echotune-seed``: deterministic synthetic listening history, provider telemetry (attempts
and their per-minute rollups) and conversations, for development and benchmarks.

The same ``--seed``, sizes and ``--end`` always produce the same documents with the same ids,
so running the command again adds nothing. ``--end`` defaults to the current UTC hour.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from itertools import islice
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from echotune.analytics.importer.report import ImportReport
from echotune.analytics.importer.writer import PlayWriter
from echotune.analytics.migrations import migrate
from echotune.analytics.seed.catalogue import build_catalogue
from echotune.analytics.seed.conversations import conversations, write_conversations
from echotune.analytics.seed.listening import all_plays
from echotune.analytics.seed.telemetry import attempts, write_attempts
from echotune.analytics.settings import AnalyticsSettings
from echotune.common.mongo import (
    CONVERSATIONS,
    LISTENING_HISTORY,
    PROVIDER_ROLLUPS,
    PROVIDER_TELEMETRY,
    create_mongo,
)

Document = dict[str, Any]
Progress = Callable[[str, int], None]


def _batches(docs: Iterator[Document], size: int) -> Iterator[list[Document]]:
    while batch := list(islice(docs, size)):
        yield batch


async def seed_plays(
    db: AsyncDatabase[Document],
    *,
    seed: int,
    users: int,
    plays: int,
    end: datetime,
    days: int,
    named: Sequence[str] = (),
    batch: int = 2_000,
    progress: Progress | None = None,
) -> tuple[int, int]:
    """Insert ``plays`` synthetic plays for each of ``users`` users and the ``named`` ones;
    ``(inserted, duplicates)``."""
    report = ImportReport()
    writer = PlayWriter(db[LISTENING_HISTORY], report, batch)
    catalogue = build_catalogue(seed)
    listened = all_plays(catalogue, seed, users, plays, end, days, named)
    for n, doc in enumerate(listened, start=1):
        await writer.add("seed", "seed", doc)
        if progress and n % 100_000 == 0:
            progress("plays", n)
    await writer.flush()
    counts = report.total
    return counts.imported, counts.duplicates


async def seed_attempts(
    db: AsyncDatabase[Document],
    *,
    seed: int,
    count: int,
    end: datetime,
    days: int,
    users: int,
    batch: int = 5_000,
    progress: Progress | None = None,
) -> tuple[int, int]:
    """Insert ``count`` synthetic attempts and their rollups; ``(inserted, duplicates)``."""
    inserted = duplicates = 0
    for chunk in _batches(attempts(seed, count, end, days, users), batch):
        new, known = await write_attempts(db, chunk)
        inserted, duplicates = inserted + new, duplicates + known
        if (
            progress
            and (inserted + duplicates) // 100_000
            != (inserted + duplicates - len(chunk)) // 100_000
        ):
            progress("attempts", inserted + duplicates)
    return inserted, duplicates


def parser() -> argparse.ArgumentParser:
    """The command line."""
    cli = argparse.ArgumentParser(prog="echotune-seed", description=__doc__.split("\n")[0])
    cli.add_argument("--users", type=int, default=20, help="listeners (default 20)")
    cli.add_argument(
        "--listener",
        action="append",
        default=[],
        metavar="USER_ID",
        help="also give this user plays (repeatable; `make seed` names dev, the local user)",
    )
    cli.add_argument("--plays", type=int, default=2_000, help="plays per user (default 2000)")
    cli.add_argument("--attempts", type=int, help="provider attempts (default users × plays / 2)")
    cli.add_argument("--conversations", type=int, default=3, help="per user (default 3)")
    cli.add_argument("--days", type=int, default=90, help="history length (default 90)")
    cli.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    cli.add_argument("--end", help="ISO datetime the history ends at (default: this UTC hour)")
    cli.add_argument("--reset", action="store_true", help="first empty the collections seeded")
    cli.add_argument("--mongodb-url", help="default: ECHOTUNE_MONGODB_URL")
    return cli


def _end(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


async def run(args: argparse.Namespace) -> None:
    """Seed the database and print what was added."""
    end = _end(args.end)
    count = args.attempts if args.attempts is not None else args.users * args.plays // 2
    client = create_mongo(args.mongodb_url or AnalyticsSettings().mongodb_url)
    started = time.perf_counter()

    def progress(what: str, n: int) -> None:
        print(f"  … {n} {what} ({time.perf_counter() - started:.0f} s)", flush=True)

    try:
        db = client.get_default_database(default="echotune")
        await migrate(db)
        if args.reset:
            for name in (LISTENING_HISTORY, PROVIDER_TELEMETRY, PROVIDER_ROLLUPS, CONVERSATIONS):
                await db[name].delete_many({})
        print(f"seeding database {db.name!r}: history ends {end.isoformat()}, seed {args.seed}")
        new, known = await seed_plays(
            db, seed=args.seed, users=args.users, plays=args.plays, end=end, days=args.days,
            named=args.listener, progress=progress,
        )  # fmt: skip
        print(f"plays: {new} inserted, {known} already there")
        new, known = await seed_attempts(
            db, seed=args.seed, count=count, end=end, days=args.days, users=args.users,
            progress=progress,
        )  # fmt: skip
        print(f"provider attempts: {new} inserted (and rolled up), {known} already there")
        docs = conversations(args.seed, args.users, args.conversations, end)
        print(f"conversations: {await write_conversations(db, docs)} inserted")
        print(f"done in {time.perf_counter() - started:.1f} s")
    finally:
        await client.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``echotune-seed``."""
    args = parser().parse_args(argv)
    if (
        min(args.users, args.plays, args.days) < 1
        or min(args.conversations, args.attempts or 0) < 0
    ):
        parser().error("--users, --plays and --days must be at least 1")
    try:
        asyncio.run(run(args))
    except PyMongoError as exc:
        print(f"echotune-seed: MongoDB failed: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"echotune-seed: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
