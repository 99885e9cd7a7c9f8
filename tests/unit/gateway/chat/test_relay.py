"""The multiplexed relay against a real Redis."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from echotune.common.keys import Keys
from echotune.gateway.chat.relay import Entry, StreamRelay, Subscription


async def client_ids(redis: Redis) -> set[str]:
    return {str(c["id"]) for c in await redis.client_list()}


async def relay_blocked(redis: Redis, others: set[str]) -> None:
    """Wait until a client of this Redis, not one of ``others`` (there before the relay), is
    blocked in XREAD: the relay's read is in flight."""

    async def blocked() -> bool:
        clients = await redis.client_list()
        return any(
            c.get("cmd") == "xread" and "b" in c.get("flags", "") and str(c["id"]) not in others
            for c in clients
        )

    async with asyncio.timeout(5):
        while not await blocked():  # noqa: ASYNC110 - Redis pushes no signal to wait on
            await asyncio.sleep(0.01)


async def take(sub: Subscription, n: int) -> list[Entry]:
    async with asyncio.timeout(10):
        return [await sub.queue.get() for _ in range(n)]


@pytest.mark.single_node(reason="watches the one blocked XREAD; test_cluster_reads.py on a cluster")
async def test_a_reader_joining_behind_another_gets_every_entry(
    redis_server_url: str, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read made from the first reader's position was handed to a second reader that had
    joined meanwhile at an earlier position: what lay in between was never delivered."""
    keys, rid = Keys(f"t{uuid.uuid4().hex[:8]}"), f"r-{uuid.uuid4().hex}"
    key = keys.events(rid)
    ids = [await redis.xadd(key, {"type": "delta", "data": str(n)}) for n in range(5)]
    relay = StreamRelay(redis_server_url, keys, block_ms=5000, batch=100)
    others = await client_ids(redis)
    await relay.start()
    try:
        first = relay.subscribe(rid, ids[-1])
        await redis.xadd(key, {"type": "delta", "data": "5"})
        await take(first, 1)
        await relay_blocked(redis, others)  # reading this stream after entry 5, for `first` only

        async def slow_wake(*_: object) -> None:  # the wake-up of the next subscription comes late
            await asyncio.sleep(0.5)

        monkeypatch.setattr(relay, "_wake", slow_wake)
        second = relay.subscribe(rid, "0-0")
        await redis.xadd(key, {"type": "delta", "data": "6"})
        got = await take(second, 7)
        assert [e.data for e in got] == [str(n) for n in range(7)]
        assert [e.data for e in await take(first, 1)] == ["6"]
    finally:
        monkeypatch.undo()
        await relay.stop()


@pytest.mark.single_node(reason="watches the one blocked XREAD; test_cluster_reads.py on a cluster")
async def test_busy_reads_are_spaced_and_shared_while_an_idle_entry_is_read_at_once(
    redis_server_url: str, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read per few entries, each naming every open stream, cost the gateway and Redis most
    of their relay CPU at 100 streams: entries that come within ``round_s`` share one read."""
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    rids = [f"r-{uuid.uuid4().hex}" for _ in range(3)]
    # A 3 s spacing: an idle entry read within 1.5 s was read at once, on a loaded machine too.
    relay = StreamRelay(redis_server_url, keys, block_ms=5000, batch=100, round_s=3.0, full_at=3)
    replies: list[str] = []
    read = relay._read

    async def recorded(command: bytes) -> object:
        reply = await read(command)
        streams = reply.items() if isinstance(reply, dict) else reply or ()
        replies.append(" ".join(sorted(str(key) for key, _ in streams)))
        return reply

    monkeypatch.setattr(relay, "_read", recorded)
    others = await client_ids(redis)
    await relay.start()
    try:
        subs = [relay.subscribe(rid, "0-0") for rid in rids]
        await asyncio.gather(*relay._waking)  # the read blocked next began after the wake-up
        await relay_blocked(redis, others)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await redis.xadd(keys.events(rids[0]), {"type": "delta", "data": "idle"})
        await take(subs[0], 1)
        assert loop.time() - began < 1.5, "idle: read as it came"
        for rid in rids[1:]:  # each a little later, both within the spacing
            await redis.xadd(keys.events(rid), {"type": "delta", "data": "busy"})
            await asyncio.sleep(0.02)
        for sub in subs[1:]:
            await take(sub, 1)
        both = " ".join(sorted(keys.events(rid) for rid in rids[1:]))
        assert replies[-1] == both, replies
    finally:
        monkeypatch.undo()
        await relay.stop()


def test_reads_are_spaced_in_proportion_to_the_open_streams_up_to_round_s() -> None:
    """Full spacing at 10 streams cost those streams' readers latency for little CPU: an
    ``XREAD`` naming few streams is cheap."""
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    relay = StreamRelay("redis://127.0.0.1:1", keys, block_ms=5000, batch=100, round_s=0.005)
    spacing = {}  # never started: nothing connects
    for n in (1, 10, 100, 500):
        relay._subs = {f"s{i}": set() for i in range(n)}
        spacing[n] = relay._spacing()
    assert spacing == pytest.approx({1: 0.00005, 10: 0.0005, 100: 0.005, 500: 0.005})


async def wake_ups(redis: Redis, relay: StreamRelay) -> int:
    """The wake-ups written to the relay's wake-up stream so far."""
    key = relay._wakeup_key
    return int((await redis.xinfo_stream(key))["entries-added"]) if await redis.exists(key) else 0


@pytest.mark.single_node(
    reason="counts the one relay's wake-ups; test_cluster_reads.py on a cluster"
)
async def test_a_new_answer_wakes_an_idle_read_but_not_one_that_begins_anyway(
    redis_server_url: str, redis: Redis
) -> None:
    """Every new answer woke the read (a round trip, and a read naming every open stream), at
    100 streams too, where a read begins every few ms anyway."""
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    relay = StreamRelay(redis_server_url, keys, block_ms=5000, batch=100, round_s=0.005, full_at=1)
    others = await client_ids(redis)
    await relay.start()
    feeding: asyncio.Task[None] | None = None
    try:
        await relay_blocked(redis, others)  # idle: the read blocks, naming no answer yet
        idle = relay.subscribe("idle", "0-0", new=True)
        await redis.xadd(keys.events("idle"), {"type": "delta", "data": "x"})
        async with asyncio.timeout(2):  # not the 5 s block: the idle read was woken
            await idle.queue.get()
        await asyncio.gather(*relay._waking)
        await relay_blocked(redis, others)
        before = await wake_ups(redis, relay)

        async def busy() -> None:  # entries every ms: reads begin every round_s
            while True:
                await redis.xadd(keys.events("idle"), {"type": "delta", "data": "y"})
                await asyncio.sleep(0.001)

        feeding = asyncio.create_task(busy())
        for n in range(20):
            relay.subscribe(f"new-{n}", "0-0", new=True)
            await asyncio.sleep(0.01)
        await asyncio.gather(*relay._waking)
        assert await wake_ups(redis, relay) - before <= 5  # 20 before; 0 in 10 runs here
    finally:
        if feeding is not None:
            feeding.cancel()
            await asyncio.wait({feeding})
        await relay.stop()


async def test_entries_in_the_streams_layout_and_in_any_other_relay_their_type_and_data(
    redis_server_url: str, redis: Redis
) -> None:
    """The request streams' own layout (``v``, ``type``, ``data``) is read in place, by position:
    any other layout (fields missing, reordered or added) must still come through by name."""
    keys, rid = Keys(f"t{uuid.uuid4().hex[:8]}"), f"r-{uuid.uuid4().hex}"
    key = keys.events(rid)
    layouts: list[dict[str, str]] = [
        {"v": "1", "type": "delta", "data": '{"delta":"a"}'},
        {"v": "1", "data": '{"delta":"b"}', "type": "delta"},
        {"type": "delta", "data": '{"delta":"c"}'},
        {"v": "1", "type": "delta", "data": '{"delta":"d"}', "extra": "x"},
        {"v": "1", "kind": "delta", "data": '{"delta":"e"}'},
        {"type": "done", "v": "1", "data": "{}"},
    ]
    ids = [await redis.xadd(key, fields) for fields in layouts]  # type: ignore[arg-type]
    relay = StreamRelay(redis_server_url, keys, block_ms=5000, batch=100)
    await relay.start()
    try:
        got = await take(relay.subscribe(rid, "0-0"), len(layouts))
    finally:
        await relay.stop()
    expected = [Entry(i, f.get("type", ""), f["data"]) for i, f in zip(ids, layouts, strict=True)]
    assert got == expected
