"""A synthetic music catalogue: artists with power-law popularity, genres, tracks."""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import accumulate

GENRES = (
    "pop", "rock", "indie", "hip hop", "electronic", "house", "techno", "jazz", "soul", "r&b",
    "classical", "ambient", "folk", "country", "metal", "punk", "reggae", "latin", "k-pop",
    "afrobeats", "blues", "lo-fi", "synthwave", "drum and bass",
)  # fmt: skip
_SYLLABLES = (
    "lu", "na", "ve", "ro", "ka", "mi", "sol", "tre", "da", "zen", "or", "el", "vo", "ra",
    "shi", "mon", "ta", "li", "qu", "ber", "an", "is", "ko", "fa",
)  # fmt: skip
_WORDS = (
    "Night", "River", "Glass", "Echo", "Velvet", "Paper", "Golden", "Neon", "Silent", "Wild",
    "Blue", "Static", "Summer", "Falling", "Hollow", "Electric", "Ocean", "Midnight", "Lost",
    "Bright", "Cold", "Young", "Distant", "Crystal",
)  # fmt: skip
_NOUNS = (
    "Hearts", "Lights", "Dreams", "Roads", "Waves", "Fire", "Skies", "Lines", "Rooms", "Birds",
    "Machines", "Stars", "Signals", "Shadows", "Gardens", "Letters",
)  # fmt: skip
ZIPF_EXPONENT = 1.1


@dataclass(frozen=True, slots=True)
class Track:
    """One track of an artist."""

    track_id: str
    name: str
    album: str
    duration_ms: int


@dataclass(frozen=True, slots=True)
class Artist:
    """An artist, its genres and tracks; ``rank`` 0 is the most popular."""

    rank: int
    name: str
    genres: tuple[str, ...]
    tracks: tuple[Track, ...]

    @property
    def popularity(self) -> float:
        """Zipf weight of the artist: ``1 / (rank + 1)^s``."""
        return float(1 / (self.rank + 1) ** ZIPF_EXPONENT)


@dataclass(frozen=True)
class Catalogue:
    """All artists, most popular first, and their cumulative popularity for sampling."""

    artists: tuple[Artist, ...]

    def cumulative(self, boost: dict[str, float] | None = None) -> list[float]:
        """Cumulative weights, popularity × the largest boost among an artist's genres."""
        boost = boost or {}
        weights = [
            a.popularity * max([boost.get(g, 1.0) for g in a.genres] or [1.0]) for a in self.artists
        ]
        return list(accumulate(weights))


def _artist_name(rnd: random.Random) -> str:
    style = rnd.random()
    if style < 0.35:
        return f"The {rnd.choice(_WORDS)} {rnd.choice(_NOUNS)}"
    if style < 0.7:
        word = "".join(rnd.choice(_SYLLABLES) for _ in range(rnd.randint(2, 3)))
        return word.capitalize()
    first = "".join(rnd.choice(_SYLLABLES) for _ in range(2)).capitalize()
    last = "".join(rnd.choice(_SYLLABLES) for _ in range(rnd.randint(2, 3))).capitalize()
    return f"{first} {last}"


def _title(rnd: random.Random) -> str:
    return f"{rnd.choice(_WORDS)} {rnd.choice(_NOUNS)}"


def build_catalogue(seed: int, artists: int = 400) -> Catalogue:
    """``artists`` artists with 1–3 genres (popular genres more often) and 4–15 tracks each."""
    rnd = random.Random(f"catalogue:{seed}")
    genre_weights = list(accumulate(1 / (i + 1) ** 0.7 for i in range(len(GENRES))))
    result = []
    names: set[str] = set()
    for rank in range(artists):
        name = _artist_name(rnd)
        while name in names:
            name = f"{name} {rnd.choice(_NOUNS)}"
        names.add(name)
        count = rnd.choice((1, 1, 2, 2, 3))
        genres = tuple(sorted(set(rnd.choices(GENRES, cum_weights=genre_weights, k=count))))
        albums = [_title(rnd) for _ in range(rnd.randint(1, 3))]
        tracks = tuple(
            Track(
                track_id=f"seed{seed}:{rank:04d}:{n:02d}",
                name=_title(rnd),
                album=rnd.choice(albums),
                duration_ms=int(min(max(rnd.lognormvariate(12.25, 0.25), 60_000), 600_000)),
            )
            for n in range(rnd.randint(4, 15))
        )
        result.append(Artist(rank, name, genres, tracks))
    return Catalogue(tuple(result))
