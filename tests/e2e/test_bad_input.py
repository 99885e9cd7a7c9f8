"""Every bad input gets a 4xx with a JSON error body, before any stream starts."""

from __future__ import annotations

import httpx
import pytest

from tests.support.stack import Stack

LONG = "x" * 16_001


@pytest.mark.parametrize(
    ("params", "headers", "status", "code"),
    [
        ({"message": ""}, {}, 422, "empty_message"),
        ({"message": "   \n"}, {}, 422, "empty_message"),
        ({"message": "hi", "provider": "nope"}, {}, 422, "unknown_provider"),
        ({"message": "hi", "provider": "fake-openai", "model": "gpt-99"}, {}, 422, "unknown_model"),
        ({"message": "hi", "request_id": "bad id!"}, {}, 422, "invalid_request_id"),
        ({"message": "hi", "request_id": "short"}, {}, 422, "invalid_request_id"),
        ({"message": "hi"}, {"X-Request-Id": "x" * 65}, 422, "invalid_request_id"),
        ({"message": "hi", "last_event_id": "abc"}, {}, 422, "invalid_request"),
        ({"message": "hi"}, {"Last-Event-ID": "1-2-3"}, 422, "invalid_request"),
        ({"message": "hi", "conversation_id": "no spaces"}, {}, 422, "invalid_request"),
        ({"request_id": "never-seen-request-id"}, {}, 404, "unknown_request"),
        ({}, {}, 422, "message_required"),
    ],
)
async def test_get_stream_rejects(
    stack: Stack,
    client: httpx.AsyncClient,
    params: dict[str, str],
    headers: dict[str, str],
    status: int,
    code: str,
) -> None:
    response = await client.get(f"{stack.url}/api/chat/stream", params=params, headers=headers)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == code
    assert response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"message": LONG}, "message_too_long"),
        ({"message": ""}, "empty_message"),  # was invalid_request: GET says empty_message
        ({"message": " \n"}, "empty_message"),
        ({}, "invalid_request"),
        ({"message": "hi", "surprise": 1}, "invalid_request"),
        ({"message": "hi", "options": {"temperature": 9}}, "invalid_request"),
        ({"message": ["not", "a", "string"]}, "invalid_request"),
    ],
)
async def test_post_stream_rejects(
    stack: Stack, client: httpx.AsyncClient, body: dict[str, object], code: str
) -> None:
    response = await client.post(f"{stack.url}/api/chat/stream", json=body)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == code


async def test_post_stream_rejects_broken_json(stack: Stack, client: httpx.AsyncClient) -> None:
    response = await client.post(
        f"{stack.url}/api/chat/stream",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("request_id", "status"), [("unknown-request-0001", 404), ("bad id!", 422)]
)
async def test_cancel_rejects(
    stack: Stack, client: httpx.AsyncClient, request_id: str, status: int
) -> None:
    response = await client.post(f"{stack.url}/api/chat/{request_id}/cancel")
    assert response.status_code == status
    assert "error" in response.json()
