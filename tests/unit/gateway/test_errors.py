"""Redis failing a request is a 503 the client may retry, in each door's error format."""

from __future__ import annotations

from typing import Annotated

from fastapi import Body, FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel
from redis.exceptions import ConnectionError, MaxConnectionsError

from echotune.gateway.errors import install_store_errors, render
from echotune.web.errors import install_error_handlers


def app_failing_with_redis() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    install_store_errors(app)

    @app.get("/api/thing")
    async def thing() -> None:
        raise MaxConnectionsError("Too many connections")

    @app.get("/v1/thing")
    async def openai_thing() -> None:
        raise ConnectionError("Connection refused")

    return app


def test_redis_failures_are_503s_to_retry_not_500s() -> None:
    client = TestClient(app_failing_with_redis())
    api = client.get("/api/thing")
    assert api.status_code == 503
    assert api.headers["retry-after"] == "1"
    assert api.json()["error"]["code"] == "unavailable"
    door = client.get("/v1/thing")
    assert door.status_code == 503
    assert door.json()["error"]["type"] == "service_unavailable_error"


class _Body(BaseModel):
    model: str


def body_client() -> TestClient:
    """An app with the gateway's error answers and a route taking a JSON body on each door."""
    app = FastAPI()
    install_error_handlers(app, render)

    @app.post("/api/thing")
    @app.post("/v1/thing")
    async def thing(body: _Body) -> None:
        pass

    @app.post("/api/short")
    async def short(text: Annotated[str, Body(max_length=3)]) -> None:
        pass

    return TestClient(app)


def test_a_body_that_is_not_json_names_no_param_on_the_openai_door() -> None:
    """OpenAI's error object said ``param: "0"`` (the decode error's position)."""
    client = body_client()
    broken = client.post(
        "/v1/thing", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400
    assert broken.json()["error"]["param"] is None
    wrong = client.post("/v1/thing", json={"model": 1})
    assert wrong.json()["error"]["param"] == "model"


def test_a_body_that_is_not_json_is_said_plainly_on_both_doors() -> None:
    """Broken JSON read ``422 … JSON decode error at body.16`` (a character's position as a
    field) and a text body ``Input should be a valid dictionary`` (new-user review)."""
    client = body_client()
    broken = client.post(
        "/api/thing", content=b'{"model": "m"', headers={"content-type": "application/json"}
    )
    assert broken.status_code == 400
    assert broken.json()["error"]["code"] == "invalid_json"
    assert broken.json()["error"]["message"] == (
        "the body is not valid JSON: Expecting ',' delimiter at character 13"
    )
    for path in ("/api/thing", "/v1/thing"):
        text = client.post(path, content=b"hello", headers={"content-type": "text/plain"})
        assert text.status_code == 415, path
        assert text.json()["error"]["code"] == "unsupported_media_type"
    missing = client.post("/api/thing")
    assert missing.status_code == 422
    assert missing.json()["error"]["code"] == "invalid_request"
    # a body of text a route takes, only too long: its own error, not "send JSON" (review)
    long = client.post("/api/short", content=b"toolong", headers={"content-type": "text/plain"})
    assert long.status_code == 422, long.text


def test_a_body_not_utf8_or_nested_too_deep_is_invalid_json_on_both_doors() -> None:
    """Both were ``400 http_error "There was an error parsing the body"`` (new-user review):
    the parser's own failures, not a JSON decode error FastAPI names."""
    client = body_client()
    json_type = {"content-type": "application/json"}
    cases = {
        b'{"model": "\xff\xfe"}': "the body is not valid JSON: not UTF-8 at byte 11",
        b'{"a":' * 3000 + b"1" + b"}" * 3000: "the body is not valid JSON: nested too deeply",
    }
    for body, message in cases.items():
        api = client.post("/api/thing", content=body, headers=json_type)
        assert api.status_code == 400, api.text
        assert api.json()["error"] == {"code": "invalid_json", "message": message}
        door = client.post("/v1/thing", content=body, headers=json_type)
        assert door.status_code == 400, door.text
        assert door.json()["error"]["message"] == message
