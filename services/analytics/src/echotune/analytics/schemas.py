"""Response models: the ``{"data", "meta"}`` envelope and each endpoint's data.

Routes answer with ``response_model_exclude_unset``: a field left out by ``fields=`` is
absent from the JSON, while a field that has no value (a percentile of nothing) is ``null``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

DataT = TypeVar("DataT")


class WindowMeta(BaseModel):
    """The time range a result covers: ``[from, to)``."""

    model_config = ConfigDict(populate_by_name=True)

    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to")
    window: str | None = Field(None, description="The named window, or null for from/to")
    time_zone: str | None = None


class Meta(BaseModel):
    """What a result was computed from and which slice of it this is."""

    window: WindowMeta | None = None
    filters: dict[str, Any] | None = None
    fields: list[str] | None = None
    page: int | None = None
    limit: int | None = None
    total: int | dict[str, int] | None = Field(
        None, description="Items in all pages (per list when the data has several)"
    )
    source: str | None = Field(None, description="Collection the figures come from")
    notes: list[str] | None = None
    generated_at: datetime | None = None


class Envelope(BaseModel, Generic[DataT]):
    """Every successful answer."""

    data: DataT
    meta: Meta


class ErrorBody(BaseModel):
    """The content of an error answer."""

    code: str
    message: str
    details: Any = None


class ErrorEnvelope(BaseModel):
    """Every 4xx/5xx answer."""

    error: ErrorBody
    request_id: str | None = None


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    422: {"model": ErrorEnvelope, "description": "Invalid parameters"},
    503: {"model": ErrorEnvelope, "description": "MongoDB is not reachable"},
    504: {"model": ErrorEnvelope, "description": "The query exceeded its time limit"},
}


# --- provider analytics ------------------------------------------------------------------


class LatencyStats(BaseModel):
    """Whole-attempt latency in milliseconds (percentiles from log-scale histograms)."""

    avg: float | None = None
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None


class TtftStats(BaseModel):
    """Time to first token in milliseconds, over attempts that produced one."""

    count: int = 0
    avg: float | None = None
    p50: float | None = None
    p95: float | None = None


class ProviderStats(BaseModel):
    """Figures of a set of attempts."""

    requests: int | None = Field(None, description="Attempts (retries and failovers count)")
    successes: int | None = None
    success_rate: float | None = Field(
        None,
        description="successes / requests, leaving out calls the worker stopped "
        "(cancelled, client_gone, fenced, ended: nothing of the provider's), 0..1",
    )
    errors: dict[str, int] | None = Field(None, description="Failed attempts by error code")
    latency_ms: LatencyStats | None = None
    ttft_ms: TtftStats | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    tokens_per_s: float | None = Field(
        None, description="Output tokens per second of attempt time (tokens_out / Σ latency)"
    )


class ProviderRow(ProviderStats):
    """Figures of one provider and model."""

    provider: str
    model: str


class ProvidersData(BaseModel):
    """Per provider and model, and all of them together."""

    rows: list[ProviderRow]
    totals: ProviderStats


class Series(BaseModel):
    """One sparkline set: arrays aligned with ``timestamps`` (null where nothing ran)."""

    provider: str | None = None
    model: str | None = None
    count: list[int] | None = None
    success_rate: list[float | None] | None = None
    p50: list[float | None] | None = Field(None, description="Latency p50, ms")
    p95: list[float | None] | None = Field(None, description="Latency p95, ms")
    ttft_p95: list[float | None] | None = Field(None, description="Time to first token p95, ms")


class TimeseriesData(BaseModel):
    """Bucket starts and one series per group."""

    bucket: str
    timestamps: list[datetime]
    series: list[Series]


# --- listening patterns ------------------------------------------------------------------


class PlayStats(BaseModel):
    """Plays, distinct tracks and minutes listened of a set of plays."""

    plays: int = 0
    unique_tracks: int = 0
    minutes: float = 0.0


class TimelinePoint(PlayStats):
    """One time bucket (its start in the requested time zone)."""

    start: datetime


class HourStats(PlayStats):
    """One hour of the day, local time."""

    hour: int


class WeekdayStats(PlayStats):
    """One day of the week, local time; ISO numbering (1 = Monday … 7 = Sunday)."""

    weekday: int
    name: str


class Matrix(BaseModel):
    """Weekday × hour heat map: ``plays[w][h]`` is weekday ``w + 1`` (ISO), hour ``h``."""

    weekdays: list[str]
    hours: list[int]
    plays: list[list[int]]
    unique_tracks: list[list[int]]
    minutes: list[list[float]]


class ListeningData(BaseModel):
    """Listening patterns (each part can be selected with ``fields=``)."""

    totals: PlayStats | None = None
    timeline: list[TimelinePoint] | None = None
    by_hour: list[HourStats] | None = None
    by_weekday: list[WeekdayStats] | None = None
    matrix: Matrix | None = None


# --- engagement --------------------------------------------------------------------------


class Kpis(BaseModel):
    """Engagement figures of a set of plays."""

    plays: int
    listening_hours: float
    unique_tracks: int
    unique_artists: int
    skip_rate: float | None = Field(
        None, description="Skipped plays / plays whose skipped flag is known"
    )
    repeat_rate: float | None = Field(
        None, description="(plays - unique tracks) / plays: share of plays of a track heard before"
    )
    sessions: int
    avg_session_min: float | None = Field(
        None, description="From a session's first play start to its last play end, minutes"
    )
    session_gap_min: float = Field(
        description="A play starting more than this after the previous play ended starts a session"
    )


class ArtistShare(BaseModel):
    """One artist's plays (a play with two artists counts for both)."""

    artist_id: str
    name: str | None
    plays: int
    share: float = Field(description="plays / all plays in the range")
    hours: float


class GenreShare(BaseModel):
    """One genre's plays (a play counts once for each genre of its artist)."""

    genre: str
    plays: int
    share: float
    hours: float


class EngagementData(BaseModel):
    """KPIs and the top artists and genres (each part can be selected with ``fields=``)."""

    kpis: Kpis | None = None
    top_artists: list[ArtistShare] | None = None
    top_genres: list[GenreShare] | None = None


# --- conversations -----------------------------------------------------------------------


class Turn(BaseModel):
    """One message of a conversation."""

    role: str
    content: str
    at: datetime | None = None


class Conversation(BaseModel):
    """A conversation as the worker keeps it (its latest turns and a summary)."""

    id: str
    user_id: str | None = None
    summary: str | None = None
    message_count: int | None = None
    last_activity: datetime | None = None
    turns: list[Turn] | None = None
