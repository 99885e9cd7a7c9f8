"""Provider selection (persisted in Redis), breaker state and live health."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from echotune.common.breaker import BreakerSnapshot, CircuitBreakers
from echotune.common.keys import Keys
from echotune.common.live_stats import LiveFigures, LiveStats
from echotune.common.messages import BreakerState
from echotune.common.providers import ProviderConfig, ProviderKind, ProviderRegistry
from echotune.gateway.auth.keys import ANONYMOUS
from echotune.gateway.providers.schemas import (
    BreakerInfo,
    Health,
    HealthReport,
    LiveInfo,
    ProviderHealth,
    ProviderInfo,
    ProviderList,
    Selection,
)
from echotune.web.errors import ApiError

EVERYONE = "*"
LIVE_MINUTES = 5


def is_configured(config: ProviderConfig) -> bool:
    local = config.base_url is not None and config.base_url.host in ("localhost", "127.0.0.1")
    return config.kind is ProviderKind.DEMO or config.api_key is not None or local


def provider_status(snapshot: BreakerSnapshot, live: LiveFigures) -> Health:
    """The documented health rule (see ``HEALTH_RULE``) for one provider."""
    enough = live.requests >= 5
    success = live.success_rate if live.success_rate is not None else 1.0
    limited = live.rate_limited_rate or 0.0
    if snapshot.state is BreakerState.OPEN or (enough and success < 0.5):
        return Health.UNHEALTHY
    if (
        snapshot.state is BreakerState.HALF_OPEN
        or snapshot.rate_limited_until is not None
        or (enough and (success < 0.9 or limited >= 0.2))
    ):
        return Health.DEGRADED
    return Health.HEALTHY


def overall_status(reports: list[ProviderHealth], registry: ProviderRegistry) -> Health:
    real = [r for r in reports if not _is_demo(registry, r.id)] or reports
    if all(r.status is Health.HEALTHY for r in reports):
        return Health.HEALTHY
    if all(r.status is Health.UNHEALTHY for r in real):
        return Health.UNHEALTHY
    return Health.DEGRADED


def _is_demo(registry: ProviderRegistry, name: str) -> bool:
    config = registry.get(name)
    return config is not None and config.is_demo


class ProviderService:
    def __init__(
        self, redis: Redis, keys: Keys, registry: ProviderRegistry, breakers: CircuitBreakers
    ) -> None:
        self.redis, self.keys, self.registry, self.breakers = redis, keys, registry, breakers
        self.live = LiveStats(redis, keys)

    def validate(self, provider: str, model: str | None) -> tuple[ProviderConfig, str]:
        """Provider and model, or a 422 naming what is unknown."""
        try:
            return self.registry.resolve(provider, model)
        except LookupError as exc:
            code = "unknown_model" if provider in self.registry else "unknown_provider"
            raise ApiError(422, code, str(exc.args[0])) from exc

    def queue_selection(self, pipe: Pipeline, user_id: str) -> None:
        """Queue the read of what :meth:`choose_from` needs (one reply)."""
        pipe.hmget(self.keys.provider_selection, [user_id, EVERYONE])

    def selection_from(self, stored: Sequence[str | bytes | None]) -> Selection:
        """The user's choice, else everyone's default choice, else the configured default."""
        for raw in stored:
            if raw:
                choice = Selection.model_validate(json.loads(raw))
                config = self.registry.get(choice.provider)
                if config is not None and choice.model in config.models:
                    return choice
        default = self.registry.get(self.registry.default)
        assert default is not None
        return Selection(provider=default.name, model=default.model)

    async def selection(self, user_id: str) -> Selection:
        stored = await self.redis.hmget(self.keys.provider_selection, [user_id, EVERYONE])
        return self.selection_from(stored)

    def choose_from(
        self, stored: Sequence[str | bytes | None], provider: str | None, model: str | None
    ) -> tuple[ProviderConfig, str]:
        """What a new chat uses: the explicit choice, else the persisted selection."""
        if provider is None:
            selected = self.selection_from(stored)
            provider, model = selected.provider, model or selected.model
        return self.validate(provider, model)

    async def switch(self, user_id: str, provider: str, model: str | None) -> Selection:
        config, chosen = self.validate(provider, model)
        snapshot = await self.breakers.snapshot(config.name)
        if snapshot.state is BreakerState.OPEN:
            raise ApiError(
                409,
                "provider_unavailable",
                f"the circuit breaker of {config.name!r} is open",
                details={"next_probe_at": snapshot.next_probe_at},
            )
        selection = Selection(provider=config.name, model=chosen)
        owner = EVERYONE if user_id == ANONYMOUS else user_id
        await self.redis.hset(self.keys.provider_selection, owner, selection.model_dump_json())
        return selection

    async def list(self, user_id: str) -> ProviderList:
        selection = await self.selection(user_id)
        snapshots = await asyncio.gather(*(self.breakers.snapshot(c.name) for c in self.registry))
        infos = [
            ProviderInfo(
                id=c.name,
                kind=c.kind.value,
                models=c.models,
                default_model=c.model,
                configured=is_configured(c),
                is_demo=c.is_demo,
                breaker_state=s.state,
                selected=c.name == selection.provider,
            )
            for c, s in zip(self.registry, snapshots, strict=True)
        ]
        return ProviderList(providers=infos, selection=selection)

    async def health(self) -> HealthReport:
        reports = await asyncio.gather(*(self._health(c) for c in self.registry))
        return HealthReport(status=overall_status(reports, self.registry), providers=reports)

    async def _health(self, config: ProviderConfig) -> ProviderHealth:
        snapshot, live = await asyncio.gather(
            self.breakers.snapshot(config.name), self.live.window(config.name, LIVE_MINUTES)
        )
        return ProviderHealth(
            id=config.name,
            model=config.model,
            status=provider_status(snapshot, live),
            breaker=BreakerInfo(**_asdict(snapshot)),
            live=LiveInfo(
                window_s=LIVE_MINUTES * 60,
                requests=live.requests,
                success_rate=live.success_rate,
                rate_limited_rate=live.rate_limited_rate,
                latency_p50_ms=live.latency_p50_ms,
                latency_p95_ms=live.latency_p95_ms,
                ttft_p50_ms=live.ttft_p50_ms,
                ttft_p95_ms=live.ttft_p95_ms,
            ),
        )


def _asdict(snapshot: BreakerSnapshot) -> dict[str, object]:
    return {name: getattr(snapshot, name) for name in snapshot.__slots__}


def now() -> float:
    return time.time()
