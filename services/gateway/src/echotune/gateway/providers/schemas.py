"""Response and request bodies of the provider API."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from echotune.common.messages import BreakerState


class Health(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


class Selection(BaseModel):
    provider: str
    model: str


class SwitchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: str = Field(min_length=1, max_length=64)
    model: str | None = Field(
        None, min_length=1, max_length=200, description="Default: its default"
    )


class ProviderInfo(BaseModel):
    id: str
    kind: str
    models: list[str]
    default_model: str
    configured: bool = Field(description="Has what it needs to be called (URL, key if remote)")
    is_demo: bool
    breaker_state: BreakerState
    selected: bool


class ProviderList(BaseModel):
    providers: list[ProviderInfo]
    selection: Selection


class BreakerInfo(BaseModel):
    state: BreakerState
    failures: int = Field(description="Failed calls in the rolling window")
    calls: int = Field(description="Calls in the rolling window")
    consecutive_failures: int
    trips: int
    opened_at: float | None = Field(None, description="Unix time")
    next_probe_at: float | None = Field(None, description="Unix time the next probe may go")
    rate_limited_until: float | None = None


class LiveInfo(BaseModel):
    window_s: int
    requests: int
    success_rate: float | None
    rate_limited_rate: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None


class ProviderHealth(BaseModel):
    id: str
    model: str
    status: Health
    breaker: BreakerInfo
    live: LiveInfo


HEALTH_RULE = """\
Per provider: **unhealthy** when its breaker is open, or when at least 5 calls in the last
5 minutes succeeded less than 50 % of the time; **degraded** when its breaker is half-open,
it is in a rate-limit cool-down, or (≥ 5 calls) success < 90 % or 429s ≥ 20 %; else
**healthy** (no traffic counts as healthy). Overall: **healthy** when every provider is,
**unhealthy** when no provider (the demo provider aside, unless it is the only one) is
healthy or degraded, else **degraded**."""


class HealthReport(BaseModel):
    status: Health = Field(description=HEALTH_RULE)
    providers: list[ProviderHealth]
