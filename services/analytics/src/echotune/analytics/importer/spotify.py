"""Spotify streaming-history exports → play documents, streamed record by record.

Two formats, recognised per record:

* Extended streaming history (``Streaming_History_Audio_*.json``): ``ts`` (when playback
  stopped, UTC), ``ms_played``, ``master_metadata_track_name``,
  ``master_metadata_album_artist_name``, ``master_metadata_album_album_name``,
  ``spotify_track_uri``, ``reason_start``, ``reason_end``, ``shuffle``, ``skipped``,
  ``platform``… Podcast episodes and audiobooks have null track fields: rejected.
* Basic streaming history (``StreamingHistory_music_*.json``): ``endTime``
  (``"2024-01-31 23:59"``, UTC), ``artistName``, ``trackName``, ``msPlayed``.

Files are parsed incrementally with ``ijson`` (never loaded whole).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import ijson

from echotune.analytics.documents import derived_track_id, play_document

Document = dict[str, Any]
MAX_MS_PLAYED = 24 * 3_600_000
TRACK_URI_PREFIX = "spotify:track:"
FILE_PATTERNS = ("Streaming_History_Audio_*.json", "StreamingHistory_music_*.json")


class Rejected(Exception):
    """A record that is not a valid music play: ``reason`` is a short code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


@dataclass(frozen=True)
class GenreMap:
    """Artist name → genres (names compared case-insensitively)."""

    genres: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> GenreMap:
        """Read ``{"Artist": ["genre", …] | "genre", …}``; ValueError when malformed."""
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("the genre map must be a JSON object: artist name → genres")
        genres: dict[str, tuple[str, ...]] = {}
        for artist, value in raw.items():
            names = [value] if isinstance(value, str) else value
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise ValueError(f"genres of {artist!r} must be a string or a list of strings")
            genres[_fold(artist)] = tuple(n.strip().lower() for n in names if n.strip())
        return cls(genres)

    def of(self, artist: str) -> tuple[str, ...]:
        """The genres of ``artist`` (none when unknown)."""
        return self.genres.get(_fold(artist), ())


def _fold(name: str) -> str:
    return " ".join(name.casefold().split())


def expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given; a directory stands for the streaming-history files inside it."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted({p for pattern in FILE_PATTERNS for p in path.glob(pattern)})
        else:
            found.append(path)
    return found


def iter_records(stream: BinaryIO) -> Iterator[Any]:
    """The elements of the top-level JSON array, one at a time (ijson errors propagate)."""
    head = stream.read(1)
    while head and head.isspace():
        head = stream.read(1)
    if head == b"\xef":  # UTF-8 byte order mark
        stream.read(2)
        head = stream.read(1)
    if head != b"[":
        raise ValueError("not a JSON array of streaming-history records")
    stream.seek(stream.tell() - 1)
    yield from ijson.items(stream, "item", use_float=True)


def _text(record: Mapping[str, Any], key: str) -> str | None:
    value = record.get(key)
    return value.strip() or None if isinstance(value, str) else None


def _flag(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    return None


def _ms_played(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise Rejected("invalid_ms_played", f"ms played {value!r} is not a number")
    if not 0 <= value <= MAX_MS_PLAYED:
        raise Rejected("invalid_ms_played", f"ms played {value!r} is out of range")
    return int(value)


def _instant(value: Any, fmt: str | None = None) -> datetime:
    if not isinstance(value, str):
        raise Rejected("invalid_timestamp", f"timestamp {value!r} is not a string")
    try:
        parsed = datetime.strptime(value, fmt) if fmt else datetime.fromisoformat(value)
        return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except ValueError:
        raise Rejected("invalid_timestamp", f"timestamp {value!r} cannot be parsed") from None
    except OverflowError:
        raise Rejected("invalid_timestamp", f"timestamp {value!r} is out of range") from None


def _started(stopped: datetime, ms: int) -> datetime:
    """When a play of ``ms`` that stopped at ``stopped`` began."""
    try:
        return stopped - timedelta(milliseconds=ms)
    except OverflowError:
        raise Rejected(
            "invalid_timestamp", f"a play stopping at {stopped} began before year 1"
        ) from None


def extended_play(record: Mapping[str, Any], user_id: str, genres: GenreMap) -> Document:
    """A play from an extended-history record (``ts`` is when playback stopped)."""
    stopped = _instant(record.get("ts"))
    ms = _ms_played(record.get("ms_played"))
    track = _text(record, "master_metadata_track_name")
    if track is None:
        if record.get("episode_name") or record.get("spotify_episode_uri"):
            raise Rejected("podcast_episode", f"podcast episode {record.get('episode_name')!r}")
        if record.get("audiobook_title") or record.get("audiobook_uri"):
            raise Rejected("audiobook", f"audiobook {record.get('audiobook_title')!r}")
        raise Rejected("missing_track_name", "no track name")
    artist = _text(record, "master_metadata_album_artist_name")
    if artist is None:
        raise Rejected("missing_artist", f"no artist for track {track!r}")
    uri = _text(record, "spotify_track_uri") or ""
    track_id = uri[len(TRACK_URI_PREFIX) :] if uri.startswith(TRACK_URI_PREFIX) else ""
    return play_document(
        user_id=user_id,
        played_at=_started(stopped, ms),
        track_id=track_id or derived_track_id(artist, track),
        track_name=track,
        artist_names=[artist],
        album=_text(record, "master_metadata_album_album_name"),
        genres=genres.of(artist),
        ms_played=ms,
        skipped=_flag(record.get("skipped")),
        reason_start=_text(record, "reason_start"),
        reason_end=_text(record, "reason_end"),
        shuffle=_flag(record.get("shuffle")),
        platform=_text(record, "platform"),
        source="spotify_extended",
    )


def basic_play(record: Mapping[str, Any], user_id: str, genres: GenreMap) -> Document:
    """A play from a basic-history record (``endTime`` is when playback stopped, UTC)."""
    if "episodeName" in record or "podcastName" in record:
        raise Rejected("podcast_episode", f"podcast episode {record.get('episodeName')!r}")
    stopped = _instant(record.get("endTime"), "%Y-%m-%d %H:%M")
    ms = _ms_played(record.get("msPlayed"))
    track = _text(record, "trackName")
    if track is None:
        raise Rejected("missing_track_name", "no track name")
    artist = _text(record, "artistName")
    if artist is None:
        raise Rejected("missing_artist", f"no artist for track {track!r}")
    return play_document(
        user_id=user_id,
        played_at=_started(stopped, ms),
        track_id=derived_track_id(artist, track),
        track_name=track,
        artist_names=[artist],
        genres=genres.of(artist),
        ms_played=ms,
        source="spotify_basic",
    )


def to_play(record: Any, user_id: str, genres: GenreMap) -> Document:
    """The play of one record of either format; :class:`Rejected` when it is not one."""
    if not isinstance(record, dict):
        raise Rejected("not_an_object", f"record is a {type(record).__name__}, not an object")
    if "ts" in record:
        return extended_play(record, user_id, genres)
    if "endTime" in record:
        return basic_play(record, user_id, genres)
    raise Rejected(
        "unknown_format", f"neither extended (ts) nor basic (endTime): {sorted(record)[:6]}"
    )
