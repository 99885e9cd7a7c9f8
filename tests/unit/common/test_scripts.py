"""Lua scripts called by SHA: pipelined, reloaded after NOSCRIPT, on a cluster too."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, NoScriptError, ResponseError, SlotNotCoveredError

from deploy.local.servers import RedisClusterServers
from echotune.common import replica_wait, scripts
from echotune.common.redis import create_redis
from echotune.common.scripts import Script, execute


@pytest.fixture
async def cluster_redis(redis_cluster: RedisClusterServers) -> AsyncIterator[Redis]:
    client = create_redis(redis_cluster.url)
    yield client
    await client.aclose()


@pytest.mark.cluster
async def test_scripts_in_a_pipeline_spanning_nodes_are_reloaded_after_noscript(
    cluster_redis: Redis,
) -> None:
    """A cluster pipeline refuses ``pipe.evalsha`` and keeps its commands elsewhere: the scripts
    of a pipeline spanning every node are queued, run, and reloaded after NOSCRIPT anyway."""
    incr = Script(f"-- {uuid.uuid4().hex}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])")
    keys = await _keys_on_every_primary(cast(RedisCluster, cluster_redis), uuid.uuid4().hex)
    for round_ in (1, 2):  # the first round finds no script loaded anywhere
        async with cluster_redis.pipeline(transaction=False) as pipe:
            for key in keys:
                incr.queue(pipe, [key], [1])
            pipe.get(keys[0])
            replies = await execute(cluster_redis, pipe, [incr] * len(keys) + [None])
        assert replies[:-1] == [round_] * len(keys)


async def _keys_on_every_primary(cluster: RedisCluster, tag: str, per_node: int = 4) -> list[str]:
    """``per_node`` keys of distinct slots on each primary. Keys numbered under one random tag
    may share a slot or miss a node: 12 of them fell in 10 slots about once in 1,000 runs."""
    await cluster.initialize()  # the slot map
    by_node: dict[str, list[str]] = {node.name: [] for node in cluster.get_primaries()}
    slots: set[int] = set()
    for n in range(10_000):
        key = f"t:{{{tag}-{n}}}:n"
        keys = by_node.setdefault(cluster.get_node_from_key(key).name, [])
        slot = key_slot(key.encode())
        if slot not in slots and len(keys) < per_node:
            slots.add(slot)
            keys.append(key)
        if all(len(keys) == per_node for keys in by_node.values()):
            return [key for keys in by_node.values() for key in keys]
    raise AssertionError(f"no {per_node} keys on each of {sorted(by_node)}")


async def test_a_script_run_again_after_noscript_gets_its_bytes_arguments_as_sent(
    redis: Redis,
) -> None:
    """A bytes argument was sent again as its Python repr (``"b'...'"``) after NOSCRIPT."""
    length = Script(f"-- {uuid.uuid4().hex}\nreturn string.len(ARGV[1])")  # never loaded
    async with redis.pipeline(transaction=False) as pipe:
        length.queue(pipe, ["t:length"], [b"\xff\x00ab"])
        assert await execute(redis, pipe, [length]) == [4]


def _queue_mixed(pipe: Pipeline, tag: str, script: Script) -> None:
    """Commands whose replies redis-py turns into bools, floats, dicts, tuples or errors."""
    pipe.set(f"t:{tag}:s", "v", px=60_000)
    pipe.get(f"t:{tag}:s")
    pipe.incr(f"t:{tag}:s")  # an error reply: not an integer
    pipe.hset(f"t:{tag}:h", mapping={"a": "1", "b": "é"})
    pipe.hmget(f"t:{tag}:h", ["a", "b", "c"])
    pipe.hgetall(f"t:{tag}:h")
    pipe.exists(f"t:{tag}:h", f"t:{tag}:none")
    pipe.zadd(f"t:{tag}:z", {"m": 1.5, "n": 2})
    pipe.zscore(f"t:{tag}:z", "m")
    pipe.zrange(f"t:{tag}:z", 0, -1, withscores=True)
    pipe.xadd(f"t:{tag}:x", {"type": "delta", "data": "x"}, id="1-1")
    pipe.xrange(f"t:{tag}:x")
    pipe.expire(f"t:{tag}:x", 60)
    pipe.script_exists("0" * 40)  # a command name of two words
    script.queue(pipe, [f"t:{tag}:n"], [2])


def _same(reply: object) -> object:
    return (type(reply), str(reply)) if isinstance(reply, Exception) else reply


@pytest.mark.single_node(
    reason="the hand-packed path is for one Redis; a cluster's goes by redis-py"
)
async def test_a_pipeline_sent_packed_gets_the_replies_redis_py_gives(redis: Redis) -> None:
    """The same commands through redis-py's pipeline and through the hand-packed path."""
    got = {}
    for way in ("redis-py", "packed"):
        tag = uuid.uuid4().hex
        incr = Script(f"-- {tag}\nreturn redis.call('INCRBY', KEYS[1], ARGV[1])")
        async with redis.pipeline(transaction=False) as pipe:
            _queue_mixed(pipe, tag, incr)
            if way == "packed":  # the script is not loaded: NOSCRIPT, then reloaded
                pipe.execute = None  # type: ignore[method-assign,assignment]  # never called
                got[way] = await execute(redis, pipe, [None] * 14 + [incr])
            else:
                await redis.script_load(incr.source)
                got[way] = await pipe.execute(raise_on_error=False)
            assert len(pipe) == 0  # left empty, as redis-py leaves it
    assert [_same(r) for r in got["packed"]] == [_same(r) for r in got["redis-py"]]
    assert got["packed"][-1] == 2
    assert isinstance(got["packed"][2], ResponseError)


@pytest.mark.single_node(
    reason="the hand-packed path is for one Redis; a cluster's goes by redis-py"
)
async def test_a_script_called_alone_is_reloaded_after_noscript_and_raises_its_errors(
    redis: Redis,
) -> None:
    fail = Script(f"-- {uuid.uuid4().hex}\nreturn redis.error_reply('ERR ' .. ARGV[1])")
    echo = Script(f"-- {uuid.uuid4().hex}\nreturn {{ARGV[1], tonumber(ARGV[2])}}")  # never loaded
    assert await echo(redis, ["t:echo"], ["é", 3]) == ["é", 3]
    with pytest.raises(ResponseError, match="no good"):
        await fail(redis, ["t:fail"], ["no good"])


class _Sends:
    """Stands in for the send to a cluster primary: each reply (or error) in turn."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes, self.sent, self.refreshes = list(outcomes), [], 0

    async def send(self, redis: object, key: str, call: bytes, waiting: Any) -> object:
        self.sent.append(call + replica_wait.commands(waiting.replicas, waiting.wait_ms))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def refresh(self, redis: object, key: str, failures: int) -> None:
        self.refreshes += 1


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> Callable[..., _Sends]:
    def install(*outcomes: object) -> _Sends:
        fake = _Sends(*outcomes)
        monkeypatch.setattr(scripts, "_on_primary", fake.send)
        monkeypatch.setattr(scripts, "_refresh", fake.refresh)
        return fake

    return install


LATER = Script("return redis.call('SET', KEYS[1], ARGV[1])")
UNCONNECTED = RedisCluster(host="127.0.0.1", port=1)  # nothing is sent through it here


async def test_a_replicated_call_on_a_cluster_is_sent_again_after_a_failover(
    sends: Callable[..., _Sends],
) -> None:
    fake = sends(RedisConnectionError("gone"), [MovedError("7 127.0.0.1:2"), 0], [b"OK", 1])
    assert await LATER.replicated(UNCONNECTED, ["k"], ["v"], 1, 100, 1000) == (b"OK", 1)
    assert (len(fake.sent), fake.refreshes) == (3, 2)
    wait = b"$4\r\nWAIT\r\n$1\r\n1\r\n$3\r\n100\r\n*1\r\n$4\r\nROLE\r\n"
    assert all(packed.endswith(wait) for packed in fake.sent)


async def test_a_replicated_call_redis_forgot_is_sent_as_eval_without_a_failure(
    sends: Callable[..., _Sends],
) -> None:
    fake = sends([NoScriptError("NOSCRIPT"), 1], [b"OK", 1])
    assert await LATER.replicated(UNCONNECTED, ["k"], ["v"], 1, 100, 1000) == (b"OK", 1)
    assert fake.sent[1].startswith(b"*5\r\n$4\r\nEVAL\r\n")
    assert fake.refreshes == 0


async def test_a_cluster_that_stays_away_is_a_connection_error(
    sends: Callable[..., _Sends],
) -> None:
    """Not the cluster client's own exception, which no caller retries (not a RedisError)."""
    fake = sends(*[SlotNotCoveredError("no slot")] * 5)
    with pytest.raises(RedisConnectionError):
        await LATER.replicated(UNCONNECTED, ["k"], ["v"], 1, 100, 1000)
    assert (len(fake.sent), fake.refreshes) == (5, 4)
