"""API keys: ``et_<id>_<secret>``, stored in Redis as a SHA-256 hash, revocable.

Keys carry 256 bits of randomness, so a fast hash is enough: there is nothing to
brute-force that a slow password hash would protect.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import asdict, dataclass

from redis.asyncio import Redis

from echotune.common.keys import Keys

PREFIX = "et_"
ANONYMOUS = "anonymous"
"""The user of every request while authentication is off; it may act for everyone (set the
provider for all, name the user on the OpenAI door), so no key acts as it."""
USER_ID_MAX = 128
"""Longest user id (what the analytics routes take as an owner)."""


def checked_user_id(user_id: str) -> str:
    """``user_id`` if a key may act as it: 1 to ``USER_ID_MAX`` characters, not blank, not
    ``ANONYMOUS``."""
    if not user_id.strip() or len(user_id) > USER_ID_MAX:
        raise ValueError(f"a user id has 1 to {USER_ID_MAX} characters, not all blank")
    if user_id == ANONYMOUS:
        raise ValueError(f"{ANONYMOUS!r} is the user of requests without authentication")
    return user_id


@dataclass(frozen=True, slots=True)
class ApiKey:
    key_id: str
    user_id: str
    name: str
    created: float
    revoked: bool = False


def _digest(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def parse_key_id(plaintext: str) -> str | None:
    if not plaintext.startswith(PREFIX):
        return None
    key_id, _, secret = plaintext[len(PREFIX) :].partition("_")
    return key_id if key_id and secret else None


class ApiKeyStore:
    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis, self.hash_key = redis, keys.api_keys

    async def create(self, user_id: str, name: str = "") -> tuple[ApiKey, str]:
        """A new key for ``user_id``; the plaintext is returned once and never stored."""
        key_id = secrets.token_hex(6)
        plaintext = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        await self.install(plaintext, user_id, name)
        record = await self.get(key_id)
        assert record is not None
        return record, plaintext

    async def install(self, plaintext: str, user_id: str, name: str) -> None:
        """Register a key chosen elsewhere (the dev key, at every gateway start); installing the
        same key again changes nothing, so a revoked key stays revoked."""
        key_id = parse_key_id(plaintext)
        if key_id is None:
            raise ValueError(f"an API key must look like {PREFIX}<id>_<secret>")
        checked_user_id(user_id)
        digest = _digest(plaintext)
        raw = await self.redis.hget(self.hash_key, key_id)
        if raw is not None and _same(json.loads(raw), digest, user_id):
            return
        record = {"user_id": user_id, "name": name, "created": time.time(), "hash": digest}
        await self.redis.hset(self.hash_key, key_id, json.dumps(record))

    async def get(self, key_id: str) -> ApiKey | None:
        raw = await self.redis.hget(self.hash_key, key_id)
        if raw is None:
            return None
        data = json.loads(raw)
        return ApiKey(
            key_id, data["user_id"], data["name"], data["created"], data.get("revoked", False)
        )

    async def verify(self, plaintext: str) -> str | None:
        """The user id of a valid, unrevoked key; ``None`` otherwise."""
        key_id = parse_key_id(plaintext)
        raw = await self.redis.hget(self.hash_key, key_id) if key_id else None
        if raw is None:
            return None
        data = json.loads(raw)
        if data.get("revoked") or not hmac.compare_digest(data["hash"], _digest(plaintext)):
            return None
        return str(data["user_id"])

    async def is_active(self, key_id: str) -> bool:
        """The key exists and is not revoked."""
        record = await self.get(key_id)
        return record is not None and not record.revoked

    async def revoke(self, key_id: str) -> bool:
        raw = await self.redis.hget(self.hash_key, key_id)
        if raw is None:
            return False
        data = json.loads(raw) | {"revoked": True}
        await self.redis.hset(self.hash_key, key_id, json.dumps(data))
        return True

    async def list(self) -> list[ApiKey]:
        records = await self.redis.hgetall(self.hash_key)
        found = [await self.get(str(key_id)) for key_id in sorted(records)]
        return [record for record in found if record is not None]


def _same(record: dict[str, object], digest: str, user_id: str) -> bool:
    return record.get("hash") == digest and record.get("user_id") == user_id


def public(record: ApiKey) -> dict[str, object]:
    return asdict(record)
