"""A query parameter a route does not declare is a 422, as on the gateway's chat stream."""

from __future__ import annotations

import httpx
import pytest

RANGE = "from=2024-03-08T00:00:00Z&to=2024-03-08T06:00:00Z"
UNKNOWN = [
    ("/api/analytics/providers", "window=1h&provder=fake", "provder"),
    ("/api/analytics/providers", "provider[$ne]=x", "provider[$ne]"),
    ("/api/analytics/providers/timeseries", "page=2", "page"),
    ("/api/analytics/listening-patterns", "granularity=day&limits=5", "limits"),
    ("/api/insights/engagement", "session_gap=10", "session_gap"),
    ("/api/conversations", "user_id=alice&userid=bob", "userid"),
    ("/api/conversations/c-1", "user_id=alice&page=2", "page"),
    ("/healthz", "verbose=1", "verbose"),
    ("/readyz", "Window=1h", "Window"),
]
KNOWN = [  # aliases (from, to), repeated lists, dependencies' parameters
    ("/api/analytics/providers", f"{RANGE}&provider=a&provider=b&model=m&fields=requests"
     "&fields=errors&page=1&limit=5"),
    ("/api/analytics/providers/timeseries", f"{RANGE}&bucket=5m&group_by=model&metrics=count"
     "&metrics=p95&provider=a"),
    ("/api/analytics/listening-patterns", f"{RANGE}&time_zone=Europe/Paris&granularity=week"
     "&user_id=alice&page=1&limit=3&fields=totals"),
    ("/api/insights/engagement", "window=7d&tz=UTC&session_gap_min=10&fields=kpis&user_id=a"),
    ("/api/conversations", "user_id=alice&page=1&limit=5&fields=summary"),
    ("/healthz", ""),
]  # fmt: skip


@pytest.mark.parametrize(("path", "query", "name"), UNKNOWN)
async def test_an_unknown_query_parameter_is_refused(
    api: httpx.AsyncClient, path: str, query: str, name: str
) -> None:
    """``providers?provder=fake`` answered every provider: the typo was dropped unseen."""
    response = await api.get(f"{path}?{query}")
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["details"] == [
        {"loc": ["query", name], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}
    ]
    assert name in error["message"]


@pytest.mark.parametrize(("path", "query"), KNOWN)
async def test_declared_parameters_are_taken(api: httpx.AsyncClient, path: str, query: str) -> None:
    response = await api.get(f"{path}?{query}")
    assert response.status_code == 200, response.text


async def test_a_declared_parameter_of_one_conversation_is_taken(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/conversations/c-1?user_id=alice&fields=turns")
    assert response.json()["error"]["code"] == "conversation_not_found", response.text


@pytest.mark.parametrize(
    "path", ["/api/analytics/providers", "/api/analytics/providers/timeseries"]
)
async def test_the_gateway_s_user_id_is_taken_where_it_filters_nothing(
    api: httpx.AsyncClient, path: str
) -> None:
    """The gateway sets ``user_id`` on every request it forwards (``proxy.py``)."""
    response = await api.get(path, params={"user_id": "alice", "window": "1h"})
    assert response.status_code == 200, response.text


async def test_a_request_id_named_in_the_query_is_taken_anywhere(api: httpx.AsyncClient) -> None:
    """Every service takes its request id from ``?request_id=`` (``web/requestid.py``): it
    was refused as unknown, then echoed in the 422's body."""
    response = await api.get("/api/analytics/providers", params={"request_id": "abcdefgh-123"})
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-Id"] == "abcdefgh-123"


async def test_head_refuses_an_unknown_parameter_too(api: httpx.AsyncClient) -> None:
    assert (await api.head("/healthz?x=1")).status_code == 422
    assert (await api.head("/healthz")).status_code == 200
