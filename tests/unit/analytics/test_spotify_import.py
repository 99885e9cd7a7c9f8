"""``echotune-import spotify``: both formats, bad records, podcasts, duplicates, re-import."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.asynchronous.database import AsyncDatabase

from echotune.analytics.documents import artist_id
from echotune.analytics.importer import cli
from echotune.analytics.importer.cli import import_spotify
from echotune.analytics.importer.spotify import (
    GenreMap,
    Rejected,
    basic_play,
    extended_play,
    iter_records,
)
from echotune.common.mongo import LISTENING_HISTORY
from tests.unit.analytics.conftest import with_database

Document = dict[str, Any]
DATA = Path(__file__).parents[2] / "data" / "spotify"
EXTENDED = DATA / "Streaming_History_Audio_2023-2024_0.json"
BASIC = DATA / "StreamingHistory_music_0.json"
TRUNCATED = DATA / "StreamingHistory_music_1_truncated.json"
REASONS = {
    "podcast_episode": 2, "audiobook": 1, "invalid_timestamp": 2, "invalid_ms_played": 2,
    "missing_artist": 1, "missing_track_name": 1, "not_an_object": 1, "unknown_format": 1,
}  # fmt: skip


async def test_import_both_formats(db: AsyncDatabase[Document]) -> None:
    genres = GenreMap.load(DATA / "genres.json")
    report = await import_spotify(db, [EXTENDED, BASIC], "alice", genres, batch_size=2)
    files = report.as_dict()["files"]
    assert files[str(EXTENDED)] == {"read": 11, "imported": 3, "duplicates": 1, "rejected": 7}
    assert files[str(BASIC)] == {"read": 7, "imported": 3, "duplicates": 0, "rejected": 4}
    assert report.reasons == REASONS
    assert report.file_errors == {}
    assert any("Episode 42" in example for example in report.examples["podcast_episode"])

    plays = {
        d["trackName"] + "/" + (d["source"] or ""): d async for d in db[LISTENING_HISTORY].find()
    }
    assert len(plays) == 6
    one = plays["One More Time/spotify_extended"]
    assert one["playedAt"] == datetime(2024, 1, 31, 23, 56, 24, tzinfo=UTC)  # ts − ms_played
    assert one["trackId"] == "0DiWol3AO6WpXZgp0goxAV"
    assert one["artistNames"] == ["Daft Punk"]
    assert one["artistIds"] == [artist_id("Daft Punk")]
    assert one["genres"] == ["electronic", "french house"]
    assert (one["album"], one["msPlayed"], one["platform"]) == ("Discovery", 215_000, "android")
    assert (one["skipped"], one["shuffle"], one["reasonEnd"]) == (False, False, "trackdone")
    assert one["userId"] == "alice"
    skipped = plays["Feeling Good/spotify_extended"]
    assert skipped["skipped"] is True
    assert skipped["playedAt"] == datetime(2024, 2, 1, 0, 2, 57, 655_000, tzinfo=UTC)
    assert plays["Digital Love/spotify_extended"]["skipped"] is None
    basic = plays["Sinnerman/spotify_basic"]
    assert basic["playedAt"] == datetime(2024, 1, 31, 23, 48, 40, tzinfo=UTC)
    assert basic["genres"] == ["jazz"]  # the genre map matches names case-insensitively
    assert basic["trackId"].startswith("tr:")
    assert basic["skipped"] is None
    shouting = plays["Feeling Good/spotify_basic"]
    assert shouting["artistIds"] == [artist_id("Nina Simone")]
    assert plays["Unknown Track/spotify_basic"]["msPlayed"] == 0


async def test_reimport_adds_nothing(db: AsyncDatabase[Document]) -> None:
    first = await import_spotify(db, [EXTENDED, BASIC], "alice")
    again = await import_spotify(db, [EXTENDED, BASIC], "alice")
    assert first.total.imported == 6
    assert (again.total.imported, again.total.duplicates, again.total.rejected) == (0, 7, 11)
    folder = await import_spotify(db, [DATA], "alice")  # its three streaming-history files
    assert len(folder.files) == 3
    assert (folder.total.imported, folder.total.duplicates) == (2, 7)  # the truncated file's 2
    assert await db[LISTENING_HISTORY].count_documents({}) == 6 + 2
    other = await import_spotify(db, [EXTENDED], "bob")  # another user's plays are new
    assert other.total.imported == 3


async def test_truncated_file_keeps_what_came_before(db: AsyncDatabase[Document]) -> None:
    report = await import_spotify(db, [TRUNCATED, Path("/nonexistent/file.json")], "alice")
    assert report.counts(str(TRUNCATED)).imported == 2
    assert set(report.file_errors) == {str(TRUNCATED), "/nonexistent/file.json"}
    assert "IncompleteJSONError" in report.file_errors[str(TRUNCATED)]
    assert "NOT READ TO THE END" in report.as_text()


def test_records_stream_before_the_file_ends() -> None:
    """The parser yields records as it reads: a broken tail comes after the first records."""
    stream = io.BytesIO(b'[{"a": 1}, {"b": 2}, {"c": ' + b" " * 1_000_000 + b"!!!")
    records = iter_records(stream)
    assert next(records) == {"a": 1}
    assert next(records) == {"b": 2}
    assert stream.tell() < 1_000_000  # the rest has not been read yet
    with pytest.raises(Exception, match=r"parse error|Incomplete|invalid"):
        next(records)
    with pytest.raises(ValueError, match="not a JSON array"):
        next(iter_records(io.BytesIO(b'{"endTime": "2024-01-01 00:00"}')))


def test_command_line(
    mongo_server_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = with_database(mongo_server_url, f"cli_{tmp_path.name[-20:]}".replace("-", "_"))
    args = ["spotify", str(EXTENDED), str(BASIC), "--user", "carol", "--mongodb-url", url]
    assert cli.main([*args, "--genres", str(DATA / "genres.json"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total"] == {"read": 18, "imported": 6, "duplicates": 1, "rejected": 11}
    assert report["rejected_by_reason"] == REASONS
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "total: 18 records: 0 imported, 7 duplicates, 11 rejected" in text
    assert "podcast_episode: 2" in text
    assert cli.main(["spotify", str(TRUNCATED), "--user", "carol", "--mongodb-url", url]) == 1
    capsys.readouterr()
    bad_map = tmp_path / "genres.json"
    bad_map.write_text('["not", "a", "map"]')
    assert cli.main([*args, "--genres", str(bad_map)]) == 2
    assert "genre map" in capsys.readouterr().err
    with MongoClient[Document](url) as client:
        client.drop_database(client.get_default_database().name)


@pytest.mark.parametrize(
    "record",
    [
        {"ts": "0001-01-01T00:00:00Z", "ms_played": 1000},  # started before year 1
        {"ts": "0001-01-01T00:00:00+01:00", "ms_played": 0},  # before year 1 in UTC
        {"endTime": "0001-01-01 00:00", "msPlayed": 1000},
    ],
    ids=["extended-minus-ms", "extended-offset", "basic-minus-ms"],
)
def test_a_record_at_the_edge_of_time_is_rejected_alone(record: Document) -> None:
    """OverflowError escaped as no rejection: it stopped the whole import, with a traceback."""
    track = (
        {"master_metadata_track_name": "T", "master_metadata_album_artist_name": "A"}
        if "ts" in record
        else {"trackName": "T", "artistName": "A"}
    )
    play = extended_play if "ts" in record else basic_play
    with pytest.raises(Rejected) as rejected:
        play({**record, **track}, "alice", GenreMap({}))
    assert rejected.value.reason == "invalid_timestamp"
