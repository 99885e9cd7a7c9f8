"""GET /api/insights/engagement against expectations computed in plain Python."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta
from typing import Any

import httpx
import pytest
from pymongo.asynchronous.database import AsyncDatabase

from tests.unit.analytics.conftest import get_ok
from tests.unit.analytics.data import insert_plays, make_plays

Document = dict[str, Any]
PATH = "/api/insights/engagement"


def sessions(plays: list[Document], gap_min: float) -> list[tuple[Any, Any]]:
    """(start, end) of each session: per user, a play starting more than the gap after the
    previous play ended opens a new one."""
    found = []
    by_user: dict[str, list[Document]] = defaultdict(list)
    for play in plays:
        by_user[play["userId"]].append(play)
    for own in by_user.values():
        own.sort(key=lambda p: p["playedAt"])
        start = previous_end = None
        for play in own:
            end = play["playedAt"] + timedelta(milliseconds=play["msPlayed"])
            if previous_end is None or play["playedAt"] - previous_end > timedelta(minutes=gap_min):
                if start is not None:
                    found.append((start, previous_end))
                start = play["playedAt"]
            previous_end = end
        found.append((start, previous_end))
    return found


def top(plays: list[Document], key: str) -> list[Document]:
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    names: dict[str, str] = {}
    for play in plays:
        values = play[key]
        for i, value in enumerate(values):
            counts[value][0] += 1
            counts[value][1] += play["msPlayed"]
            if key == "artistIds":
                names[value] = min(names.get(value, play["artistNames"][i]), play["artistNames"][i])
    ordered = sorted(counts.items(), key=lambda item: (-item[1][0], -item[1][1], item[0]))
    rows = []
    for value, (n, ms) in ordered:
        row: Document = (
            {"artist_id": value, "name": names[value]} if key == "artistIds" else {"genre": value}
        )
        row |= {
            "plays": n,
            "share": pytest.approx(n / len(plays), abs=1e-6),
            "hours": pytest.approx(ms / 3.6e6, abs=1e-4),
        }
        rows.append(row)
    return rows


def kpis(plays: list[Document], gap_min: float = 30.0) -> Document:
    known = [p for p in plays if p["skipped"] is not None]
    tracks = {p["trackId"] for p in plays}
    found = sessions(plays, gap_min)
    length_min = sum((end - start).total_seconds() for start, end in found) / 60
    return {
        "plays": len(plays),
        "listening_hours": pytest.approx(sum(p["msPlayed"] for p in plays) / 3.6e6, abs=1e-4),
        "unique_tracks": len(tracks),
        "unique_artists": len({a for p in plays for a in p["artistIds"]}),
        "skip_rate": pytest.approx(sum(p["skipped"] is True for p in known) / len(known), abs=1e-6),
        "repeat_rate": pytest.approx((len(plays) - len(tracks)) / len(plays), abs=1e-6),
        "sessions": len(found),
        "avg_session_min": pytest.approx(length_min / len(found), abs=1e-3),
        "session_gap_min": gap_min,
    }


@pytest.mark.parametrize("user", [None, "carol"])
async def test_kpis_and_tops_match_plain_python(
    db: AsyncDatabase[Document], api: httpx.AsyncClient, user: str | None
) -> None:
    plays = make_plays()
    await insert_plays(db, plays)
    mine = [p for p in plays if user is None or p["userId"] == user]
    params: Document = {"limit": 50} | ({"user_id": user} if user else {})
    body = await get_ok(api, PATH, **params)
    data = body["data"]
    assert data["kpis"] == kpis(mine)
    assert data["top_artists"] == top(mine, "artistIds")
    assert data["top_genres"] == top(mine, "genres")
    assert body["meta"]["total"] == {
        "top_artists": len(top(mine, "artistIds")),
        "top_genres": len(top(mine, "genres")),
    }
    assert body["meta"]["filters"] == ({"user_id": user} if user else {})


async def test_session_gap_parameter(db: AsyncDatabase[Document], api: httpx.AsyncClient) -> None:
    plays = make_plays()
    await insert_plays(db, plays)
    for gap in (5, 30, 60):
        body = await get_ok(api, PATH, fields="kpis", session_gap_min=gap)
        got = body["data"]["kpis"]
        want = kpis(plays, gap)
        assert (got["sessions"], got["avg_session_min"]) == (
            want["sessions"],
            want["avg_session_min"],
        )
    assert len(sessions(plays, 5)) > len(sessions(plays, 30)) > len(sessions(plays, 60))


async def test_top_lists_are_paginated_and_selectable(
    db: AsyncDatabase[Document], api: httpx.AsyncClient
) -> None:
    plays = make_plays()
    await insert_plays(db, plays)
    want = top(plays, "artistIds")
    first = await get_ok(api, PATH, fields="top_artists", limit=4)
    second = await get_ok(api, PATH, fields="top_artists", limit=4, page=2)
    assert set(first["data"]) == {"top_artists"}
    assert first["data"]["top_artists"] + second["data"]["top_artists"] == want[:8]
    assert second["meta"]["total"] == {"top_artists": len(want)}
    beyond = await get_ok(api, PATH, fields="top_artists", limit=4, page=50)
    assert beyond["data"]["top_artists"] == []


async def test_empty_range_gives_zeroes_not_errors(
    db: AsyncDatabase[Document], api: httpx.AsyncClient
) -> None:
    await insert_plays(db, make_plays())
    body = await get_ok(api, PATH, user_id="nobody")
    assert body["data"]["kpis"] == {
        "plays": 0, "listening_hours": 0.0, "unique_tracks": 0, "unique_artists": 0,
        "skip_rate": None, "repeat_rate": None, "sessions": 0, "avg_session_min": None,
        "session_gap_min": 30.0,
    }  # fmt: skip
    assert (body["data"]["top_artists"], body["data"]["top_genres"]) == ([], [])
