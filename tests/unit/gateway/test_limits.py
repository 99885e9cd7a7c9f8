"""Chat-start rate limits: exact over any window, whatever the clock."""

from __future__ import annotations

import itertools
import time
import uuid

import pytest
from redis.asyncio import Redis

from echotune.common.keys import Keys
from echotune.common.redis import create_redis
from echotune.common.scripts import execute, load_all
from echotune.gateway.limits import ADMIT_START, OPEN_STREAMS, ChatLimits
from echotune.web.errors import ApiError
from tests.support.flaky_proxy import reply_dropping_proxy


def make_limits(redis: Redis, *, per_user: int = 30, per_ip: int = 1000) -> ChatLimits:
    keys = Keys(f"t{uuid.uuid4().hex[:10]}")
    return ChatLimits(redis, keys, per_user=per_user, per_ip=per_ip, open_streams=5, lapse_s=5)


async def check_start(limits: ChatLimits, user: str, ip: str, request_id: str) -> None:
    """The start checks as the chat service runs them; raises the refusal."""
    async with limits.redis.pipeline(transaction=False) as pipe:
        limits.queue_start(pipe, user, ip, request_id)
        replies = await execute(limits.redis, pipe, [ADMIT_START, ADMIT_START])
    admission = limits.start_admission(replies, user, ip, request_id)
    if admission.refusal is not None:
        await limits.take_back(admission.taken)
        raise admission.refusal


async def accepted(limits: ChatLimits, starts: int, *, user: str = "u", ip: str = "ip") -> int:
    refusals: list[ApiError] = []
    for _ in range(starts):
        try:
            await check_start(limits, user, ip, uuid.uuid4().hex)
        except ApiError as error:
            refusals.append(error)
    assert all(e.status == 429 and int((e.headers or {})["Retry-After"]) >= 1 for e in refusals)
    return starts - len(refusals)


async def test_a_flood_across_a_minute_boundary_gets_the_limit_once(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old fixed window let 30 starts at hh:mm:59.9 and 30 more at hh:mm+1:00.1 through."""
    limits = make_limits(redis)
    minute = 1_800_000_000 * 60
    clock = itertools.chain([minute - 0.1] * 30, itertools.repeat(minute + 0.1))
    monkeypatch.setattr(time, "time", lambda: next(clock))
    assert await accepted(limits, 60) == 30


async def test_the_limit_is_per_user_and_per_ip(redis: Redis) -> None:
    limits = make_limits(redis, per_user=3, per_ip=5)
    assert await accepted(limits, 4, user="a") == 3
    assert await accepted(limits, 4, user="b") == 2  # the address has 5 in all
    assert await accepted(limits, 1, user="c", ip="other") == 1


async def test_a_refused_start_does_not_use_up_the_other_limit(redis: Redis) -> None:
    limits = make_limits(redis, per_user=2, per_ip=3)
    assert await accepted(limits, 3, user="a") == 2  # the third is refused by the user limit
    assert await accepted(limits, 2, user="b") == 1  # it did not count against the address


async def test_a_check_sent_again_counts_once(redis: Redis) -> None:
    limits = make_limits(redis, per_user=2)
    for _ in range(5):
        await check_start(limits, "u", "ip", "same-call")
    assert await accepted(limits, 2) == 1


@pytest.mark.single_node(reason="a proxy in front of the one Redis")
async def test_a_refused_start_sent_again_after_a_lost_reply_gives_its_slot_back(
    redis_server_url: str, redis: Redis
) -> None:
    """The retried check found its own member and answered "counted before": not taken, so a
    start refused by the address limit held a slot of the user's for a minute."""
    limits = make_limits(redis, per_user=2, per_ip=1)
    await load_all(redis, [ADMIT_START])  # the call sent again is the script's, not a NOSCRIPT's
    await redis.zadd(limits.keys.rate_limit("ip", "ip"), {"someone-else": time.time() * 1000})
    async with reply_dropping_proxy(redis_server_url) as proxy:
        client = create_redis(proxy.url)
        proxy.drop_next_reply(b"call-lost-reply")
        async with client.pipeline(transaction=False) as pipe:
            limits.queue_start(pipe, "u", "ip", "call-lost-reply")
            replies = await execute(client, pipe, [ADMIT_START, ADMIT_START])
        await client.aclose()
    assert proxy.dropped == 1
    admission = limits.start_admission(replies, "u", "ip", "call-lost-reply")
    assert admission.refusal is not None
    assert admission.refusal.details == {"scope": "ip"}
    await limits.take_back(admission.taken)
    assert await redis.zcard(limits.keys.rate_limit("user", "u")) == 0


async def test_retry_after_says_when_a_slot_frees(redis: Redis) -> None:
    limits = make_limits(redis, per_user=1)
    await check_start(limits, "u", "ip", "first")
    with pytest.raises(ApiError) as refused:
        await check_start(limits, "u", "ip", "second")
    assert 59 <= int(refused.value.headers["Retry-After"]) <= 60


async def test_a_users_open_streams_expire_with_their_last_member(redis: Redis) -> None:
    limits = make_limits(redis)  # members lapse 5 s after their last refresh
    async with redis.pipeline(transaction=False) as pipe:
        limits.queue_open_stream(pipe, "u", "stream-1")
        assert limits.open_stream_refusal((await execute(redis, pipe, [OPEN_STREAMS]))[0]) is None
    await limits.refresh({"u": ["stream-1"]})
    key = limits.keys.open_streams("u")
    (_, lapses_at), ttl_ms = (
        (await redis.zrange(key, 0, -1, withscores=True))[0],
        await redis.pttl(key),
    )
    assert 4000 < ttl_ms <= 5000
    assert lapses_at >= await redis.pexpiretime(key)  # the key lives no longer than its member


async def open_stream(limits: ChatLimits, stream_key: str) -> ApiError | None:
    async with limits.redis.pipeline(transaction=False) as pipe:
        limits.queue_open_stream(pipe, "u", stream_key)
        return limits.open_stream_refusal((await execute(limits.redis, pipe, [OPEN_STREAMS]))[0])


async def test_an_open_stream_admitted_again_is_still_admitted(redis: Redis) -> None:
    """A call retried after a lost reply: it counted its own stream against the cap (a 429 for
    a stream that was admitted, whose slot stayed taken until it lapsed)."""
    limits = make_limits(redis)  # 5 open streams per user
    assert [await open_stream(limits, f"s{n}") for n in range(5)] == [None] * 5
    assert await open_stream(limits, "s4") is None
    assert await open_stream(limits, "s5") is not None
    assert await redis.zcard(limits.keys.open_streams("u")) == 5


async def test_a_shorter_lapse_does_not_expire_a_longer_ones_member(redis: Redis) -> None:
    """Gateways with different windows (a rolling deploy): the set lives as its latest member."""
    short = make_limits(redis)  # 5 s
    long = ChatLimits(redis, short.keys, per_user=30, per_ip=1000, open_streams=5, lapse_s=60)
    async with redis.pipeline(transaction=False) as pipe:
        long.queue_open_stream(pipe, "u", "stream-long")
        short.queue_open_stream(pipe, "u", "stream-short")
        await execute(redis, pipe, [OPEN_STREAMS, OPEN_STREAMS])
    assert await redis.pttl(short.keys.open_streams("u")) > 55_000
