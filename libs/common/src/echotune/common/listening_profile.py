"""What a listener's profile is: one aggregation over their latest plays, and its features.

The profile covers the listener's latest ``plays`` plays (a bounded amount of work whatever
the history's size, and meaningful for an export imported years later), in their time zone:

* ``period``: how many plays, first and last day;
* ``top_artists`` / ``top_genres``: most played, with their share of the plays;
* ``favourite_hours`` / ``favourite_weekdays``: local hours and days with most plays;
* ``recent_tracks``: the latest distinct tracks, newest first;
* ``skip_rate``: when the history says which plays were skipped.

Every figure is built from ``echotune.common.listening``, the stages analytics' engagement and
listening patterns use, so the profile agrees with the dashboard. Names come from imported
data: they are cleaned (no control characters, collapsed spaces, bounded length) before they
can reach a prompt.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field

from echotune.common.listening import (
    PLAY_FIELDS,
    WEEKDAYS,
    counts_by,
    local_hour,
    local_weekday,
    play_totals,
    share,
    skip_rate,
    top_artists,
    top_genres,
)
from echotune.common.messages import ProfileFeature

Document = dict[str, Any]
NAME_CHARS = 60
UNSAFE = re.compile(r"[\x00-\x1f\x7f\u2028\u2029]+")
FEATURES = (
    "period",
    "top_artists",
    "top_genres",
    "favourite_hours",
    "favourite_weekdays",
    "recent_tracks",
    "skip_rate",
)


class Ranked(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    share: float = Field(ge=0, le=1, description="Share of the plays")


class ListeningProfile(BaseModel):
    """A listener's profile; cached as JSON, so every field is plain data."""

    model_config = ConfigDict(frozen=True)

    plays: int = Field(ge=1)
    first_play: datetime
    last_play: datetime
    time_zone: str
    top_artists: list[Ranked]
    top_genres: list[Ranked]
    favourite_hours: list[int]
    favourite_weekdays: list[str]
    recent_tracks: list[str]
    skip_rate: float | None

    def features(self) -> list[ProfileFeature]:
        """The profile as named features, in :data:`FEATURES` order; empty ones left out."""
        zone = ZoneInfo(self.time_zone)
        first, last = _local(self.first_play, zone), _local(self.last_play, zone)
        values: dict[str, Any] = {
            "period": f"{self.plays} plays, {first:%Y-%m-%d} to {last:%Y-%m-%d}",
            "top_artists": [_ranked(r) for r in self.top_artists],
            "top_genres": [_ranked(r) for r in self.top_genres],
            "favourite_hours": self.favourite_hours,
            "favourite_weekdays": self.favourite_weekdays,
            "recent_tracks": self.recent_tracks,
            "skip_rate": self.skip_rate,
        }
        return [
            ProfileFeature(name=name, value=values[name])
            for name in FEATURES
            if values[name] not in (None, [])
        ]


def _local(moment: datetime, zone: ZoneInfo) -> datetime:
    """``moment`` in ``zone``; in UTC when its local day is past year 1 or 9999."""
    try:
        return moment.astimezone(zone)
    except OverflowError:
        return moment


def _ranked(item: Ranked) -> str:
    return f"{item.name} ({item.share:.0%})"


def clean(name: Any) -> str:
    """A name safe to quote in a prompt: one line, no control characters, bounded."""
    text = " ".join(UNSAFE.sub(" ", str(name or "")).split())
    return text if len(text) <= NAME_CHARS else text[: NAME_CHARS - 1] + "…"


def profile_pipeline(
    user_id: str, *, plays: int, time_zone: str, top: int, recent: int
) -> list[Document]:
    """One aggregation: the user's latest ``plays`` plays (index ``user_playedAt``, read
    backwards), then every part of the profile in one ``$facet``."""
    fields = {**PLAY_FIELDS, "playedAt": 1, "trackName": 1}
    fields.update(h=local_hour(time_zone), d=local_weekday(time_zone))
    latest = {"$max": "$playedAt"}
    facets = {
        "totals": [play_totals(first={"$min": "$playedAt"}, last=latest)],
        "top_artists": top_artists(0, top),
        "top_genres": top_genres(0, top),
        "by_hour": counts_by("$h"),
        "by_weekday": counts_by("$d"),
        "recent": [
            {
                "$group": {
                    "_id": "$trackId",
                    "last": latest,
                    "track": {"$first": "$trackName"},
                    "artists": {"$first": "$artistNames"},
                }
            },
            {"$sort": {"last": -1, "_id": 1}},
            {"$limit": recent},
        ],
    }
    return [
        {"$match": {"userId": user_id}},
        {"$sort": {"playedAt": -1}},
        {"$limit": plays},
        {"$project": fields},
        {"$facet": facets},
    ]


def read_profile(
    result: Document, time_zone: str, *, hours: int = 3, weekdays: int = 2
) -> ListeningProfile | None:
    """The profile from :func:`profile_pipeline`'s document; ``None`` without plays."""
    totals = (result.get("totals") or [None])[0]
    if not totals or not totals.get("plays"):
        return None
    total = int(totals["plays"])
    return ListeningProfile(
        plays=total,
        first_play=totals["first"],
        last_play=totals["last"],
        time_zone=time_zone,
        top_artists=_top(result.get("top_artists"), total, "name"),
        top_genres=_top(result.get("top_genres"), total, "_id"),
        favourite_hours=_most_played(result.get("by_hour") or [], hours),
        favourite_weekdays=[
            WEEKDAYS[day - 1] for day in _most_played(result.get("by_weekday") or [], weekdays)
        ],
        recent_tracks=[_track(row) for row in result.get("recent") or []],
        skip_rate=skip_rate(totals),
    )


def _top(facet: list[Document] | None, total: int, key: str) -> list[Ranked]:
    items = (facet or [{"items": []}])[0]["items"]
    return [Ranked(name=clean(item.get(key)), share=share(item["plays"], total)) for item in items]


def _most_played(rows: list[Document], count: int) -> list[int]:
    """Keys of the ``count`` groups with most plays (ties: the earlier key)."""
    ordered = sorted(rows, key=lambda row: (-row["plays"], row["_id"]))
    return [int(row["_id"]) for row in ordered[:count]]


def _track(row: Document) -> str:
    artists = ", ".join(clean(a) for a in row.get("artists") or [])
    return f"{artists} – {clean(row.get('track'))}" if artists else clean(row.get("track"))
