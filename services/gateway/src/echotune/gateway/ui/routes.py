"""The web UI: static files (no build step) served without authentication.

The page holds no data: every API call it makes is authenticated by the session cookie. Pages
(``/``, ``/dashboard``) and assets (``/ui/…``) carry a strict Content-Security-Policy and the
usual hardening headers. Assets are revalidated by ETag and sent gzip-compressed when the
client accepts it.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated

from fastapi import APIRouter, Header, Response
from fastapi import Path as PathParam

from echotune.web.errors import ApiError

STATIC_DIR = Path(__file__).resolve().parent / "static"
INDEX = "index.html"
ASSET_PREFIX = "/ui"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
}
MIN_GZIP_BYTES = 512

router = APIRouter(tags=["ui"], include_in_schema=False)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    etag: str
    media_type: str
    mtime_ns: int


_cache: dict[Path, Asset] = {}


def _load(path: Path) -> Asset:
    """The file's bytes, gzip form and ETag; re-read when the file changed on disk."""
    mtime_ns = path.stat().st_mtime_ns
    cached = _cache.get(path)
    if cached is not None and cached.mtime_ns == mtime_ns:
        return cached
    body = path.read_bytes()
    media_type = MEDIA_TYPES[path.suffix]
    compress = len(body) >= MIN_GZIP_BYTES
    gzipped = gzip.compress(body, compresslevel=9, mtime=0) if compress else None
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    asset = Asset(body, gzipped, etag, media_type, mtime_ns)
    _cache[path] = asset
    return asset


def _resolve(relative: str) -> Path:
    """The static file at ``relative``, or a 404 (no traversal, only known file types)."""
    parts = PurePosixPath(relative).parts
    if not parts or any(p in ("..", ".") or p.startswith(".") or "\0" in p for p in parts):
        raise _not_found()
    path = STATIC_DIR.joinpath(*parts).resolve()
    if not path.is_relative_to(STATIC_DIR) or not path.is_file() or path.suffix not in MEDIA_TYPES:
        raise _not_found()
    return path


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "no such file", headers=dict(SECURITY_HEADERS))


def _serve(path: Path, if_none_match: str | None, accept_encoding: str | None) -> Response:
    asset = _load(path)
    headers = {
        **SECURITY_HEADERS,
        "Cache-Control": "no-cache",
        "ETag": asset.etag,
        "Vary": "Accept-Encoding",
    }
    if if_none_match is not None and asset.etag in {t.strip() for t in if_none_match.split(",")}:
        return Response(status_code=304, headers=headers)
    body = asset.body
    if asset.gzipped is not None and "gzip" in (accept_encoding or "").lower():
        body = asset.gzipped
        headers["Content-Encoding"] = "gzip"
    return Response(body, media_type=asset.media_type, headers=headers)


IfNoneMatch = Annotated[str | None, Header()]
AcceptEncoding = Annotated[str | None, Header()]


@router.api_route("/", methods=["GET", "HEAD"])
@router.api_route("/dashboard", methods=["GET", "HEAD"])
async def page(
    if_none_match: IfNoneMatch = None, accept_encoding: AcceptEncoding = None
) -> Response:
    """The single page (chat at ``/``, the dashboard at ``/dashboard`` or ``/#dashboard``)."""
    return _serve(STATIC_DIR / INDEX, if_none_match, accept_encoding)


@router.api_route(ASSET_PREFIX + "/{relative:path}", methods=["GET", "HEAD"])
async def asset(
    relative: Annotated[str, PathParam(max_length=200)],
    if_none_match: IfNoneMatch = None,
    accept_encoding: AcceptEncoding = None,
) -> Response:
    """A static file of the UI (scripts, styles, icon)."""
    return _serve(_resolve(relative), if_none_match, accept_encoding)
