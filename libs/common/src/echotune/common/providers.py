"""Provider configuration shared by the gateway (validation, listing) and the workers (calls)."""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, SecretStr, model_validator

DEMO_PROVIDER = "demo"


class ProviderKind(StrEnum):
    """Wire protocol a provider speaks."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"
    DEMO = "demo"


class ProviderTimeouts(BaseModel):
    """Timeouts of one provider, in seconds."""

    model_config = ConfigDict(allow_inf_nan=False)

    connect: float = Field(5.0, gt=0)
    first_token: float = Field(30.0, gt=0)
    idle: float = Field(30.0, gt=0, description="Longest gap between two tokens")
    total: float = Field(300.0, gt=0)


class ProviderConfig(BaseModel):
    """One configured provider: ``ECHOTUNE_PROVIDERS`` holds a JSON list of these."""

    model_config = ConfigDict(allow_inf_nan=False)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    kind: ProviderKind
    base_url: HttpUrl | None = None
    api_key: SecretStr | None = None
    models: list[str] = Field(min_length=1)
    default_model: str | None = None
    timeouts: ProviderTimeouts = Field(default_factory=ProviderTimeouts)
    token_pace_ms: float = Field(35.0, ge=0, description="Demo only: delay between tokens")
    logprobs: bool = Field(
        False, description="Ask for token log-probabilities on every answer (confidence figure)"
    )

    @model_validator(mode="after")
    def _check(self) -> ProviderConfig:
        if self.default_model is None:
            self.default_model = self.models[0]
        if self.default_model not in self.models:
            raise ValueError(f"default_model {self.default_model!r} is not in models")
        if self.kind is not ProviderKind.DEMO and self.base_url is None:
            raise ValueError(f"provider {self.name!r} of kind {self.kind} needs a base_url")
        url = self.base_url
        if url is not None and (url.query is not None or url.fragment is not None):
            raise ValueError(
                f"provider {self.name!r}: base_url takes no query or fragment (the API path "
                "is appended to it)"
            )
        if self.logprobs and not self.offers_logprobs:
            raise ValueError(f"provider {self.name!r}: {self.kind} providers offer no logprobs")
        return self

    @property
    def model(self) -> str:
        """The default model (always set after validation)."""
        assert self.default_model is not None
        return self.default_model

    @property
    def is_demo(self) -> bool:
        return self.kind is ProviderKind.DEMO

    @property
    def offers_logprobs(self) -> bool:
        """Whether its kind can return token log-probabilities."""
        from echotune.common.capabilities import LOGPROB_KINDS  # it imports this module

        return self.kind in LOGPROB_KINDS


def demo_provider() -> ProviderConfig:
    """The offline provider that is always available."""
    return ProviderConfig(name=DEMO_PROVIDER, kind=ProviderKind.DEMO, models=["echotune-demo-1"])


class ProviderRegistry:
    """Configured providers by name; always contains the offline demo provider."""

    def __init__(self, providers: list[ProviderConfig], default: str | None = None) -> None:
        by_name = {p.name: p for p in providers}
        if len(by_name) != len(providers):
            raise ValueError("provider names must be unique")
        by_name.setdefault(DEMO_PROVIDER, demo_provider())
        self._by_name = by_name
        real = [p.name for p in providers if not p.is_demo]
        self.default = default or (real[0] if real else DEMO_PROVIDER)
        if self.default not in by_name:
            raise ValueError(f"default provider {self.default!r} is not configured")

    def __iter__(self) -> Iterator[ProviderConfig]:
        return iter(self._by_name.values())

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> ProviderConfig | None:
        return self._by_name.get(name)

    def offering(self, model: str) -> ProviderConfig | None:
        """The first provider (default first) that offers ``model``."""
        ordered = sorted(self._by_name.values(), key=lambda p: p.name != self.default)
        return next((p for p in ordered if model in p.models), None)

    def resolve(self, provider: str | None, model: str | None) -> tuple[ProviderConfig, str]:
        """Provider and model for a request; raises ``LookupError`` naming what is unknown."""
        config = self._by_name.get(provider or self.default)
        if config is None:
            raise LookupError(f"unknown provider {provider!r}; known: {sorted(self._by_name)}")
        chosen = model or config.model
        if chosen not in config.models:
            raise LookupError(
                f"provider {config.name!r} has no model {chosen!r}; known: {config.models}"
            )
        return config, chosen
