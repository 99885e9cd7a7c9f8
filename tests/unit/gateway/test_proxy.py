"""The analytics pass-through, against a mock analytics service (httpx's MockTransport)."""

from __future__ import annotations

import httpx
import pytest
from starlette.requests import Request

from echotune.gateway.proxy import forward, upstream_path
from echotune.web.errors import ApiError


def _request(path: str, query: bytes = b"") -> Request:
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query,
        "headers": [],
    }
    request = Request(scope)
    request.state.request_id = "r-1"
    return request


async def test_a_busy_analytics_answer_keeps_its_retry_after() -> None:
    """The 503 reached the client without the Retry-After the analytics service sent."""

    def busy(request: httpx.Request) -> httpx.Response:
        body = {"error": {"code": "unavailable", "message": "busy"}}
        return httpx.Response(503, json=body, headers={"Retry-After": "5", "X-Other": "x"})

    async with httpx.AsyncClient(
        transport=httpx.MockTransport(busy), base_url="http://analytics"
    ) as client:
        response = await forward(_request("/api/analytics/providers"), client, "u1")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert "x-other" not in response.headers


async def test_the_user_id_is_imposed_on_the_forwarded_query() -> None:
    seen: list[httpx.URL] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request.url)
        return httpx.Response(200, json={})

    async with httpx.AsyncClient(
        transport=httpx.MockTransport(record), base_url="http://analytics"
    ) as client:
        await forward(_request("/api/conversations", b"user_id=eve&limit=3"), client, "u1")
    assert seen[0].params.get_list("user_id") == ["u1"]
    assert seen[0].params["limit"] == "3"


@pytest.mark.parametrize("conversation", ["-bad", "c" * 65, "a:b!"])
def test_a_malformed_conversation_id_is_a_422_not_an_unknown_route(conversation: str) -> None:
    """It was ``404 "no such analytics route"`` (new-user review): the route exists, the id
    breaks its rule. A dot segment or an encoded character stays a 404 (never forwarded)."""
    with pytest.raises(ApiError) as refused:
        upstream_path(_request(f"/api/conversations/{conversation}"))
    assert refused.value.status == 422
    assert refused.value.details[0]["loc"] == ["path", "conversation_id"]
    for path in ("/api/conversations/..", "/api/conversations/a/b", "/api/conversations/a\\b"):
        with pytest.raises(ApiError) as unknown:
            upstream_path(_request(path))
        assert unknown.value.status == 404, path
    assert (
        upstream_path(_request("/api/conversations/conv-1.a:b")) == "/api/conversations/conv-1.a:b"
    )
