"""Analytics service settings (environment prefix ``ECHOTUNE_ANALYTICS_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from echotune.common.settings import ServiceSettings


class AnalyticsSettings(ServiceSettings):
    """Timeouts, pagination caps and analysis rules of the analytics API."""

    model_config = SettingsConfigDict(
        env_prefix="ECHOTUNE_ANALYTICS_", extra="ignore", populate_by_name=True
    )

    mongo_timeout_ms: int = Field(
        2_000,
        ge=50,
        le=60_000,
        description="MongoDB server selection and connect timeout: how soon a request answers 503",
    )
    query_timeout_ms: int = Field(
        30_000, ge=100, description="maxTimeMS of every query; a slower query answers 504"
    )
    default_limit: int = Field(20, ge=1, description="Page size when a request names none")
    max_limit: int = Field(200, ge=1, description="Largest page size a request may ask for")
    max_offset: int = Field(
        10_000, ge=1, description="Largest (page - 1) × limit: deep pages are refused"
    )
    max_points: int = Field(2_000, ge=10, description="Most buckets in one provider time series")
    max_range_days: int = Field(
        3_660, ge=1, description="Longest explicit from/to range a request may ask for"
    )
    session_gap_min: float = Field(
        30.0,
        gt=0,
        le=1_440,
        description="A play starting this long after the previous play ended starts a session",
    )
    migrate_on_start: bool = Field(
        True, description="Run the idempotent index/validator migration when the app starts"
    )
