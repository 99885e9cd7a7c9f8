"""Browser sessions: a signed HttpOnly cookie naming a session that Redis must still hold.

The cookie holds ``session id.key id.user id.expiry.signature`` (HMAC-SHA256, free text in
base64url). A session is live while its id is in the sorted set of the API key it was issued
from (:meth:`Keys.sessions`, scored by expiry): logging out removes it, revoking the key
deletes the set. That set is pruned of expired sessions on every login, holds at most
``MAX_PER_KEY`` sessions (a new login ends the oldest one beyond) and expires with its
newest session: memory is bounded by API keys × ``MAX_PER_KEY``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from echotune.common.keys import Keys

COOKIE = "echotune_session"
MAX_PER_KEY = 100


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    key_id: str
    user_id: str
    expires_at: int
    """Epoch seconds."""


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _unb64(text: str) -> str:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()


def _sign(secret: bytes, payload: str) -> str:
    mac = hmac.new(secret, payload.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def issue(secret: bytes, session: Session) -> str:
    """The cookie value of ``session``."""
    names = (session.session_id, session.key_id, session.user_id)
    payload = ".".join([*map(_b64, names), str(session.expires_at)])
    return f"{payload}.{_sign(secret, payload)}"


def verify(secret: bytes, token: str) -> Session | None:
    """The session of a well-signed, unexpired cookie (not yet checked against Redis)."""
    if not token.isascii():  # compare_digest takes no other text
        return None
    payload, _, signature = token.rpartition(".")
    parts = payload.split(".")
    if len(parts) != 4 or not hmac.compare_digest(signature, _sign(secret, payload)):
        return None
    *names, expiry = parts
    if not expiry.isdigit() or int(expiry) < time.time():
        return None
    try:
        session_id, key_id, user_id = map(_unb64, names)
    except (binascii.Error, UnicodeDecodeError):
        return None
    return Session(session_id, key_id, user_id, int(expiry))


# KEYS: the key's sessions. ARGV: session id, ttl ms, cap. → expiry (ms, Redis' clock)
_START = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expires = now + tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZADD', KEYS[1], expires, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[3]) - 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return expires
"""

# KEYS: the key's sessions. → how many live sessions it held (they are all ended)
_END_ALL = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
redis.call('DEL', KEYS[1])
return live
"""


class SessionStore:
    """The live sessions of every API key."""

    def __init__(self, redis: Redis, keys: Keys, max_per_key: int = MAX_PER_KEY) -> None:
        self.redis, self.keys, self.max_per_key = redis, keys, max_per_key
        self._start = redis.register_script(_START)
        self._end_all = redis.register_script(_END_ALL)

    async def start(self, key_id: str, user_id: str, ttl_s: int) -> Session:
        session_id = secrets.token_urlsafe(16)
        expires_ms = await self._start(
            keys=[self.keys.sessions(key_id)], args=[session_id, ttl_s * 1000, self.max_per_key]
        )
        return Session(session_id, key_id, user_id, int(expires_ms) // 1000)

    async def is_live(self, session: Session) -> bool:
        """Still held (its expiry is the cookie's, checked by :func:`verify`)."""
        score = await self.redis.zscore(self.keys.sessions(session.key_id), session.session_id)
        return score is not None

    async def end(self, session: Session) -> None:
        await self.redis.zrem(self.keys.sessions(session.key_id), session.session_id)

    async def end_all(self, key_id: str) -> int:
        """End every session issued from ``key_id``; how many were live."""
        return int(await self._end_all(keys=[self.keys.sessions(key_id)]))
