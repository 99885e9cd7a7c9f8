"""One JSON error body for every 4xx/5xx: ``{"error": {"code", "message", "details"}}``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from echotune.common.error_body import error_body


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


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The JSON error body, with the request id."""
    body = error_body(code, message, None if details is None else jsonable_encoder(details))
    return JSONResponse(body, status_code=status, headers=headers)


Render = Callable[[Request, ApiError], JSONResponse]
"""How a service answers an error (a door may speak another API's error format)."""


def render_error(_: Request, error: ApiError) -> JSONResponse:
    return error_response(error.status, error.code, error.message, error.details, error.headers)


def _unreadable_body(errors: Sequence[Any]) -> ApiError | None:
    """A body that is not JSON at all: said plainly, not as the first field's validation."""
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":  # its loc is ("body", the character's position)
        reason = first.get("ctx", {}).get("error", "not JSON")
        where = first.get("loc", ("body", "?"))[-1]
        return ApiError(
            400, "invalid_json", f"the body is not valid JSON: {reason} at character {where}"
        )
    expected_object = first.get("type") in ("model_attributes_type", "dict_type")
    if (
        expected_object
        and tuple(first.get("loc", ())) == ("body",)
        and isinstance(first.get("input"), bytes)
    ):  # an object was expected; what came was never parsed as JSON
        message = "the body must be JSON, sent with Content-Type: application/json"
        return ApiError(415, "unsupported_media_type", message)
    return None


def _unparsed_body(exc: StarletteHTTPException) -> ApiError | None:
    """A body the JSON parser itself failed on (FastAPI says only "an error parsing the
    body"): not UTF-8, or nested deeper than Python's recursion allows."""
    cause = exc.__cause__
    if exc.status_code != 400 or cause is None:
        return None
    if isinstance(cause, UnicodeDecodeError):
        reason = f"not UTF-8 at byte {cause.start}"
    elif isinstance(cause, RecursionError):
        reason = "nested too deeply"
    else:
        return None
    return ApiError(400, "invalid_json", f"the body is not valid JSON: {reason}")


def install_error_handlers(app: FastAPI, render: Render = render_error) -> None:
    """Every failure FastAPI or the app raises becomes an error body (``render``)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return render(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        if (unreadable := _unreadable_body(exc.errors())) is not None:
            return render(request, unreadable)
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg"), "type": e.get("type")}
            for e in exc.errors()
        ]
        message = "request validation failed"
        if details:
            message = f"{message}: {details[0]['msg']} at {'.'.join(map(str, details[0]['loc']))}"
        return render(request, ApiError(422, "invalid_request", message, details=details))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if (unparsed := _unparsed_body(exc)) is not None:
            return render(request, unparsed)
        code = {404: "not_found", 405: "method_not_allowed", 413: "body_too_large"}.get(
            exc.status_code, "http_error"
        )
        headers = dict(exc.headers) if exc.headers else None
        return render(request, ApiError(exc.status_code, code, str(exc.detail), headers=headers))
