"""The web kit every FastAPI service shares: one error body, one request-id rule."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from echotune.analytics.app import create_app as create_analytics
from echotune.analytics.settings import AnalyticsSettings
from echotune.gateway.app import create_app as create_gateway
from echotune.gateway.settings import GatewaySettings
from echotune.web.bodylimit import BodySizeLimitMiddleware
from echotune.web.errors import ApiError, install_error_handlers
from echotune.web.requestid import RequestIdMiddleware


def tiny_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    async def boom() -> None:
        raise ApiError(409, "clash", "it clashed", details={"x": 1})

    @app.post("/echo")
    async def echo(body: dict[str, str]) -> dict[str, str]:
        return body

    @app.post("/ignore")
    async def ignore() -> dict[str, str]:
        return {"body": "not read"}

    app.add_middleware(BodySizeLimitMiddleware, max_bytes=100)
    app.add_middleware(RequestIdMiddleware)  # outermost, as in every service
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
    assert response.json()["request_id"] is None, "the error body's shape, as every other's"


@SERVICES
async def test_a_request_id_with_a_trailing_newline_is_refused(app: FastAPI) -> None:
    """`$` also matches before a final newline: such an id was taken, then broke the response's
    header (the server dropped the connection) or the chat job's validation (a 500)."""
    response = await call(app, "/healthz?request_id=abcdefgh%0A")
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request_id"


async def chunked(size: int) -> AsyncIterator[bytes]:
    """A JSON body of about ``size`` bytes, sent without a Content-Length."""
    yield b'{"x": "'
    yield b"y" * size
    yield b'"}'


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_body_over_the_limit_is_a_413_with_the_request_id(declared: bool) -> None:
    """Sent chunked, it was a 400 "There was an error parsing the body" (FastAPI reads the
    body and turns any error into that); either way the 413 had no request id."""
    transport = httpx.ASGITransport(app=tiny_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        content = b'{"x": "' + b"y" * 200 + b'"}' if declared else chunked(200)
        response = await client.post(
            "/echo", content=content, headers={"X-Request-Id": "req-00000002"}
        )
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"
    assert response.json()["request_id"] == "req-00000002"


async def test_a_declared_body_over_the_limit_is_refused_where_it_is_never_read() -> None:
    """Refused only as it was read, it let a route that reads no body run (a cancel, or an SSE
    answer started by a GET carrying a body, then cut by its disconnect listener's read)."""
    transport = httpx.ASGITransport(app=tiny_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        response = await client.post(
            "/ignore", content=b"x" * 200, headers={"X-Request-Id": "req-00000003"}
        )
    assert response.status_code == 413
    assert response.json()["request_id"] == "req-00000003"


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_body_over_the_limit_on_the_openai_door_is_an_openai_error(declared: bool) -> None:
    app = create_gateway(GatewaySettings(auth_enabled=False, max_body_bytes=1024))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        content = b"x" * 2000 if declared else chunked(2000)
        response = await client.post("/v1/chat/completions", content=content)
    assert response.status_code == 413
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "body_too_large")


@pytest.mark.parametrize(
    "app",
    [create_gateway(GatewaySettings(auth_enabled=False)), create_analytics(AnalyticsSettings())],
    ids=["gateway", "analytics"],
)
async def test_a_health_check_by_head_is_answered(app: FastAPI) -> None:
    """Load balancers probing with HEAD got a 405 from the gateway and analytics."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        response = await client.head("/healthz")
    assert response.status_code == 200
