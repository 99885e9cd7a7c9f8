"""``echotune-seed``: deterministic, idempotent, realistic enough, rollups matching the attempts."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from pymongo.asynchronous.database import AsyncDatabase

from echotune.analytics.seed.catalogue import build_catalogue
from echotune.analytics.seed.cli import seed_attempts, seed_plays
from echotune.analytics.seed.listening import all_plays, profile
from echotune.analytics.seed.telemetry import attempts
from echotune.common.mongo import LISTENING_HISTORY, PROVIDER_ROLLUPS, PROVIDER_TELEMETRY

Document = dict[str, Any]
END = datetime(2024, 6, 1, tzinfo=UTC)


def test_same_seed_same_documents() -> None:
    catalogue = build_catalogue(3)
    first = list(all_plays(catalogue, 3, 2, 300, END, 30))
    again = list(all_plays(build_catalogue(3), 3, 2, 300, END, 30))
    assert first == again
    other = list(all_plays(build_catalogue(4), 4, 2, 300, END, 30))
    assert {p["_id"] for p in first}.isdisjoint({p["_id"] for p in other})
    assert list(attempts(3, 500, END, 7, 2)) == list(attempts(3, 500, END, 7, 2))


def test_plays_have_a_realistic_shape() -> None:
    plays = list(all_plays(build_catalogue(5), 5, 4, 1_500, END, 60))
    assert len(plays) == 6_000
    assert all(END - timedelta(days=61) <= p["playedAt"] < END for p in plays)
    skip_rate = sum(p["skipped"] for p in plays) / len(plays)
    assert 0.08 < skip_rate < 0.35
    artists = Counter(p["artistNames"][0] for p in plays).most_common()
    assert artists[0][1] > 8 * artists[len(artists) // 2][1]  # power law: a few artists dominate
    assert all(p["genres"] for p in plays)
    night = day = 0
    for p in plays:  # diurnal rhythm in each listener's own time zone
        hour = p["playedAt"].astimezone(ZoneInfo(profile(5, int(p["userId"][4:])).time_zone)).hour
        night += 3 <= hour < 6
        day += 18 <= hour < 21
    assert day > 4 * night
    assert Counter(p["reasonEnd"] for p in plays)["trackdone"] > len(plays) / 2


async def test_seeding_is_idempotent_and_rollups_match(db: AsyncDatabase[Document]) -> None:
    args: dict[str, Any] = {"seed": 9, "end": END, "days": 3}
    assert await seed_plays(db, users=2, plays=150, **args) == (300, 0)
    assert await seed_attempts(db, count=400, users=2, batch=128, **args) == (400, 0)
    assert await seed_plays(db, users=2, plays=150, **args) == (0, 300)
    assert await seed_attempts(db, count=400, users=2, batch=128, **args) == (0, 400)
    assert await db[LISTENING_HISTORY].count_documents({}) == 300
    raw = await db[PROVIDER_TELEMETRY].find().to_list()
    assert len(raw) == 400
    assert {d["attempt"] for d in raw} <= {1, 2, 3}
    assert any(d["isFailover"] for d in raw)
    rollups = await db[PROVIDER_ROLLUPS].find().to_list()
    assert sum(r["count"] for r in rollups) == 400
    assert sum(r.get("successes", 0) for r in rollups) == sum(d["success"] for d in raw)
    errors: Counter[str] = Counter()
    for r in rollups:
        errors.update(r.get("errors", {}))
    assert errors == Counter(d["errorCode"] for d in raw if not d["success"])
    per_model = Counter((d["provider"], d["model"]) for d in raw)
    by_rollup: Counter[tuple[str, str]] = Counter()
    for r in rollups:
        by_rollup[(r["provider"], r["model"])] += r["count"]
        assert sum(r["latencyHist"].values()) == r["count"]
    assert by_rollup == per_model


def test_named_listeners_get_plays_of_their_own() -> None:
    """`make seed` gives the `make dev` user a history, whatever the number of other users."""
    catalogue = build_catalogue(3)
    plays = list(all_plays(catalogue, 3, 2, 200, END, 30, named=["dev"]))
    assert Counter(p["userId"] for p in plays) == {"user001": 200, "user002": 200, "dev": 200}
    more = list(all_plays(catalogue, 3, 5, 200, END, 30, named=["dev"]))
    assert [p for p in plays if p["userId"] == "dev"] == [p for p in more if p["userId"] == "dev"]
