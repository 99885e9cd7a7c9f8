"""Browser sessions: an HttpOnly cookie holding ``user.expiry.signature`` (HMAC-SHA256)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

COOKIE = "echotune_session"


def _sign(secret: bytes, payload: str) -> str:
    mac = hmac.new(secret, payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def issue(secret: bytes, user_id: str, ttl_s: float) -> str:
    user = base64.urlsafe_b64encode(user_id.encode()).decode().rstrip("=")
    payload = f"{user}.{int(time.time() + ttl_s)}"
    return f"{payload}.{_sign(secret, payload)}"


def verify(secret: bytes, token: str) -> str | None:
    """The user id of a well-signed, unexpired token; ``None`` otherwise."""
    user, _, rest = token.partition(".")
    expiry, _, signature = rest.partition(".")
    payload = f"{user}.{expiry}"
    if not (expiry.isdigit() and hmac.compare_digest(signature, _sign(secret, payload))):
        return None
    if int(expiry) < time.time():
        return None
    padded = user + "=" * (-len(user) % 4)
    try:
        return base64.urlsafe_b64decode(padded).decode()
    except ValueError:
        return None
