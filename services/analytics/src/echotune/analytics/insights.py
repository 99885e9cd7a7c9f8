"""Engagement insights: KPIs, sessions, top artists and top genres of a set of plays.

Definitions (also in the OpenAPI schema; skip rate and top lists are built by
``echotune.common.listening``, shared with the worker's listening profile):

* skip rate: plays flagged ``skipped`` / plays whose ``skipped`` is known (not null);
* repeat rate: (plays − distinct tracks) / plays — the share of plays of a track already
  heard in the range;
* sessions: a user's plays in time order; a play that starts more than ``gap`` after the
  previous play *ended* (``playedAt + msPlayed``) starts a new session. A session lasts from
  its first play's start to its last play's end.
* top artists / genres: a play counts once for each of its artists / genres; share = their
  plays / all plays in the range (so shares may add up to more than 1).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from echotune.analytics.listening import listening_match
from echotune.analytics.params import Page, TimeRange
from echotune.common.listening import (
    PLAY_FIELDS,
    play_totals,
    share,
    skip_rate,
    top_artists,
    top_genres,
)
from echotune.common.mongo import LISTENING_HISTORY

Document = dict[str, Any]
ENGAGEMENT_FIELDS = ("kpis", "top_artists", "top_genres")
SESSION_INDEX = {"userId": 1, "playedAt": 1}
"""Sessions need each user's plays in time order: ``user_playedAt`` (hinted for all users,
where a planner would rather take ``playedAt`` and sort in memory)."""
MS_PER_HOUR = 3_600_000


def overview_pipeline(match: Document, fields: Sequence[str], page: Page) -> list[Document]:
    """Counts, distinct tracks and artists, and the top lists in one pass ($facet)."""
    facets: Document = {"plays": [play_totals()]}
    if "kpis" in fields:
        facets["tracks"] = [{"$group": {"_id": "$trackId"}}, {"$count": "n"}]
        facets["artists"] = [
            {"$unwind": "$artistIds"},
            {"$group": {"_id": "$artistIds"}},
            {"$count": "n"},
        ]
    if "top_artists" in fields:
        facets["top_artists"] = top_artists(page.skip, page.limit)
    if "top_genres" in fields:
        facets["top_genres"] = top_genres(page.skip, page.limit)
    return [{"$match": match}, {"$project": PLAY_FIELDS}, {"$facet": facets}]


def sessions_pipeline(match: Document, gap_ms: int, reference: datetime) -> list[Document]:
    """Number of sessions and their summed length (ms), by the gap rule."""
    end = {"$add": ["$playedAt", "$msPlayed"]}
    first = {
        "$or": [
            {"$eq": ["$prevEnd", None]},
            {"$gt": [{"$subtract": ["$playedAt", "$prevEnd"]}, gap_ms]},
        ]
    }
    last = {
        "$or": [
            {"$eq": ["$nextStart", None]},
            {"$gt": [{"$subtract": ["$nextStart", "$end"]}, gap_ms]},
        ]
    }
    return [
        {"$match": match},
        {"$sort": {"userId": 1, "playedAt": 1}},
        {
            "$setWindowFields": {
                "partitionBy": "$userId",
                "sortBy": {"playedAt": 1},
                "output": {
                    "prevEnd": {"$shift": {"output": end, "by": -1, "default": None}},
                    "nextStart": {"$shift": {"output": "$playedAt", "by": 1, "default": None}},
                },
            }
        },
        {
            "$project": {
                "_id": 0,
                "playedAt": 1,
                "prevEnd": 1,
                "nextStart": 1,
                "end": end,
            }
        },
        {
            "$group": {
                "_id": None,
                "sessions": {"$sum": {"$cond": [first, 1, 0]}},
                "starts": {"$sum": {"$cond": [first, {"$subtract": ["$playedAt", reference]}, 0]}},
                "stops": {"$sum": {"$cond": [last, {"$subtract": ["$end", reference]}, 0]}},
            }
        },
    ]


def _items(facet: list[Document], total: int, key: str) -> tuple[list[Document], int]:
    paged: Document = facet[0] if facet else {"n": 0, "items": []}
    items = []
    for item in paged["items"]:
        entry: Document = {key: item["_id"]}
        if key == "artist_id":
            entry["name"] = item.get("name")
        entry.update(
            plays=int(item["plays"]),
            share=share(int(item["plays"]), total),
            hours=round(item["ms"] / MS_PER_HOUR, 4),
        )
        items.append(entry)
    return items, int(paged["n"])


async def engagement(
    db: AsyncDatabase[Document],
    rng: TimeRange,
    user_id: str | None,
    fields: Sequence[str],
    page: Page,
    gap_min: float,
    max_time_ms: int,
) -> tuple[Document, dict[str, int]]:
    """The requested parts and, per top list, its number of entries."""
    match = listening_match(rng, user_id)
    plays = db[LISTENING_HISTORY]

    async def run(pipeline: list[Document], **options: Any) -> list[Document]:
        cursor = await plays.aggregate(pipeline, maxTimeMS=max_time_ms, **options)
        return await cursor.to_list()

    gap_ms = round(gap_min * 60_000)
    jobs = [run(overview_pipeline(match, fields, page))]
    if "kpis" in fields:
        hint = {} if user_id else {"hint": SESSION_INDEX}
        jobs.append(run(sessions_pipeline(match, gap_ms, rng.start), **hint))
    results = await asyncio.gather(*jobs)
    overview = results[0][0] if results[0] else {}
    counts = (overview.get("plays") or [{}])[0]
    total = int(counts.get("plays", 0))
    data: Document = {}
    totals: dict[str, int] = {}
    if "kpis" in fields:
        sessions = results[1][0] if results[1] else {}
        tracks = int((overview.get("tracks") or [{"n": 0}])[0]["n"])
        count = int(sessions.get("sessions", 0))
        length_ms = sessions.get("stops", 0) - sessions.get("starts", 0)
        data["kpis"] = {
            "plays": total,
            "listening_hours": round(counts.get("ms", 0) / MS_PER_HOUR, 4),
            "unique_tracks": tracks,
            "unique_artists": int((overview.get("artists") or [{"n": 0}])[0]["n"]),
            "skip_rate": skip_rate(counts),
            "repeat_rate": round((total - tracks) / total, 6) if total else None,
            "sessions": count,
            "avg_session_min": round(length_ms / count / 60_000, 3) if count else None,
            "session_gap_min": gap_min,
        }
    for name, key in (("top_artists", "artist_id"), ("top_genres", "genre")):
        if name in fields:
            data[name], totals[name] = _items(overview.get(name, []), total, key)
    return data, totals
