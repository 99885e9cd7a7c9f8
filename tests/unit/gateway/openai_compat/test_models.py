"""``GET /v1/models/{id}``: every name a chat's ``model`` takes."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI


@pytest.mark.parametrize("name", ["demo/echotune-demo-1", "demo", "echotune-demo-1"])
async def test_a_model_is_found_by_any_name_a_chat_takes(gateway: FastAPI, name: str) -> None:
    """A bare provider or model name, which a chat takes, was a 404 ``not_found`` here."""
    transport = httpx.ASGITransport(app=gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get(f"/v1/models/{name}")
    assert response.status_code == 200, response.text
    assert response.json() == {"id": name, "object": "model", "created": 0, "owned_by": "demo"}


async def test_an_unknown_model_is_model_not_found(gateway: FastAPI) -> None:
    transport = httpx.ASGITransport(app=gateway)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/v1/models/no-such-model")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "model_not_found"
