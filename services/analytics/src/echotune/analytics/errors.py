"""One JSON error body for every 4xx/5xx: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError
from starlette.exceptions import HTTPException as StarletteHTTPException

from echotune.common.logs import request_id_var

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An error answered to the client as is."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.headers = details, headers


def bad_parameter(param: str, code: str, message: str, value: Any = None) -> ApiError:
    """A 422 about one query parameter, naming it and the refused value."""
    return ApiError(422, code, message, details={"param": param, "value": value})


def error_response(
    status: int, code: str, message: str, details: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON error body with the request id."""
    body: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        body["details"] = jsonable_encoder(details)
    return JSONResponse(
        {"error": body, "request_id": request_id_var.get()}, status_code=status, headers=headers
    )


def mongo_unavailable(exc: Exception) -> JSONResponse:
    """503 for a MongoDB that cannot be reached (never a fallback to made-up data)."""
    message = "MongoDB is not reachable; no analytics can be computed right now"
    return error_response(
        503,
        "mongodb_unavailable",
        message,
        {"reason": str(exc)[:500]},
        headers={"Retry-After": "5"},
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every failure into the JSON error body."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()
        ]
        return error_response(422, "invalid_request", "request validation failed", details)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, code, str(exc.detail), headers=headers)

    @app.exception_handler(ConnectionFailure)
    async def _unreachable(_: Request, exc: ConnectionFailure) -> JSONResponse:
        log.warning("MongoDB unreachable: %s", exc)
        return mongo_unavailable(exc)

    @app.exception_handler(ExecutionTimeout)
    async def _timeout(_: Request, exc: ExecutionTimeout) -> JSONResponse:
        message = "the query took longer than its time limit; narrow the range or filters"
        return error_response(504, "query_timeout", message)

    @app.exception_handler(PyMongoError)
    async def _database(_: Request, exc: PyMongoError) -> JSONResponse:
        log.exception("MongoDB error", exc_info=exc)
        return error_response(500, "database_error", "MongoDB refused the query", str(exc)[:500])
