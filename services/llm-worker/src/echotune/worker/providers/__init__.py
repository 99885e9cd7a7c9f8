"""Provider clients, one per wire protocol, and the factory choosing among them."""

from __future__ import annotations

import httpx

from echotune.common.providers import ProviderConfig, ProviderKind
from echotune.worker.providers.anthropic import AnthropicProvider
from echotune.worker.providers.base import Provider
from echotune.worker.providers.demo import DemoProvider
from echotune.worker.providers.gemini import GeminiProvider
from echotune.worker.providers.openai import OpenAIProvider

PROVIDER_CLASSES: dict[ProviderKind, type[Provider]] = {
    ProviderKind.OPENAI: OpenAIProvider,
    ProviderKind.ANTHROPIC: AnthropicProvider,
    ProviderKind.GEMINI: GeminiProvider,
    ProviderKind.DEMO: DemoProvider,
}


def build_provider(config: ProviderConfig, client: httpx.AsyncClient) -> Provider:
    """The provider client for ``config.kind``, sharing ``client`` for its HTTP calls."""
    cls = PROVIDER_CLASSES[config.kind]
    return cls(config, client)  # type: ignore[call-arg]


__all__ = [
    "AnthropicProvider",
    "DemoProvider",
    "GeminiProvider",
    "OpenAIProvider",
    "build_provider",
]
