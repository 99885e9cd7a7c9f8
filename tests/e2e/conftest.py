"""End-to-end tests: every test here talks to real processes."""

from __future__ import annotations

import httpx
import pytest

from tests.support.upstream import FakeUpstream

pytestmark = pytest.mark.e2e


@pytest.fixture
def upstream(client: httpx.AsyncClient, fake_llm: str) -> FakeUpstream:
    return FakeUpstream(client, fake_llm)
