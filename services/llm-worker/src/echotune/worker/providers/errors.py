"""Shared HTTP error handling of the providers: status and exception mapping, Retry-After."""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections.abc import Iterator, Mapping
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from echotune.common.providers import ProviderConfig
from echotune.common.request_faults import error_code_of
from echotune.worker.providers.base import ProviderError

ERROR_BODY_LIMIT = 4096
_MESSAGE_LIMIT = 400
_GOOGLE_DELAY = re.compile(r"^\s*(\d+(?:\.\d+)?)s\s*$")


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date), else None."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        current = time.time() if now is None else now
        return max(0.0, when.timestamp() - current)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def retry_after_from(headers: Mapping[str, str], body: Any = None) -> float | None:
    """Retry delay from ``retry-after-ms``, ``Retry-After`` or a Google ``RetryInfo`` body."""
    millis = parse_retry_after(headers.get("retry-after-ms"))
    if millis is not None:
        return millis / 1000.0
    seconds = parse_retry_after(headers.get("retry-after"))
    if seconds is not None:
        return seconds
    for detail in as_list(as_dict(as_dict(body).get("error")).get("details")):
        match = _GOOGLE_DELAY.match(str(as_dict(detail).get("retryDelay", "")))
        if match:
            return float(match.group(1))
    return None


def redact(text: str, secret: str | None) -> str:
    """``text`` with ``secret`` masked, also a cut-off start of it at the end of ``text``."""
    if not secret:
        return text
    text = text.replace(secret, "***")
    for size in range(len(secret) - 1, 3, -1):
        if text.endswith(secret[:size]):
            return text[:-size] + "***"
    return text


def status_error(
    provider: str,
    status: int,
    detail: str,
    *,
    retry_after: float | None = None,
    secret: str | None = None,
) -> ProviderError:
    """The ProviderError for an HTTP (or in-stream) error status."""
    code = error_code_of(status)
    message = redact(f"{provider}: HTTP {status}: {detail}", secret)[:_MESSAGE_LIMIT]
    return ProviderError(code, message, status=status, retry_after=retry_after)


def error_detail(body: Any, raw: bytes = b"") -> str:
    """A short human-readable description of a provider error body."""
    error = as_dict(body).get("error")
    message = as_dict(error).get("message") if isinstance(error, dict) else error
    if isinstance(message, str) and message:
        return message
    return raw.decode("utf-8", "replace").strip() or "no body"


def payload_error(provider: str, body: dict[str, Any]) -> ProviderError:
    """The ProviderError for an in-stream ``{"error": {...}}`` object (its int code, else 500)."""
    code = as_dict(body.get("error")).get("code")
    status = code if isinstance(code, int) and 400 <= code <= 599 else 500
    return status_error(provider, status, error_detail(body))


async def read_bounded(response: httpx.Response, limit: int = ERROR_BODY_LIMIT) -> bytes:
    """At most ``limit`` bytes of the response body; transport errors end the read."""
    buffer = bytearray()
    with contextlib.suppress(httpx.HTTPError):
        async for chunk in response.aiter_bytes():
            buffer += chunk
            if len(buffer) >= limit:
                break
    return bytes(buffer[:limit])


async def raise_for_status(response: httpx.Response, provider: str, secret: str | None) -> None:
    """Raise the classified ProviderError when ``response`` is not a 2xx."""
    if response.is_success:
        return
    raw = await read_bounded(response)
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = None
    retry_after = retry_after_from(response.headers, body)
    detail = error_detail(body, raw)
    raise status_error(
        provider, response.status_code, detail, retry_after=retry_after, secret=secret
    )


def malformed(provider: str, detail: str) -> ProviderError:
    """A ``malformed_stream`` error."""
    return ProviderError("malformed_stream", f"{provider}: malformed stream: {detail}")


@contextlib.contextmanager
def translate_errors(provider: str, secret: str | None = None) -> Iterator[None]:
    """Turn httpx exceptions raised inside the block into ProviderErrors."""
    try:
        yield
    except httpx.HTTPError as exc:
        code = classify(exc)
        message = f"{provider}: {code} ({type(exc).__name__}): {exc}"
        raise ProviderError(code, redact(message, secret)[:_MESSAGE_LIMIT]) from exc


def classify(exc: httpx.HTTPError) -> str:
    """The ProviderError code of an httpx exception."""
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError | httpx.ProxyError | httpx.UnsupportedProtocol):
        return "connect_error"
    if isinstance(exc, httpx.DecodingError):
        return "malformed_stream"
    return "disconnected"


def client_timeout(config: ProviderConfig) -> httpx.Timeout:
    """Per-call httpx timeouts: connect and idle read from the config."""
    t = config.timeouts
    return httpx.Timeout(connect=t.connect, read=t.idle, write=10.0, pool=10.0)


def as_dict(value: Any) -> dict[str, Any]:
    """``value`` if it is a dict, else an empty dict."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    """``value`` if it is a list, else an empty list."""
    return value if isinstance(value, list) else []


def as_int(value: Any) -> int:
    """``value`` if it is a non-negative int, else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
