"""Browser sessions: signed cookies naming sessions that Redis holds, in bounded memory."""

from __future__ import annotations

import time
import uuid

import pytest
from redis.asyncio import Redis

from echotune.common.keys import Keys
from echotune.gateway.auth import sessions
from echotune.gateway.auth.sessions import Session, SessionStore

SECRET = b"s" * 32


@pytest.fixture
def store(redis: Redis) -> SessionStore:
    return SessionStore(redis, Keys(f"t{uuid.uuid4().hex[:10]}"), max_per_key=5)


def test_a_cookie_names_its_session_and_key() -> None:
    session = Session("sid", "key.with.dots", "user/ü.1", int(time.time()) + 60)
    assert sessions.verify(SECRET, sessions.issue(SECRET, session)) == session


@pytest.mark.parametrize(
    "tamper",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),
        lambda t: t.replace(t.split(".")[2], sessions._b64("mallory"), 1),
        lambda t: t.split(".", 1)[1],
        lambda t: "",
        lambda t: "user.123.sig",  # the old cookie format
        lambda t: t[:-1] + "\u00e9",  # compare_digest raised on non-ASCII text: a 500
    ],
)
def test_a_tampered_cookie_is_refused(tamper: object) -> None:
    token = sessions.issue(SECRET, Session("sid", "key", "user", int(time.time()) + 60))
    assert callable(tamper)
    assert sessions.verify(SECRET, tamper(token)) is None
    assert sessions.verify(b"other" * 8, token) is None


def test_an_expired_cookie_is_refused() -> None:
    token = sessions.issue(SECRET, Session("sid", "key", "user", int(time.time()) - 1))
    assert sessions.verify(SECRET, token) is None


async def test_sessions_end_on_logout_and_all_at_once(store: SessionStore) -> None:
    first = await store.start("k1", "alice", 3600)
    second = await store.start("k1", "alice", 3600)
    other = await store.start("k2", "alice", 3600)
    assert first.expires_at == pytest.approx(time.time() + 3600, abs=5)
    assert all([await store.is_live(s) for s in (first, second, other)])
    await store.end(first)
    assert not await store.is_live(first)
    assert await store.is_live(second)
    assert await store.end_all("k1") == 1
    assert not await store.is_live(second)
    assert await store.is_live(other)
    assert await store.end_all("k1") == 0
    assert not await store.redis.exists(store.keys.sessions("k1"))


async def test_sessions_per_key_are_capped_and_expire(store: SessionStore) -> None:
    oldest = await store.start("k", "bob", 30)  # expires first, as the oldest login would
    started = [await store.start("k", "bob", 60) for _ in range(12)]
    key = store.keys.sessions("k")
    assert await store.redis.zcard(key) == store.max_per_key
    assert not await store.is_live(oldest), "the session expiring first ends first"
    assert sum([await store.is_live(s) for s in started]) == store.max_per_key
    assert 0 < await store.redis.pttl(key) <= 60_000


async def test_expired_sessions_are_pruned_and_not_counted(store: SessionStore) -> None:
    for _ in range(3):
        await store.start("k", "bob", 60)
    key = store.keys.sessions("k")
    past = int(time.time() * 1000) - 1000
    await store.redis.zadd(key, {m: past for m in await store.redis.zrange(key, 0, 1)})
    assert await store.end_all("k") == 1
    for _ in range(3):
        await store.start("k", "bob", 60)
    await store.redis.zadd(key, {m: past for m in await store.redis.zrange(key, 0, -1)})
    fresh = await store.start("k", "bob", 60)
    assert await store.redis.zrange(key, 0, -1) == [fresh.session_id]
