"""The web kit every FastAPI service shares: one error body, one request-id rule."""

from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from echotune.analytics.app import create_app as create_analytics
from echotune.analytics.settings import AnalyticsSettings
from echotune.gateway.app import create_app as create_gateway
from echotune.gateway.settings import GatewaySettings
from echotune.web.errors import ApiError, install_error_handlers
from echotune.web.requestid import RequestIdMiddleware


def tiny_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)

    @app.get("/boom")
    async def boom() -> None:
        raise ApiError(409, "clash", "it clashed", details={"x": 1})

    return app


async def call(app: FastAPI, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        return await client.get(path, headers=headers)


async def test_an_api_error_is_the_json_body_with_the_request_id() -> None:
    response = await call(tiny_app(), "/boom", {"X-Request-Id": "req-00000001"})
    assert response.status_code == 409
    assert response.headers["x-request-id"] == "req-00000001"
    assert response.json() == {
        "error": {"code": "clash", "message": "it clashed", "details": {"x": 1}},
        "request_id": "req-00000001",
    }


SERVICES = pytest.mark.parametrize(
    "app",
    [
        tiny_app(),
        create_gateway(GatewaySettings(auth_enabled=False)),
        create_analytics(AnalyticsSettings()),
    ],
    ids=["kit", "gateway", "analytics"],
)


@SERVICES
async def test_every_service_refuses_a_malformed_request_id_alike(app: FastAPI) -> None:
    """The gateway answered 422; analytics silently replaced the id."""
    response = await call(app, "/healthz", {"X-Request-Id": "no spaces allowed!"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request_id"


@SERVICES
async def test_a_request_id_with_a_trailing_newline_is_refused(app: FastAPI) -> None:
    """`$` also matches before a final newline: such an id was taken, then broke the response's
    header (the server dropped the connection) or the chat job's validation (a 500)."""
    response = await call(app, "/healthz?request_id=abcdefgh%0A")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request_id"
