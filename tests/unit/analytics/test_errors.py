"""Bad parameters answer 4xx JSON; an unreachable MongoDB answers 503 JSON (never made-up data)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import httpx
import pytest

from echotune.analytics.settings import AnalyticsSettings
from tests.unit.analytics.conftest import running

Document = dict[str, Any]
BAD = [
    ("/api/analytics/providers", {"window": "2h"}, "invalid_request"),
    ("/api/analytics/providers", {"from": "yesterday"}, "invalid_datetime"),
    ("/api/analytics/providers", {"from": "2024-13-01"}, "invalid_datetime"),
    ("/api/analytics/providers", {"from": "2024-02-01", "to": "2024-01-01"}, "invalid_range"),
    ("/api/analytics/providers", {"from": "2024-01-01", "to": "2024-01-01"}, "invalid_range"),
    ("/api/analytics/providers", {"from": "1990-01-01", "to": "2024-01-01"}, "range_too_long"),
    ("/api/analytics/providers", {"limit": "1000000"}, "limit_too_large"),
    ("/api/analytics/providers", {"limit": "0"}, "invalid_request"),
    ("/api/analytics/providers", {"page": "0"}, "invalid_request"),
    ("/api/analytics/providers", {"page": "5000", "limit": "100"}, "page_too_deep"),
    ("/api/analytics/providers", {"limit": "ten"}, "invalid_request"),
    ("/api/analytics/providers", {"fields": "requests,password"}, "unknown_field"),
    ("/api/analytics/providers/timeseries", {"bucket": "2m"}, "invalid_request"),
    ("/api/analytics/providers/timeseries", {"bucket": "1m", "window": "30d"}, "too_many_points"),
    ("/api/analytics/providers/timeseries", {"metrics": "p42"}, "unknown_field"),
    ("/api/analytics/providers/timeseries", {"group_by": "user"}, "invalid_request"),
    ("/api/analytics/listening-patterns", {"tz": "Mars/Olympus"}, "unknown_time_zone"),
    ("/api/analytics/listening-patterns", {"tz": "../../etc/passwd"}, "unknown_time_zone"),
    # files of the system's tz database, no zone: the machine's own setting, a placeholder
    ("/api/analytics/listening-patterns", {"tz": "localtime"}, "unknown_time_zone"),
    ("/api/analytics/listening-patterns", {"tz": "Factory"}, "unknown_time_zone"),
    # the chat's name for it was ignored: a 200 in UTC (new-user review)
    ("/api/insights/engagement", {"time_zone": "Nope/Nope"}, "unknown_time_zone"),
    ("/api/insights/engagement", {"time_zone": ""}, "unknown_time_zone"),
    (
        "/api/insights/engagement",
        {"tz": "UTC", "time_zone": "Asia/Tokyo"},
        "conflicting_time_zones",
    ),
    ("/api/analytics/listening-patterns", {"granularity": "minute"}, "invalid_request"),
    (  # in the hour Paris skips: it read as 03:30 and the range was "reversed"
        "/api/analytics/listening-patterns",
        {"tz": "Europe/Paris", "from": "2026-03-29T02:30:00", "to": "2026-03-29T03:10:00"},
        "nonexistent_time",
    ),
    ("/api/analytics/listening-patterns", {"window": "2y"}, "invalid_request"),
    ("/api/analytics/listening-patterns", {"user_id": ""}, "invalid_request"),
    ("/api/insights/engagement", {"session_gap_min": "-5"}, "invalid_request"),
    ("/api/insights/engagement", {"fields": "kpis,secrets"}, "unknown_field"),
    ("/api/insights/engagement", {"to": "2024-01-01T00:00:00+25:00"}, "invalid_datetime"),
    # past the ends of Python's dates: OverflowError was a 500
    ("/api/insights/engagement", {"from": "0001-01-01T00:00:00+01:00"}, "invalid_datetime"),
    ("/api/analytics/providers", {"to": "9999-12-31T23:00:00-05:00"}, "invalid_datetime"),
    (
        "/api/analytics/listening-patterns",
        {"from": "0001-01-01", "tz": "Asia/Tokyo"},
        "invalid_datetime",
    ),
    ("/api/analytics/providers", {"to": "0001-01-02T00:00:00Z", "window": "7d"}, "invalid_range"),
    ("/api/conversations", {}, "invalid_request"),
    ("/api/conversations", {"user_id": "alice", "limit": "201"}, "limit_too_large"),
    ("/api/conversations/bad%20id", {}, "invalid_request"),
]


@pytest.mark.parametrize(("path", "params", "code"), BAD)
async def test_bad_parameters_are_4xx_json(
    api: httpx.AsyncClient, path: str, params: Document, code: str
) -> None:
    response = await api.get(path, params=params)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert response.headers["x-request-id"] == response.json()["request_id"]


async def test_a_to_before_1970_alone_names_to(api: httpx.AsyncClient) -> None:
    """It blamed 'from', which was not sent."""
    response = await api.get("/api/analytics/providers", params={"to": "1969-12-31T00:00:00Z"})
    error = response.json()["error"]
    assert (response.status_code, error["code"]) == (422, "invalid_range")
    assert error["details"]["param"] == "to"
    assert "'from'" not in error["message"]


async def test_unknown_path_is_json_404(api: httpx.AsyncClient) -> None:
    response = await api.get("/api/analytics/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


async def test_health_and_openapi(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    schema = (await api.get("/openapi.json")).json()
    for path in (
        "/api/analytics/providers", "/api/analytics/providers/timeseries",
        "/api/analytics/listening-patterns", "/api/insights/engagement",
        "/api/conversations", "/api/conversations/{conversation_id}", "/readyz",
    ):  # fmt: skip
        assert path in schema["paths"], path
    names = {p["name"] for p in schema["paths"]["/api/analytics/providers"]["get"]["parameters"]}
    assert {"window", "from", "to", "provider", "model", "page", "limit", "fields"} <= names


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_mongodb_down_is_503_json() -> None:
    settings = AnalyticsSettings(
        mongodb_url=f"mongodb://127.0.0.1:{closed_port()}/echotune",
        mongo_timeout_ms=300,
        log_level="WARNING",
    )
    async with running(settings) as api:
        assert (await api.get("/healthz")).status_code == 200
        for path, params in [
            ("/readyz", {}),
            ("/api/analytics/providers", {}),
            ("/api/analytics/providers/timeseries", {}),
            ("/api/analytics/listening-patterns", {"tz": "Asia/Tokyo"}),
            ("/api/insights/engagement", {}),
            ("/api/conversations", {"user_id": "alice"}),
            ("/api/conversations/abc", {}),
        ]:
            response = await api.get(path, params=params)
            assert response.status_code == 503, (path, response.text)
            body = response.json()
            assert body["error"]["code"] == "mongodb_unavailable"
            assert "data" not in body
            assert response.headers["retry-after"] == "5"
        # parameters are still checked first
        assert (
            await api.get("/api/analytics/providers", params={"limit": 10**6})
        ).status_code == 422


async def test_ready_once_migrated(api: httpx.AsyncClient) -> None:
    app = api.app  # type: ignore[attr-defined]
    for _ in range(100):
        if app.state.migration.done:
            break
        await asyncio.sleep(0.05)
    response = await api.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ready"


async def test_an_unknown_metric_names_the_metrics_parameter(api: httpx.AsyncClient) -> None:
    """The error blamed ``fields``, which was not sent (new-user review)."""
    response = await api.get("/api/analytics/providers/timeseries", params={"metrics": "zzz"})
    error = response.json()["error"]
    assert (response.status_code, error["code"]) == (422, "unknown_field")
    assert error["details"]["param"] == "metrics"
    assert error["message"].startswith("unknown metric(s) zzz; allowed: ")


async def test_asking_for_a_conversation_s_id_is_no_unknown_field(api: httpx.AsyncClient) -> None:
    """``fields=id`` was ``unknown field(s) id`` although every row has its ``id``."""
    response = await api.get("/api/conversations", params={"user_id": "alice", "fields": "id"})
    assert response.status_code == 200, response.text
    query = {"user_id": "alice", "fields": "id,summary"}
    one = await api.get("/api/conversations/c-1", params=query)
    assert one.json()["error"]["code"] == "conversation_not_found", one.text
