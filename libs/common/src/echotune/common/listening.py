"""Aggregation stages over ``listening_history`` shared by analytics and the listening profile.

Both analytics' answers (engagement, listening patterns) and the worker's listening profile
(``listening_profile.py``) are built from these, so a figure means the same everywhere:

* top artists / genres: a play counts once for each of its artists / genres; share = their
  plays / all plays (so shares may add up to more than 1); ties by listening time, then id;
* skip rate: plays flagged ``skipped`` / plays whose ``skipped`` is known (not null);
* local hour and ISO weekday (1 = Monday) of ``playedAt`` in an IANA time zone, computed by
  MongoDB (``$hour``, ``$isoDayOfWeek`` with ``timezone``), daylight saving included.

The document fields (``userId``, ``playedAt``, ``artistIds``…) are those of analytics'
``documents.py``, the owner of the collection.
"""

from __future__ import annotations

from typing import Any

Document = dict[str, Any]
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")

SKIP_KNOWN: Document = {"$cond": [{"$eq": [{"$type": "$skipped"}, "bool"]}, 1, 0]}
SKIPPED: Document = {"$cond": [{"$eq": ["$skipped", True]}, 1, 0]}
ARTISTS_UNWIND: Document = {"path": "$artistIds", "includeArrayIndex": "i"}
ARTIST_NAME: Document = {"$arrayElemAt": ["$artistNames", "$i"]}
GENRES_UNWIND: Document = {"path": "$genres"}
PLAY_FIELDS: Document = {
    "_id": 0,
    **dict.fromkeys(("trackId", "msPlayed", "skipped", "genres", "artistIds", "artistNames"), 1),
}
"""The fields the top lists and play totals read (a ``$project`` before a ``$facet``)."""


def local_hour(time_zone: str) -> Document:
    return {"$hour": {"date": "$playedAt", "timezone": time_zone}}


def local_weekday(time_zone: str) -> Document:
    """ISO weekday, 1 = Monday … 7 = Sunday."""
    return {"$isoDayOfWeek": {"date": "$playedAt", "timezone": time_zone}}


def play_totals(**extra: Document) -> Document:
    """One group of all plays: ``plays``, ``ms``, ``skipped``, ``known`` (+ ``extra``)."""
    return {
        "$group": {
            "_id": None,
            "plays": {"$sum": 1},
            "ms": {"$sum": "$msPlayed"},
            "skipped": {"$sum": SKIPPED},
            "known": {"$sum": SKIP_KNOWN},
            **extra,
        }
    }


def counts_by(key: Any) -> list[Document]:
    """Group by ``key``: plays, distinct tracks, ms (two levels, no big sets)."""
    return [
        {
            "$group": {
                "_id": {"k": key, "track": "$trackId"},
                "plays": {"$sum": 1},
                "ms": {"$sum": "$msPlayed"},
            }
        },
        {
            "$group": {
                "_id": "$_id.k",
                "plays": {"$sum": "$plays"},
                "tracks": {"$sum": 1},
                "ms": {"$sum": "$ms"},
            }
        },
    ]


def ranked(unwind: Document, key: str, name: Any, skip: int, limit: int) -> list[Document]:
    """Plays grouped by ``key`` after ``unwind``, most played first: ``limit`` of them after
    ``skip`` (``items``) and how many there are (``n``), in one document."""
    group: Document = {"_id": key, "plays": {"$sum": 1}, "ms": {"$sum": "$msPlayed"}}
    if name is not None:
        group["name"] = {"$min": name}
    return [
        {"$unwind": unwind},
        {"$group": group},
        {"$sort": {"plays": -1, "ms": -1, "_id": 1}},
        {"$group": {"_id": None, "n": {"$sum": 1}, "items": {"$push": "$$ROOT"}}},
        {"$project": {"n": 1, "items": {"$slice": ["$items", skip, limit]}}},
    ]


def top_artists(skip: int, limit: int) -> list[Document]:
    return ranked(ARTISTS_UNWIND, "$artistIds", ARTIST_NAME, skip, limit)


def top_genres(skip: int, limit: int) -> list[Document]:
    return ranked(GENRES_UNWIND, "$genres", None, skip, limit)


def share(plays: int, total: int) -> float:
    return round(plays / total, 6) if total else 0.0


def skip_rate(totals: Document) -> float | None:
    """Of a :func:`play_totals` group; ``None`` when no play's skip flag is known."""
    known = int(totals.get("known") or 0)
    return share(int(totals.get("skipped") or 0), known) if known else None
