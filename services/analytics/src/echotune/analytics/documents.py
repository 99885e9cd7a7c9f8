"""The listening-history document (one per play): field names, deterministic ids, a builder.

Spotify exports carry no artist ids and the basic export no track ids either, so
``artistIds`` are always derived from the artist name and ``trackId`` is the Spotify track
id when known, else derived from artist and track name. ``playedAt`` is when the play
started (Spotify's ``ts``/``endTime`` is when it stopped, minus ``msPlayed``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

Document = dict[str, Any]
SEP = "\x1f"


def _digest(*parts: str, size: int = 16) -> str:
    return hashlib.sha256(SEP.join(parts).encode()).hexdigest()[:size]


def to_utc_ms(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime truncated to milliseconds (BSON's precision)."""
    aware = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    return aware.replace(microsecond=aware.microsecond // 1000 * 1000)


def artist_id(name: str) -> str:
    """Stable id of an artist, from its case-folded name."""
    return "ar:" + _digest(" ".join(name.casefold().split()))


def derived_track_id(artist: str, track: str) -> str:
    """Stable id of a track known only by artist and name."""
    return "tr:" + _digest(" ".join(artist.casefold().split()), " ".join(track.casefold().split()))


def play_id(user_id: str, played_at: datetime, track_id: str) -> str:
    """Deterministic ``_id`` of a play: importing the same play twice is a duplicate key."""
    stamp = to_utc_ms(played_at).isoformat(timespec="milliseconds")
    return _digest(user_id, stamp, track_id, size=32)


def play_document(
    *,
    user_id: str,
    played_at: datetime,
    track_id: str,
    track_name: str,
    artist_names: Sequence[str],
    ms_played: int,
    album: str | None = None,
    genres: Sequence[str] = (),
    track_duration_ms: int | None = None,
    skipped: bool | None = None,
    reason_start: str | None = None,
    reason_end: str | None = None,
    shuffle: bool | None = None,
    platform: str | None = None,
    source: str | None = None,
) -> Document:
    """One ``listening_history`` document with its deterministic ``_id``."""
    started = to_utc_ms(played_at)
    return {
        "_id": play_id(user_id, started, track_id),
        "userId": user_id,
        "playedAt": started,
        "trackId": track_id,
        "trackName": track_name,
        "artistIds": [artist_id(name) for name in artist_names],
        "artistNames": list(artist_names),
        "album": album,
        "genres": sorted(set(genres)),
        "msPlayed": int(ms_played),
        "trackDurationMs": track_duration_ms,
        "skipped": skipped,
        "reasonStart": reason_start,
        "reasonEnd": reason_end,
        "shuffle": shuffle,
        "platform": platform,
        "source": source,
    }
