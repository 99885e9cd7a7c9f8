"""What ``POST /api/chat/stream`` refuses in its body."""

from __future__ import annotations

import json

import httpx
import pytest
from fastapi import FastAPI

from echotune.gateway.app import warn_of_a_short_body_limit
from echotune.gateway.settings import GatewaySettings


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


@pytest.mark.parametrize(
    ("options", "kind"),
    [
        ({"max_tokens": True}, "int_type"),
        ({"max_tokens": "5"}, "int_type"),
        ({"use_context": "no"}, "bool_type"),
        ({"temperature": "0.5"}, "float_type"),
        ({"stop": "END"}, "list_type"),
    ],
)
async def test_an_option_of_another_json_type_is_refused(
    gateway: FastAPI, options: dict[str, object], kind: str
) -> None:
    """``true`` was taken for 1 (an answer cut at one token) and ``"5"`` for 5, where the
    OpenAI door refuses both."""
    transport = httpx.ASGITransport(app=gateway, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/api/chat/stream", json={"message": "hi", "options": options})
    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["type"] == kind


async def test_a_well_typed_option_is_taken(gateway: FastAPI) -> None:
    """Strict types still take an integer for a float (``temperature: 1``)."""
    transport = httpx.ASGITransport(app=gateway, raise_app_exceptions=False)
    body = {"message": " ", "options": {"temperature": 1, "max_tokens": 5, "use_context": False}}
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/api/chat/stream", json=body)
    assert response.json()["error"]["code"] == "empty_message", response.text  # past the schema


@pytest.mark.parametrize("query", ["max_tokens=2", "foo=bar", "messages=hi"])
async def test_an_unknown_query_parameter_is_refused(gateway: FastAPI, query: str) -> None:
    """``GET /api/chat/stream?message=x&max_tokens=2`` streamed a whole answer: the unknown
    parameter was dropped without a word (``POST`` refuses an unknown field)."""
    transport = httpx.ASGITransport(app=gateway, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get(f"/api/chat/stream?message=hi&{query}")
    assert response.status_code == 422, response.text
    detail = response.json()["error"]["details"][0]
    assert detail["type"] == "extra_forbidden"
    assert detail["loc"] == ["query", query.split("=")[0]]


async def test_a_message_at_the_character_limit_fits_the_body_however_it_is_escaped(
    gateway: FastAPI,
) -> None:
    """JSON-escaped (``json.dumps``' default), 16,000 non-ASCII characters made a body over
    64 KB: ``413 body_too_large`` for a message within its limit (new-user review). One
    character over the limit, escaped at 12 bytes each (the most JSON takes), must reach the
    message check."""
    body = json.dumps({"message": "\N{GRINNING FACE}" * 16_001})  # \ud83d\ude00 each
    transport = httpx.ASGITransport(app=gateway, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post(
            "/api/chat/stream", content=body, headers={"content-type": "application/json"}
        )
    assert response.status_code == 422, response.text[:200]
    assert response.json()["error"]["code"] == "message_too_long"


async def test_event_source_polyfill_s_last_event_id_parameter_is_taken(gateway: FastAPI) -> None:
    """event-source-polyfill reconnects with ``?lastEventId=<id>`` and no header: refused as an
    unknown parameter, its streams died at the first reconnect (review); it is an alias."""
    transport = httpx.ASGITransport(app=gateway, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        bad = await client.get("/api/chat/stream?request_id=req-unknown-0001&lastEventId=x")
        unknown = await client.get("/api/chat/stream?request_id=req-unknown-0001&lastEventId=1-0")
    assert bad.status_code == 422, bad.text  # validated as last_event_id is
    assert bad.json()["error"]["details"][0]["type"] == "string_pattern_mismatch"
    assert unknown.status_code == 404, unknown.text  # read, then the answer is not found


def test_a_body_limit_too_short_for_the_message_limit_is_said_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Raising MAX_MESSAGE_CHARS alone brought the 413 before the 422 back (review)."""
    warn_of_a_short_body_limit(GatewaySettings())
    assert not caplog.records
    warn_of_a_short_body_limit(GatewaySettings(max_message_chars=32_000))
    assert "MAX_BODY_BYTES 262144 is below 12 × MAX_MESSAGE_CHARS (32000)" in caplog.text
