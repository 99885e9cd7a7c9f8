"""The gateway's OpenAPI documents the analytics endpoints with their real parameters."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from echotune.analytics.app import create_app as create_analytics
from echotune.gateway.analytics_docs import AnalyticsDocs, is_proxied, merged_openapi
from echotune.gateway.app import create_app as create_gateway

CATCH_ALLS = ("/api/analytics/{path}", "/api/insights/{path}")


@pytest.fixture(scope="module")
def analytics_schema() -> dict[str, Any]:
    return create_analytics().openapi()


def refs(value: Any) -> set[str]:
    if isinstance(value, dict):
        found = {value["$ref"]} if isinstance(value.get("$ref"), str) else set()
        return found.union(*(refs(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(refs(v) for v in value))
    return set()


def names(operation: dict[str, Any]) -> set[str]:
    return {p["name"] for p in operation.get("parameters", [])}


async def docs_of(transport: httpx.AsyncBaseTransport) -> AnalyticsDocs:
    docs = AnalyticsDocs()
    async with httpx.AsyncClient(transport=transport, base_url="http://analytics") as client:
        await docs.fetch(client)
    return docs


def test_every_analytics_operation_is_documented_as_the_gateway_serves_it(
    analytics_schema: dict[str, Any],
) -> None:
    gateway = create_gateway()
    base = gateway.openapi()
    assert set(CATCH_ALLS) <= set(base["paths"]), "without the analytics schema: pass-throughs"
    merged = merged_openapi(base, analytics_schema)
    proxied = [path for path in analytics_schema["paths"] if is_proxied(path)]
    assert {
        "/api/analytics/providers",
        "/api/analytics/providers/timeseries",
        "/api/analytics/listening-patterns",
        "/api/insights/engagement",
        "/api/conversations",
        "/api/conversations/{conversation_id}",
    } <= set(proxied)
    assert not set(CATCH_ALLS) & set(merged["paths"])
    assert "/healthz" in merged["paths"], "the gateway's own health, not analytics'"
    assert merged["paths"]["/healthz"] == base["paths"]["/healthz"]
    for path in proxied:
        theirs, ours = analytics_schema["paths"][path]["get"], merged["paths"][path]["get"]
        assert names(ours) == names(theirs) - {"user_id"}, path
        assert names(ours), f"{path} lists its parameters"
        assert {"200", "401", "503"} <= set(ours["responses"])
        ok = ours["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok["$ref"].startswith("#/components/schemas/Analytics")
    defined = {f"#/components/schemas/{name}" for name in merged["components"]["schemas"]}
    assert {r for r in refs(merged) if r.startswith("#/components/")} <= defined
    chat = merged["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert chat == base["paths"]["/v1/chat/completions"]["post"]["requestBody"]


async def test_fetch_reads_the_service_schema(analytics_schema: dict[str, Any]) -> None:
    docs = await docs_of(httpx.ASGITransport(app=create_analytics()))
    assert docs.schema == analytics_schema


@pytest.mark.parametrize(
    "reply",
    [
        lambda _: httpx.Response(503, json={"error": {}}),
        lambda _: httpx.Response(200, text="not json"),
        lambda _: httpx.Response(200, json=["not", "a", "schema"]),
    ],
)
async def test_fetch_keeps_nothing_unusable(reply: Any) -> None:
    assert (await docs_of(httpx.MockTransport(reply))).schema is None


async def test_unreachable_is_retried_later() -> None:
    def refuse(_: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    assert (await docs_of(httpx.MockTransport(refuse))).schema is None


def test_the_app_rebuilds_its_document_once_the_schema_is_known(
    analytics_schema: dict[str, Any],
) -> None:
    gateway = create_gateway()
    assert "/api/analytics/{path}" in gateway.openapi()["paths"]
    gateway.state.analytics_docs.schema = analytics_schema
    paths = gateway.openapi()["paths"]
    assert "/api/analytics/{path}" not in paths
    assert "/api/insights/engagement" in paths
    assert gateway.openapi() is gateway.openapi(), "then cached"
