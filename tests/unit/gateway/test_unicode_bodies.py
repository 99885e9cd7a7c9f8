"""A JSON body whose text Python holds but UTF-8 cannot (a lone surrogate, valid JSON:
``"\\ud800"``) is a client error at every door, never a 500."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

BODIES = {
    "/v1/chat/completions": '{"model":"demo","messages":[{"role":"user","content":"hi \\ud800"}]}',
    "/api/chat/stream": '{"message":"hi \\ud800"}',
}


@pytest.mark.parametrize("path", list(BODIES))
async def test_a_lone_surrogate_is_a_client_error(gateway: FastAPI, path: str) -> None:
    """The OpenAI door took it, and serialising the job raised: a 500."""
    transport = httpx.ASGITransport(app=gateway, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post(
            path, content=BODIES[path], headers={"content-type": "application/json"}
        )
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert "error" in response.json()
