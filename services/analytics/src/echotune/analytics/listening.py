"""Listening patterns: a timeline and hour/weekday distributions in the listener's time zone.

Every figure comes with plays, distinct tracks and minutes listened. Local hours, weekdays
(``echotune.common.listening``, shared with the worker's listening profile) and bucket
starts are computed by MongoDB (``$hour``, ``$isoDayOfWeek``, ``$dateTrunc`` with
``timezone``), so daylight-saving changes are handled by the server's time-zone database.
Timeline buckets without plays are left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any
from zoneinfo import ZoneInfo

from pymongo.asynchronous.database import AsyncDatabase

from echotune.analytics.params import Page, TimeRange
from echotune.common.listening import WEEKDAYS, counts_by, local_hour, local_weekday
from echotune.common.mongo import LISTENING_HISTORY

Document = dict[str, Any]
LISTENING_FIELDS = ("totals", "timeline", "by_hour", "by_weekday", "matrix")
GRANULARITIES = ("hour", "day", "week")


def listening_match(rng: TimeRange, user_id: str | None) -> Document:
    """Plays of the range (and user): served by ``user_playedAt`` or ``playedAt``."""
    match: Document = {"playedAt": {"$gte": rng.start, "$lt": rng.end}}
    if user_id:
        match["userId"] = user_id
    return match


def _paged(page: Page) -> list[Document]:
    """Count the sorted groups and keep one page of them, in one document."""
    return [
        {"$group": {"_id": None, "n": {"$sum": 1}, "items": {"$push": "$$ROOT"}}},
        {"$project": {"n": 1, "items": {"$slice": ["$items", page.skip, page.limit]}}},
    ]


def patterns_pipeline(
    match: Document, tz: str, granularity: str, fields: Sequence[str], page: Page
) -> list[Document]:
    """One aggregation: local time parts of each play, then one facet per requested part."""
    local = {"date": "$playedAt", "timezone": tz}
    shape: Document = {"_id": 0, "trackId": 1, "msPlayed": 1}
    if "timeline" in fields:
        trunc = {**local, "unit": granularity}
        if granularity == "week":
            trunc["startOfWeek"] = "monday"
        shape["t"] = {"$dateTrunc": trunc}
    if {"by_hour", "matrix"} & set(fields):
        shape["h"] = local_hour(tz)
    if {"by_weekday", "matrix"} & set(fields):
        shape["d"] = local_weekday(tz)
    facets = {
        "totals": counts_by(None),
        "timeline": [*counts_by("$t"), {"$sort": {"_id": 1}}, *_paged(page)],
        "by_hour": counts_by("$h"),
        "by_weekday": counts_by("$d"),
        "matrix": counts_by({"d": "$d", "h": "$h"}),
    }
    chosen = {name: facets[name] for name in fields}
    return [{"$match": match}, {"$project": shape}, {"$facet": chosen}]


def _stats(doc: Document | None) -> Document:
    if not doc:
        return {"plays": 0, "unique_tracks": 0, "minutes": 0.0}
    return {
        "plays": int(doc["plays"]),
        "unique_tracks": int(doc["tracks"]),
        "minutes": round(doc["ms"] / 60_000, 3),
    }


def _shape(name: str, rows: list[Document], tz: ZoneInfo) -> tuple[Any, int | None]:
    """The API form of one facet; the timeline also gives its number of buckets."""
    if name == "totals":
        return _stats(rows[0] if rows else None), None
    if name == "timeline":
        paged: Document = rows[0] if rows else {"n": 0, "items": []}
        points = []
        for item in paged["items"]:
            start = item["_id"] if item["_id"].tzinfo else item["_id"].replace(tzinfo=UTC)
            points.append({"start": start.astimezone(tz), **_stats(item)})
        return points, int(paged["n"])
    by_key = {_key(row["_id"]): row for row in rows}
    if name == "by_hour":
        return [{"hour": h, **_stats(by_key.get(h))} for h in range(24)], None
    if name == "by_weekday":
        days = [
            {"weekday": d, "name": WEEKDAYS[d - 1], **_stats(by_key.get(d))} for d in range(1, 8)
        ]
        return days, None
    cells = [[_stats(by_key.get((d, h))) for h in range(24)] for d in range(1, 8)]
    matrix = {
        "weekdays": list(WEEKDAYS),
        "hours": list(range(24)),
        **{part: [[cell[part] for cell in row] for row in cells] for part in _stats(None)},
    }
    return matrix, None


def _key(value: Any) -> Any:
    return (value["d"], value["h"]) if isinstance(value, dict) else value


async def listening_patterns(
    db: AsyncDatabase[Document],
    rng: TimeRange,
    user_id: str | None,
    granularity: str,
    fields: Sequence[str],
    page: Page,
    max_time_ms: int,
) -> tuple[Document, int | None]:
    """The requested parts, and the number of timeline buckets (when the timeline is asked)."""
    pipeline = patterns_pipeline(
        listening_match(rng, user_id), rng.time_zone, granularity, fields, page
    )
    cursor = await db[LISTENING_HISTORY].aggregate(pipeline, maxTimeMS=max_time_ms)
    result = (await cursor.to_list()) or [{}]
    tz = ZoneInfo(rng.time_zone)
    data: Document = {}
    total = None
    for name in fields:
        data[name], count = _shape(name, result[0].get(name, []), tz)
        total = count if count is not None else total
    return data, total
