"""GET /api/analytics/listening-patterns against expectations computed in plain Python."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from pymongo.asynchronous.database import AsyncDatabase

from echotune.analytics.documents import play_document
from tests.unit.analytics.conftest import get_ok
from tests.unit.analytics.data import insert_plays, make_plays

Document = dict[str, Any]
PATH = "/api/analytics/listening-patterns"


def stats(plays: list[Document]) -> Document:
    return {
        "plays": len(plays),
        "unique_tracks": len({p["trackId"] for p in plays}),
        "minutes": pytest.approx(sum(p["msPlayed"] for p in plays) / 60_000, abs=1e-3),
    }


def bucket_start(moment: datetime, tz: ZoneInfo, granularity: str) -> datetime:
    """The local start of the bucket holding ``moment`` (independent of MongoDB)."""
    local = moment.astimezone(tz)
    if granularity == "hour":
        return local.replace(minute=0, second=0, microsecond=0)
    day = local.date()
    if granularity == "week":
        day -= timedelta(days=day.weekday())
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def expected(plays: list[Document], tz_name: str, granularity: str) -> Document:
    tz = ZoneInfo(tz_name)
    hours: dict[int, list[Document]] = defaultdict(list)
    days: dict[int, list[Document]] = defaultdict(list)
    cells: dict[tuple[int, int], list[Document]] = defaultdict(list)
    buckets: dict[datetime, list[Document]] = defaultdict(list)
    for play in plays:
        local = play["playedAt"].astimezone(tz)
        hours[local.hour].append(play)
        days[local.isoweekday()].append(play)
        cells[(local.isoweekday(), local.hour)].append(play)
        buckets[bucket_start(play["playedAt"], tz, granularity)].append(play)
    return {
        "totals": stats(plays),
        "by_hour": [{"hour": h, **stats(hours[h])} for h in range(24)],
        "by_weekday": [{"weekday": d, **stats(days[d])} for d in range(1, 8)],
        "matrix": {
            part: [[stats(cells[(d, h)])[part] for h in range(24)] for d in range(1, 8)]
            for part in ("plays", "unique_tracks", "minutes")
        },
        "timeline": [
            {"start": start.astimezone(UTC), **stats(buckets[start])} for start in sorted(buckets)
        ],
    }


def as_utc(point: Document) -> Document:
    return {**point, "start": datetime.fromisoformat(point["start"]).astimezone(UTC)}


@pytest.mark.parametrize(
    ("tz", "granularity", "user"),
    [
        ("UTC", "day", None),
        ("Asia/Tokyo", "day", "alice"),
        ("America/New_York", "hour", None),  # crosses the switch to daylight time
        ("Asia/Kolkata", "hour", "bob"),  # a half-hour offset
        ("Europe/Paris", "week", None),
    ],
)
async def test_patterns_match_plain_python(
    db: AsyncDatabase[Document], api: httpx.AsyncClient, tz: str, granularity: str, user: str | None
) -> None:
    plays = make_plays()
    await insert_plays(db, plays)
    mine = [p for p in plays if user is None or p["userId"] == user]
    want = expected(mine, tz, granularity)
    params: Document = {"tz": tz, "granularity": granularity, "limit": 200}
    if user:
        params["user_id"] = user
    body = await get_ok(api, PATH, **params)
    data = body["data"]
    assert data["totals"] == want["totals"]
    assert [{k: v for k, v in h.items()} for h in data["by_hour"]] == want["by_hour"]
    assert [{k: v for k, v in d.items() if k != "name"} for d in data["by_weekday"]] == want[
        "by_weekday"
    ]
    assert data["by_weekday"][0]["name"] == "Monday"
    for part in ("plays", "unique_tracks", "minutes"):
        assert data["matrix"][part] == want["matrix"][part]
    assert [as_utc(p) for p in data["timeline"]] == want["timeline"]
    assert body["meta"]["total"] == len(want["timeline"])
    assert body["meta"]["window"]["time_zone"] == tz


async def test_a_late_utc_play_is_the_next_day_in_tokyo(
    db: AsyncDatabase[Document], api: httpx.AsyncClient
) -> None:
    monday_late = datetime(2024, 3, 4, 23, 30, tzinfo=UTC)  # Tuesday 08:30 in Tokyo
    tuesday = datetime(2024, 3, 5, 1, 0, tzinfo=UTC)  # Tuesday 10:00 in Tokyo
    plays = [
        play_document(user_id="u", played_at=when, track_id=f"t{n}", track_name="x",
                      artist_names=["a"], ms_played=60_000)
        for n, when in enumerate((monday_late, tuesday))
    ]  # fmt: skip
    await insert_plays(db, plays)

    utc = (await get_ok(api, PATH, granularity="day"))["data"]
    assert [d["plays"] for d in utc["by_weekday"]][:2] == [1, 1]
    assert [(p["start"], p["plays"]) for p in utc["timeline"]] == [
        ("2024-03-04T00:00:00Z", 1),
        ("2024-03-05T00:00:00Z", 1),
    ]
    assert utc["by_hour"][23]["plays"] == 1

    tokyo = (await get_ok(api, PATH, granularity="day", tz="Asia/Tokyo"))["data"]
    assert (await get_ok(api, PATH, granularity="day", time_zone="Asia/Tokyo"))["data"] == tokyo
    assert [d["plays"] for d in tokyo["by_weekday"]][:2] == [0, 2]
    assert [(p["start"], p["plays"]) for p in tokyo["timeline"]] == [
        ("2024-03-05T00:00:00+09:00", 2)
    ]
    assert (tokyo["by_hour"][8]["plays"], tokyo["by_hour"][10]["plays"]) == (1, 1)
    assert tokyo["matrix"]["plays"][1][8] == 1  # Tuesday, 08h

    # a naive "from" is local time in tz: Tokyo's 5 March starts at 15:00 UTC on the 4th
    local = await get_ok(api, PATH, tz="Asia/Tokyo", fields="totals", **{"from": "2024-03-05"})
    assert local["data"]["totals"]["plays"] == 2
    in_utc = await get_ok(api, PATH, fields="totals", **{"from": "2024-03-05"})
    assert in_utc["data"]["totals"]["plays"] == 1


async def test_timeline_pages_and_field_selection(
    db: AsyncDatabase[Document], api: httpx.AsyncClient
) -> None:
    plays = make_plays()
    await insert_plays(db, plays)
    everything = await get_ok(api, PATH, granularity="hour", fields="timeline", limit=200)
    full = everything["data"]["timeline"]
    assert set(everything["data"]) == {"timeline"}
    pages = []
    for page in (1, 2, 3):
        body = await get_ok(api, PATH, granularity="hour", fields="timeline", limit=7, page=page)
        assert (body["meta"]["page"], body["meta"]["limit"]) == (page, 7)
        assert body["meta"]["total"] == len(full)
        pages += body["data"]["timeline"]
    assert pages == full[:21]
    only = await get_ok(api, PATH, fields=["totals", "by_weekday"])
    assert set(only["data"]) == {"totals", "by_weekday"}
    assert "page" not in only["meta"]


async def test_range_bounds_are_half_open(
    db: AsyncDatabase[Document], api: httpx.AsyncClient
) -> None:
    plays = make_plays()
    await insert_plays(db, plays)
    lower, upper = datetime(2024, 3, 9, 6, tzinfo=UTC), datetime(2024, 3, 10, 18, tzinfo=UTC)
    inside = [p for p in plays if lower <= p["playedAt"] < upper]
    body = await get_ok(
        api, PATH, fields="totals", **{"from": "2024-03-09T06:00:00Z", "to": "2024-03-10T18:00:00Z"}
    )
    assert body["data"]["totals"] == stats(inside)
    assert body["meta"]["window"]["window"] is None
