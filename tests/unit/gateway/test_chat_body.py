"""What ``POST /api/chat/stream`` refuses in its body."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI


@pytest.mark.parametrize(
    "body",
    [{"message": "hi", "foo": 1}, {"message": "hi", "options": {"max_token": 2}}],
    ids=["top level", "in options"],
)
async def test_an_unknown_field_is_refused(gateway: FastAPI, body: dict[str, object]) -> None:
    """A misspelt option (``max_token``) was ignored: a whole answer, no word of the typo."""
    transport = httpx.ASGITransport(app=gateway, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/api/chat/stream", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["type"] == "extra_forbidden"


@pytest.mark.parametrize("headers", [{}, {"X-Request-Id": ""}], ids=["none", "empty header"])
async def test_neither_a_message_nor_a_request_id_is_a_422(
    gateway: FastAPI, headers: dict[str, str]
) -> None:
    """It was a 404 "no stream with this request id", about an id the client never sent."""
    transport = httpx.ASGITransport(app=gateway, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/api/chat/stream", headers=headers)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "message_required"
