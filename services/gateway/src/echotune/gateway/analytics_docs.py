"""The analytics endpoints in the gateway's OpenAPI, with their real parameters and responses.

The analytics service documents them; the gateway reads that schema (in the background from its
start, retrying until the service answers) and serves those operations in its own ``/docs`` as
it proxies them: under the same paths, minus ``user_id`` (the gateway always sets it to the
caller), plus the gateway's own answers (401, 503/504 when analytics is unreachable). Until the
schema is known the docs show the generic pass-through routes. Services never import each other:
this is the only way the gateway knows the analytics models.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import httpx
from fastapi import FastAPI

log = logging.getLogger(__name__)

PROXIED_PREFIXES = ("/api/analytics/", "/api/insights/", "/api/conversations/")
PROXIED_PATHS = ("/api/conversations",)
COMPONENT_PREFIX = "Analytics"
REF_PREFIX = "#/components/schemas/"
IMPOSED_PARAMETERS = frozenset({"user_id"})
GATEWAY_RESPONSES: dict[str, dict[str, str]] = {
    "401": {"description": "No or invalid API key / session"},
    "503": {"description": "The analytics service (or its MongoDB) is unreachable"},
    "504": {"description": "The analytics service (or its query) did not answer in time"},
}
RETRY_FIRST_S, RETRY_CAP_S = 1.0, 30.0


def is_proxied(path: str) -> bool:
    """Whether the gateway forwards ``path`` to the analytics service."""
    return path in PROXIED_PATHS or path.startswith(PROXIED_PREFIXES)


class AnalyticsDocs:
    """The analytics service's OpenAPI document, once it has been read."""

    def __init__(self) -> None:
        self.schema: dict[str, Any] | None = None

    async def fetch(self, client: httpx.AsyncClient) -> bool:
        """Read the schema once; ``False`` when the service did not give a usable one."""
        try:
            response = await client.get("/openapi.json")
            schema = response.json() if response.is_success else None
        except (httpx.HTTPError, ValueError) as exc:
            log.info("analytics OpenAPI not available yet: %s", exc)
            return False
        if not isinstance(schema, dict) or not isinstance(schema.get("paths"), dict):
            return False
        self.schema = schema
        return True

    async def fetch_until_known(self, client: httpx.AsyncClient) -> None:
        """Retry (1 s, doubling to 30 s) until the schema is read."""
        delay = RETRY_FIRST_S
        while not await self.fetch(client):
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_CAP_S)
        log.info("analytics endpoints added to the OpenAPI document")


def install(app: FastAPI, docs: AnalyticsDocs) -> None:
    """Make ``app.openapi()`` merge what ``docs`` knows (rebuilt when it learns more)."""
    build = app.openapi
    merged_with: list[dict[str, Any] | None] = [None]

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None or merged_with[0] is not docs.schema:
            app.openapi_schema = None
            app.openapi_schema = merged_openapi(build(), docs.schema)
            merged_with[0] = docs.schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def merged_openapi(base: dict[str, Any], analytics: dict[str, Any] | None) -> dict[str, Any]:
    """``base`` with its pass-through routes replaced by the analytics operations."""
    if analytics is None:
        return base
    paths = {path: item for path, item in base["paths"].items() if not is_proxied(path)}
    for path, item in analytics.get("paths", {}).items():
        if is_proxied(path):
            paths[path] = _renamed({method: _as_proxied(op) for method, op in item.items()})
    components = {**base.get("components", {})}
    schemas = dict(components.get("schemas", {}))
    for name, schema in analytics.get("components", {}).get("schemas", {}).items():
        schemas[COMPONENT_PREFIX + name] = _renamed(schema)
    components["schemas"] = schemas
    return {**base, "paths": paths, "components": components}


def _as_proxied(operation: dict[str, Any]) -> dict[str, Any]:
    """An analytics operation as the gateway serves it."""
    operation = copy.deepcopy(operation)
    operation["parameters"] = [
        p for p in operation.get("parameters", []) if p.get("name") not in IMPOSED_PARAMETERS
    ]
    description = operation.get("description", "")
    operation["description"] = f"{description}\n\nAlways about the caller's own data.".strip()
    operation["responses"] = {**GATEWAY_RESPONSES, **operation.get("responses", {})}
    return operation


def _renamed(value: Any) -> Any:
    """An analytics schema part with every ``$ref`` pointing at its prefixed component."""
    if isinstance(value, dict):
        return {key: _renamed_ref(key, item) for key, item in value.items()}
    if isinstance(value, list):
        return [_renamed(item) for item in value]
    return value


def _renamed_ref(key: str, value: Any) -> Any:
    if key == "$ref" and isinstance(value, str) and value.startswith(REF_PREFIX):
        return REF_PREFIX + COMPONENT_PREFIX + value.removeprefix(REF_PREFIX)
    return _renamed(value)
