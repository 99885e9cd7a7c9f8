"""End-to-end tests: they talk to real processes (marked ``e2e`` by the root conftest)."""

from __future__ import annotations

import httpx
import pytest

from echotune.fake_llm import FakeUpstream


@pytest.fixture
def upstream(client: httpx.AsyncClient, fake_llm: str) -> FakeUpstream:
    return FakeUpstream(client, fake_llm)
