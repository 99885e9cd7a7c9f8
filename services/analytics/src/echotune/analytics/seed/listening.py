"""Synthetic plays: sessions placed by a diurnal and weekly rhythm in each user's time zone,
power-law artist choice biased to the user's favourite genres, repeats, shuffle and skips."""

from __future__ import annotations

import bisect
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from echotune.analytics.documents import Document, play_document
from echotune.analytics.seed.catalogue import GENRES, Catalogue, Track

TIME_ZONES = (
    "Europe/Paris", "America/New_York", "Asia/Tokyo", "America/Los_Angeles", "Europe/London",
    "Australia/Sydney", "America/Sao_Paulo", "Asia/Kolkata",
)  # fmt: skip
PLATFORMS = ("android", "ios", "windows", "osx", "web_player", "linux")
# relative chance that a session starts at each local hour, weekdays and weekends
WEEKDAY_HOURS = (
    2, 1, 0.5, 0.3, 0.3, 0.6, 2, 6, 8, 5, 3, 3, 5, 4, 3, 3, 4, 7, 8, 8, 8, 7, 5, 3,
)  # fmt: skip
WEEKEND_HOURS = (
    4, 3, 2, 1, 0.5, 0.3, 0.5, 1, 2, 4, 6, 6, 6, 6, 6, 6, 6, 6, 7, 8, 8, 8, 7, 5,
)  # fmt: skip
DAY_WEIGHTS = (1.0, 1.0, 1.0, 1.05, 1.15, 1.35, 1.25)  # Monday … Sunday
REPEAT_P, SHUFFLE_P, BASE_SKIP_P = 0.18, 0.4, 0.15


@dataclass(frozen=True)
class UserProfile:
    """A listener: time zone, platform, favourite genres."""

    user_id: str
    time_zone: str
    platform: str
    favourites: tuple[str, ...]


Listener = int | str
"""A synthetic user: the ``index``-th (``user001``…) or one named (``dev``, the local user)."""


def user_id(index: Listener) -> str:
    """Id of the ``index``-th synthetic user, or the name itself."""
    return index if isinstance(index, str) else f"user{index:03d}"


def profile(seed: int, index: Listener) -> UserProfile:
    """The deterministic profile of a user."""
    rnd = random.Random(f"user:{seed}:{index}")
    favourites = tuple(rnd.sample(GENRES, 3))
    return UserProfile(user_id(index), rnd.choice(TIME_ZONES), rnd.choice(PLATFORMS), favourites)


def _session_start(rnd: random.Random, tz: ZoneInfo, first: datetime, days: int) -> datetime:
    """A local start time: a day by weekly rhythm, an hour by the day's diurnal rhythm."""
    while True:
        day = (first + timedelta(days=rnd.randrange(days))).astimezone(tz).date()
        if rnd.random() * max(DAY_WEIGHTS) <= DAY_WEIGHTS[day.weekday()]:
            break
    hours = WEEKEND_HOURS if day.weekday() >= 5 else WEEKDAY_HOURS
    hour = rnd.choices(range(24), weights=hours)[0]
    local = datetime(day.year, day.month, day.day, hour, rnd.randrange(60), rnd.randrange(60))
    return local.replace(tzinfo=tz).astimezone(ZoneInfo("UTC"))


def user_plays(
    catalogue: Catalogue, seed: int, index: Listener, plays: int, end: datetime, days: int
) -> Iterator[Document]:
    """``plays`` plays of one user in the ``days`` days before ``end`` (oldest not first)."""
    user = profile(seed, index)
    rnd = random.Random(f"plays:{seed}:{index}")
    tz = ZoneInfo(user.time_zone)
    boost = dict.fromkeys(user.favourites, 4.0)
    cumulative = catalogue.cumulative(boost)
    artists = catalogue.artists
    recent: list[tuple[int, Track]] = []
    made = 0
    while made < plays:
        moment = _session_start(rnd, tz, end - timedelta(days=days), days)
        shuffle = rnd.random() < SHUFFLE_P
        length = 1 + int(rnd.expovariate(1 / 9))
        reason_start = rnd.choice(("clickrow", "playbtn", "appload"))
        for position in range(length):
            if made >= plays or moment >= end:
                break
            if recent and rnd.random() < REPEAT_P:
                rank, track = rnd.choice(recent)
            else:
                pick = rnd.random() * cumulative[-1]
                rank = min(bisect.bisect_left(cumulative, pick), len(artists) - 1)
                track = rnd.choice(artists[rank].tracks)
            artist = artists[rank]
            liked = bool(set(artist.genres) & set(user.favourites))
            skip_p = BASE_SKIP_P + (0.12 if shuffle else 0) - (0.07 if liked else 0)
            skipped = rnd.random() < skip_p
            if skipped:
                ms = rnd.randint(2_000, max(2_001, int(track.duration_ms * 0.4)))
            else:
                ms = int(track.duration_ms * rnd.uniform(0.97, 1.0))
            last = position == length - 1
            reason_end = "fwdbtn" if skipped else ("endplay" if last else "trackdone")
            yield play_document(
                user_id=user.user_id,
                played_at=moment,
                track_id=track.track_id,
                track_name=track.name,
                artist_names=[artist.name],
                album=track.album,
                genres=artist.genres,
                ms_played=ms,
                track_duration_ms=track.duration_ms,
                skipped=skipped,
                reason_start=reason_start,
                reason_end=reason_end,
                shuffle=shuffle,
                platform=user.platform,
                source="seed",
            )
            made += 1
            recent = [*recent[-49:], (rank, track)]
            reason_start = "fwdbtn" if skipped else "trackdone"
            pause = rnd.uniform(0.2, 3.0) + (rnd.uniform(60, 600) if rnd.random() < 0.04 else 0)
            moment += timedelta(milliseconds=ms, seconds=pause)


def all_plays(
    catalogue: Catalogue,
    seed: int,
    users: int,
    plays: int,
    end: datetime,
    days: int,
    named: Sequence[str] = (),
) -> Iterator[Document]:
    """The plays of ``users`` numbered users and of the ``named`` ones, ``plays`` each."""
    for index in [*range(1, users + 1), *named]:
        yield from user_plays(catalogue, seed, index, plays, end, days)
