"""Settings shared by every service; each service subclasses ``ServiceSettings``.

Service-specific variables carry the service's prefix (``ECHOTUNE_GATEWAY_…``); the
infrastructure every service shares has one fixed name (``ECHOTUNE_REDIS_URL``, …).
"""

from __future__ import annotations

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from echotune.common.breaker import BreakerPolicy
from echotune.common.keys import Keys
from echotune.common.providers import ProviderConfig, ProviderRegistry


def shared(name: str) -> AliasChoices:
    """Read a shared setting from ``ECHOTUNE_<NAME>`` whatever the service's prefix."""
    return AliasChoices(f"ECHOTUNE_{name}")


class ServiceSettings(BaseSettings):
    """Infrastructure settings common to all services."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    redis_url: str = Field("redis://127.0.0.1:6379/0", validation_alias=shared("REDIS_URL"))
    mongodb_url: str = Field(
        "mongodb://127.0.0.1:27017/echotune",
        validation_alias=shared("MONGODB_URL"),
        description="MongoDB; the database is the URL's path (default ``echotune``)",
    )
    namespace: str = Field(
        "echotune",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        validation_alias=shared("NAMESPACE"),
        description="Prefix of every Redis key; lets deployments or tests share one Redis",
    )
    log_level: str = Field("INFO", validation_alias=shared("LOG_LEVEL"))
    resume_window_s: float = Field(
        30.0,
        gt=0,
        validation_alias=shared("RESUME_WINDOW_S"),
        description="How long an answer keeps streaming into Redis without a reader",
    )

    @property
    def keys(self) -> Keys:
        return Keys(self.namespace)


class BreakerSettings(BaseSettings):
    """Circuit-breaker policy (``ECHOTUNE_BREAKER_…``), the same for every provider."""

    model_config = SettingsConfigDict(env_prefix="ECHOTUNE_BREAKER_", extra="ignore")

    failure_rate: float = Field(0.5, gt=0, le=1)
    min_calls: int = Field(5, ge=1)
    window_s: float = Field(60.0, gt=0)
    consecutive_failures: int = Field(5, ge=1)
    cooldown_s: float = Field(30.0, gt=0)
    cooldown_cap_s: float = Field(300.0, gt=0)
    probe_timeout_s: float = Field(
        15.0, gt=0, description="Lease of the half-open probe; renewed while the probe runs"
    )

    def policy(self) -> BreakerPolicy:
        return BreakerPolicy(**self.model_dump())


class ProviderSettings(BaseSettings):
    """The provider list, read by the gateway and the workers alike."""

    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    providers: list[ProviderConfig] = Field(
        default_factory=list, validation_alias=shared("PROVIDERS")
    )
    default_provider: str | None = Field(None, validation_alias=shared("DEFAULT_PROVIDER"))
    fallbacks: list[str] = Field(
        default_factory=list,
        validation_alias=shared("FALLBACKS"),
        description="Providers tried in order after the chosen one fails",
    )

    @field_validator("default_provider")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    breaker: BreakerSettings = Field(default_factory=BreakerSettings)

    def registry(self) -> ProviderRegistry:
        return ProviderRegistry(self.providers, self.default_provider)
