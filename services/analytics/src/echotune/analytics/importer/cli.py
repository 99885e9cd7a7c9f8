"""``echotune-import spotify PATH… --user USER [--genres MAP.json]``: import listening history.

Idempotent: every play has a deterministic ``_id`` (user, start time, track), so importing
the same files again adds nothing and counts them as duplicates. Plays are written in
unordered batches; if MongoDB fails half-way, run the same command again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import ijson
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from echotune.analytics.importer.report import ImportReport
from echotune.analytics.importer.spotify import (
    GenreMap,
    Rejected,
    expand_paths,
    iter_records,
    to_play,
)
from echotune.analytics.importer.writer import PlayWriter
from echotune.analytics.migrations import migrate
from echotune.analytics.settings import AnalyticsSettings
from echotune.common.mongo import LISTENING_HISTORY, create_mongo

Document = dict[str, Any]


async def import_spotify(
    db: AsyncDatabase[Document],
    paths: list[Path],
    user_id: str,
    genres: GenreMap | None = None,
    batch_size: int = 1000,
) -> ImportReport:
    """Import Spotify export files (or directories of them) for ``user_id``."""
    genres = genres or GenreMap()
    report = ImportReport()
    writer = PlayWriter(db[LISTENING_HISTORY], report, batch_size)
    for path in expand_paths(paths):
        source = str(path)
        counts = report.counts(source)
        try:
            with path.open("rb") as stream:
                for index, record in enumerate(iter_records(stream)):
                    counts.read += 1
                    where = f"{path.name}#{index}"
                    try:
                        doc = to_play(record, user_id, genres)
                    except Rejected as rejected:
                        report.reject(source, where, rejected.reason, rejected.message)
                        continue
                    await writer.add(source, where, doc)
        except (OSError, ValueError, ijson.JSONError) as exc:
            report.file_failed(source, f"{type(exc).__name__}: {exc}")
        await writer.flush()
    return report


def parser() -> argparse.ArgumentParser:
    """The command line."""
    cli = argparse.ArgumentParser(prog="echotune-import", description=__doc__.split("\n")[0])
    sources = cli.add_subparsers(dest="source", required=True)
    spotify = sources.add_parser("spotify", help="Spotify streaming-history exports (JSON)")
    spotify.add_argument("paths", nargs="+", type=Path, help="export files or their folders")
    spotify.add_argument("--user", required=True, help="user id the plays belong to")
    spotify.add_argument("--genres", type=Path, help="JSON object: artist name → genres")
    spotify.add_argument("--batch-size", type=int, default=1000, help="plays per insert")
    spotify.add_argument("--mongodb-url", help="default: ECHOTUNE_MONGODB_URL")
    spotify.add_argument("--json", action="store_true", help="print the report as JSON")
    return cli


async def run(args: argparse.Namespace) -> int:
    """Import and print the report; 1 when a file could not be read to its end."""
    genres = GenreMap.load(args.genres) if args.genres else GenreMap()
    url = args.mongodb_url or AnalyticsSettings().mongodb_url
    client = create_mongo(url)
    try:
        db = client.get_default_database(default="echotune")
        await migrate(db)
        report = await import_spotify(db, args.paths, args.user, genres, args.batch_size)
    finally:
        await client.close()
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(f"spotify import for user {args.user!r} into database {db.name!r}")
        print(report.as_text())
    return 1 if report.file_errors else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``echotune-import``."""
    args = parser().parse_args(argv)
    if args.batch_size < 1:
        parser().error("--batch-size must be at least 1")
    try:
        return asyncio.run(run(args))
    except (OSError, ValueError) as exc:
        print(f"echotune-import: {exc}", file=sys.stderr)
        return 2
    except PyMongoError as exc:
        print(
            f"echotune-import: MongoDB failed: {exc}\n"
            "Nothing is lost: run the same command again (imported plays count as duplicates).",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
