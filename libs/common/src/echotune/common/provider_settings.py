"""Settings of the services that call providers (gateway and workers): providers, breakers."""

from __future__ import annotations

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from echotune.common.breaker import BreakerPolicy
from echotune.common.providers import ProviderConfig, ProviderRegistry
from echotune.common.settings import shared


class BreakerSettings(BaseSettings):
    """Circuit-breaker policy (``ECHOTUNE_BREAKER_…``), the same for every provider."""

    model_config = SettingsConfigDict(
        env_prefix="ECHOTUNE_BREAKER_", extra="ignore", allow_inf_nan=False
    )

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

    # a provider refused as a whole would print its entry, api_key included
    model_config = SettingsConfigDict(
        extra="ignore", populate_by_name=True, allow_inf_nan=False, hide_input_in_errors=True
    )

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
