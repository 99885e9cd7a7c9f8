"""The gateway's error answers: echotune's JSON body, OpenAI's error object on ``/v1``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError

from echotune.web.errors import ApiError, render_error

log = logging.getLogger(__name__)

OPENAI_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


def openai_error(error: ApiError) -> JSONResponse:
    """OpenAI's error object, for the ``/v1`` door; validation errors are 400 there."""
    details: Any = jsonable_encoder(error.details)
    param = None
    first = details[0] if isinstance(details, list) and details else {}
    if first.get("loc"):  # a body that is not JSON has no details (no position as a param)
        param = ".".join(str(part) for part in first["loc"] if part != "body") or None
    status = 400 if error.status == 422 else error.status
    body = {
        "message": error.message,
        "type": OPENAI_ERROR_TYPES.get(status, "api_error"),
        "param": param,
        "code": error.code,
    }
    return JSONResponse({"error": body}, status_code=status, headers=error.headers)


def render(request: Request, error: ApiError) -> JSONResponse:
    if error.status == 429 and (metrics := getattr(request.app.state, "metrics", None)):
        metrics.rejected(error)  # every refusal, whichever door
    if request.url.path.startswith("/v1/"):
        return openai_error(error)
    return render_error(request, error)


def install_store_errors(app: FastAPI) -> None:
    """Redis failing a request (down past the retries, or no free connection in time) is a
    503 the client may retry, not a 500."""

    @app.exception_handler(RedisError)
    async def _store_unavailable(request: Request, exc: RedisError) -> JSONResponse:
        log.warning("Redis failed %s %s: %r", request.method, request.url.path, exc)
        message = "the gateway cannot reach its store; retry shortly"
        return render(request, ApiError(503, "unavailable", message, headers={"Retry-After": "1"}))
