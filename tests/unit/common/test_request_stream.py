"""The per-request protocol against a real Redis."""

from __future__ import annotations

import json
import uuid

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from deploy.local.servers import RedisClusterServers
from echotune.common.keys import Keys
from echotune.common.messages import (
    DeltaEvent,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    FinishReason,
    RetryEvent,
    StartEvent,
    Timings,
    encode_event,
)
from echotune.common.redis import create_redis
from echotune.common.request_stream import (
    FORCE,
    UNTAKEN,
    Appended,
    AppendRefused,
    Attached,
    Batch,
    Final,
    Opened,
    RequestStreams,
    Take,
)
from tests.support.flaky_proxy import reply_dropping_proxy


@pytest.fixture
def streams(redis: Redis) -> RequestStreams:
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    return RequestStreams(redis, keys, request_ttl_s=600, final_ttl_s=90, reader_ttl_ms=30_000)


def start(rid: str) -> StartEvent:
    return StartEvent(request_id=rid, provider="p", model="m")


DONE = DoneEvent(
    finish_reason=FinishReason.STOP, provider="p", model="m", timings=Timings(total_ms=1)
)
NO_WORKER = ErrorEvent(code=ErrorCode.NO_WORKER, message="none")


def delta(text: str) -> tuple[str, str]:
    return "delta", json.dumps({"delta": text})


async def ttls(redis: Redis, streams: RequestStreams, rid: str) -> dict[str, int]:
    k = streams.keys
    names = {"meta": k.meta(rid), "events": k.events(rid), "reader": k.reader(rid)}
    names["cancel"] = k.cancel_flag(rid)
    return {name: await redis.ttl(key) for name, key in names.items()}


async def test_open_claims_writes_start_and_sets_every_ttl_at_once(
    redis: Redis, streams: RequestStreams
) -> None:
    opened = await streams.open("r1-abcdefgh", "fp", "alice", start("r1-abcdefgh"))
    assert opened.state is Opened.STARTED
    entries = await redis.xrange(streams.keys.events("r1-abcdefgh"))
    assert [(i, f["type"]) for i, f in entries] == [(opened.start_id, "start")]
    t = await ttls(redis, streams, "r1-abcdefgh")
    assert 590 <= t["meta"] <= 600
    assert 590 <= t["events"] <= 600
    assert 0 < t["reader"] <= 30


async def test_open_tells_twin_conflict_and_foreign_apart(streams: RequestStreams) -> None:
    await streams.open("r2-abcdefgh", "fp", "alice", start("r2-abcdefgh"))
    twin = await streams.open("r2-abcdefgh", "fp", "alice", start("r2-abcdefgh"))
    assert twin.state is Opened.EXISTS
    assert twin.final_id is None
    other = await streams.open("r2-abcdefgh", "fp2", "alice", start("r2-abcdefgh"))
    assert other.state is Opened.CONFLICT
    foreign = await streams.open("r2-abcdefgh", "fp", "bob", start("r2-abcdefgh"))
    assert foreign.state is Opened.FOREIGN


async def test_the_final_is_written_once_and_shrinks_every_ttl(
    redis: Redis, streams: RequestStreams
) -> None:
    await streams.open("r3-abcdefgh", "fp", "alice", start("r3-abcdefgh"))
    assert (await streams.cancel("r3-abcdefgh", "alice")).state == "cancelling"
    taken = await streams.take("r3-abcdefgh", "w1")
    assert (taken.state, taken.epoch, taken.cancelled) == (Take.TAKEN, 1, True)
    assert await streams.append_final("r3-abcdefgh", taken.fence, 1, DONE) is Final.WRITTEN
    assert await streams.append_final("r3-abcdefgh", taken.fence, 1, DONE) is Final.WRITTEN
    assert await streams.append_final("r3-abcdefgh", taken.fence, 2, DONE) is Final.ENDED
    entries = await redis.xrange(streams.keys.events("r3-abcdefgh"))
    assert [f["type"] for _, f in entries] == ["start", "done"]
    assert all(0 < ttl <= 90 for ttl in (await ttls(redis, streams, "r3-abcdefgh")).values())
    assert (await streams.cancel("r3-abcdefgh", "alice")).state == "finished"
    assert (await streams.take("r3-abcdefgh", "w2")).state is Take.ENDED


async def test_a_stale_producer_cannot_end_the_answer(streams: RequestStreams) -> None:
    await streams.open("r4-abcdefgh", "fp", "alice", start("r4-abcdefgh"))
    stale = await streams.take("r4-abcdefgh", "w1")
    current = await streams.take("r4-abcdefgh", "w2")
    assert await streams.append_final("r4-abcdefgh", stale.fence, 1, DONE) is Final.FENCED
    assert await streams.append_final("r4-abcdefgh", current.fence, 1, DONE) is Final.WRITTEN


async def test_the_gateway_ends_only_a_job_nobody_took(streams: RequestStreams) -> None:
    await streams.open("r5-abcdefgh", "fp", "alice", start("r5-abcdefgh"))
    assert await streams.append_final("r5-abcdefgh", UNTAKEN, 0, NO_WORKER) is Final.WRITTEN
    assert (await streams.take("r5-abcdefgh", "w1")).state is Take.ENDED
    await streams.open("r6-abcdefgh", "fp", "alice", start("r6-abcdefgh"))
    await streams.take("r6-abcdefgh", "w1")
    assert await streams.append_final("r6-abcdefgh", UNTAKEN, 0, NO_WORKER) is Final.TAKEN


async def test_an_error_final_says_partial_exactly_when_text_was_streamed(
    redis: Redis, streams: RequestStreams
) -> None:
    """Errors ending an answer said ``partial=False`` after text was stored (chaos run)."""
    late = ErrorEvent(code=ErrorCode.DEADLINE_EXCEEDED, message="late")
    for rid, text in (("r8-abcdefgh", False), ("r9-abcdefgh", True)):
        await streams.open(rid, "fp", "alice", start(rid))
        taken = await streams.take(rid, "w1")
        entry = encode_event(
            DeltaEvent(delta="half")
            if text
            else RetryEvent(provider="p", attempt=1, delay_ms=1, reason="busy")
        )
        await streams.append_many([Batch(rid, taken.fence, 1, [(entry["type"], entry["data"])])])
        assert await streams.append_final(rid, FORCE, 0, late) is Final.WRITTEN
        assert await streams.append_final(rid, FORCE, 0, late) is Final.WRITTEN  # a retry
        entries = await redis.xrange(streams.keys.events(rid))
        assert [f["type"] for _, f in entries][-2:] == [entry["type"], "error"]
        assert json.loads(entries[-1][1]["data"])["partial"] is text


@pytest.mark.cluster
async def test_one_append_call_answers_each_request_for_itself(
    redis: Redis, streams: RequestStreams
) -> None:
    """Batches of many requests go out together; each is applied or refused on its own."""
    names = ("ok", "fenced", "ended", "gone", "ok2")
    rids = {name: f"{name}-{uuid.uuid4().hex[:8]}" for name in names}
    fence = {name: "never taken" for name in names}
    for name, rid in rids.items():
        if name != "gone":
            await streams.open(rid, "fp", "u", start(rid))
            fence[name] = (await streams.take(rid, "w")).fence
    await streams.take(rids["fenced"], "w2")  # the first take's producer is fenced off
    assert await streams.append_final(rids["ended"], fence["ended"], 1, DONE) is Final.WRITTEN
    await streams.cancel(rids["ok"], "u")
    text = [("delta", '{"delta":"a"}'), ("delta", '{"delta":"b"}')]
    batches = [Batch(rid, fence[name], 1, text) for name, rid in rids.items()]
    more = [("retry", "{}"), *text, ("delta", '{"delta":"z"}')]
    batches[-1] = Batch(rids["ok2"], fence["ok2"], 1, more)
    retried = Batch(rids["ok"], fence["ok"], 2, [*text[1:], ("delta", '{"delta":"c"}')])

    first = await streams.append_many(batches)
    again = await streams.append_many([retried, batches[1]])

    refusals = [r.refused if isinstance(r, Appended) else r for r in first]
    assert refusals == [None, AppendRefused.FENCED, AppendRefused.ENDED, AppendRefused.GONE, None]
    cancelled = [r.cancelled for r in first if isinstance(r, Appended)]
    assert cancelled == [True, False, False, False, False]
    assert [r.refused for r in again if isinstance(r, Appended)] == [None, AppendRefused.FENCED]
    for name, deltas, seq in (("ok", ["a", "b", "c"], "3"), ("ok2", ["a", "b", "z"], "4")):
        entries = await redis.xrange(streams.keys.events(rids[name]))
        got = [json.loads(f["data"])["delta"] for _, f in entries if f["type"] == "delta"]
        assert got == deltas
        assert await redis.hmget(streams.keys.meta(rids[name]), ["seq", "streamed"]) == [seq, "1"]
    assert await redis.xlen(streams.keys.events(rids["fenced"])) == 1  # its start only


@pytest.mark.cluster
async def test_a_request_the_append_script_fails_on_fails_alone(
    redis: Redis, streams: RequestStreams
) -> None:
    rids = [f"r-{n}-{uuid.uuid4().hex[:8]}" for n in range(3)]
    fences = []
    for rid in rids:
        await streams.open(rid, "fp", "u", start(rid))
        fences.append((await streams.take(rid, "w")).fence)
    await redis.hset(streams.keys.meta(rids[1]), "seq", "garbled")  # the script errs on it
    text = [("delta", '{"delta":"a"}')]

    batches = [Batch(rid, fence, 1, text) for rid, fence in zip(rids, fences, strict=True)]
    results = await streams.append_many(batches)

    assert isinstance(results[1], Exception)
    assert [r.refused for r in (results[0], results[2]) if isinstance(r, Appended)] == [None] * 2
    for rid in (rids[0], rids[2]):
        assert await redis.xlen(streams.keys.events(rid)) == 2  # start + "a", once


async def test_cancel_and_attach_know_only_the_owner(streams: RequestStreams) -> None:
    opened = await streams.open("r7-abcdefgh", "fp", "alice", start("r7-abcdefgh"))
    assert (await streams.cancel("r7-abcdefgh", "bob")).state == "unknown"
    assert await streams.attach("r7-abcdefgh", "bob") is None
    attached = Attached(opened.start_id, None, "p", "m", newest_id=opened.start_id)
    assert await streams.attach("r7-abcdefgh", "alice") == attached
    assert await streams.attach("never-seen-1", "alice") is None


@pytest.mark.single_node(reason="a proxy in front of the one Redis")
async def test_an_open_whose_reply_was_lost_is_still_started(
    redis_server_url: str, streams: RequestStreams
) -> None:
    """The retried open found the request and answered "exists": the job was never queued."""
    await streams.load_scripts()  # so that the dropped call is the one Redis applies
    async with reply_dropping_proxy(redis_server_url) as proxy:
        client = create_redis(proxy.url)
        via_proxy = RequestStreams(
            client, streams.keys, request_ttl_s=600, final_ttl_s=90, reader_ttl_ms=30_000
        )
        proxy.drop_next_reply(b"r8-abcdefgh")
        job = (streams.keys.jobs, ["__data__", b"the job"])
        opened = await via_proxy.open("r8-abcdefgh", "fp", "alice", start("r8-abcdefgh"), job)
        await client.aclose()
    assert proxy.dropped == 1
    assert opened.state is Opened.STARTED
    assert opened.start_id
    assert opened.job_queued
    assert await streams.redis.xlen(streams.keys.jobs) == 1  # queued once, not per call


async def test_a_duplicate_is_told_the_entry_of_the_take_that_has_the_job_only(
    streams: RequestStreams,
) -> None:
    """A take by an older worker records no entry: the one an earlier take recorded is stale."""
    rid = "r8-abcdefgh"
    await streams.open(rid, "fp", "alice", start(rid))
    await streams.take(rid, "w1", first=True, entry="1-1")
    older = {"owner": "w2", "taker": "nonce-of-w2"}  # what an older TAKE writes
    await streams.redis.hset(streams.keys.meta(rid), mapping=older)
    await streams.redis.hincrby(streams.keys.meta(rid), "epoch", 1)
    duplicate = await streams.take(rid, "w3", first=True, entry="1-1")
    told = (duplicate.owner, duplicate.entry, duplicate.fence, duplicate.epoch)
    assert told == ("w2", "", "nonce-of-w2", 2)
    assert await streams.current_take(rid) == ("nonce-of-w2", "", 2)


@pytest.mark.single_node(reason="a proxy in front of the one Redis")
async def test_a_first_take_whose_reply_was_lost_is_still_taken(
    redis_server_url: str, streams: RequestStreams
) -> None:
    """The retried take must not call the job a duplicate: it would be acknowledged unrun."""
    rid = "r9-abcdefgh"
    await streams.load_scripts()  # so that the dropped call is the one Redis applies
    await streams.open(rid, "fp", "alice", start(rid))
    async with reply_dropping_proxy(redis_server_url) as proxy:
        client = create_redis(proxy.url)
        worker = RequestStreams(
            client, streams.keys, request_ttl_s=600, final_ttl_s=90, reader_ttl_ms=30_000
        )
        proxy.drop_next_reply(rid.encode())
        taken = await worker.take(rid, "w1", first=True, entry="1-1")
        await client.aclose()
    assert proxy.dropped == 1
    assert taken.state is Take.TAKEN
    assert taken.epoch == 1  # taken once, not once per call
    duplicate = await streams.take(rid, "w2", first=True, entry="1-1")
    assert (duplicate.state, duplicate.owner, duplicate.entry) == (Take.DUPLICATE, "w1", "1-1")


@pytest.mark.single_node(reason="the jobs stream and a request's keys share no cluster slot")
async def test_a_job_is_queued_with_the_start_of_its_answer_only(
    streams: RequestStreams,
) -> None:
    """Queued in the open script: a twin or a foreign request's open queues nothing."""
    jobs = streams.keys.jobs
    job = (jobs, ["__data__", b"job of r9"])
    first = await streams.open("r9-abcdefgh", "fp", "alice", start("r9-abcdefgh"), job)
    twin = await streams.open("r9-abcdefgh", "fp", "alice", start("r9-abcdefgh"), job)
    foreign = await streams.open("r9-abcdefgh", "fp", "bob", start("r9-abcdefgh"), job)
    assert (first.state, first.job_queued) == (Opened.STARTED, True)
    assert (twin.state, twin.job_queued, foreign.state) == (Opened.EXISTS, False, Opened.FOREIGN)
    [(_, fields)] = await streams.redis.xrange(jobs)
    assert fields == {"__data__": "job of r9"}


@pytest.mark.single_node(reason="the jobs stream and a request's keys share no cluster slot")
async def test_a_job_that_cannot_be_queued_leaves_no_started_request(
    streams: RequestStreams,
) -> None:
    """The job was the script's last write, and a script's error undoes nothing: the request
    stayed started, with no job for any worker to take."""
    await streams.redis.set(streams.keys.jobs, "not a stream")
    job = (streams.keys.jobs, ["__data__", b"job of r11"])
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await streams.open("r11-abcdefg", "fp", "alice", start("r11-abcdefg"), job)
    k = streams.keys
    names = [k.meta("r11-abcdefg"), k.events("r11-abcdefg"), k.reader("r11-abcdefg")]
    assert await streams.redis.exists(*names) == 0


@pytest.mark.cluster
async def test_a_cluster_leaves_the_job_to_its_caller(redis_cluster: RedisClusterServers) -> None:
    cluster_redis = create_redis(redis_cluster.url)
    keys = Keys(f"t{uuid.uuid4().hex[:8]}")
    streams = RequestStreams(cluster_redis, keys, request_ttl_s=60, final_ttl_s=60, reader_ttl_ms=1)
    try:
        opened = await streams.open("r10-abcdefg", "fp", "u", start("r10-abcdefg"), (keys.jobs, []))
        assert (opened.state, opened.job_queued) == (Opened.STARTED, False)
        assert await cluster_redis.exists(keys.jobs) == 0
    finally:
        await cluster_redis.aclose()


@pytest.mark.cluster
async def test_appends_of_many_requests_in_one_pipeline_on_a_cluster(
    redis_cluster: RedisClusterServers,
) -> None:
    """The worker's flusher appends to requests in every slot with one pipelined call."""
    namespace = f"t{uuid.uuid4().hex[:8]}"
    cluster_redis = create_redis(redis_cluster.url)
    streams = RequestStreams(
        cluster_redis, Keys(namespace), request_ttl_s=60, final_ttl_s=60, reader_ttl_ms=5000
    )
    await streams.load_scripts()
    rids = [f"r-{n}-{uuid.uuid4().hex[:6]}" for n in range(10)]
    start = StartEvent(request_id="x", provider="demo", model="m")
    batches = []
    for rid in rids:
        await streams.open(rid, "fp", "u", start)
        taken = await streams.take(rid, "w")
        assert taken.epoch == 1
        batches.append(Batch(rid, taken.fence, 1, [("delta", '{"delta": "a"}'), ("delta", "{}")]))
    results = await streams.append_many(batches)
    assert [r for r in results if isinstance(r, Exception) or r.refused] == [], results
    for rid in rids:
        assert await cluster_redis.xlen(Keys(namespace).events(rid)) == 3
    await cluster_redis.aclose()


async def test_a_producer_whose_take_redis_lost_is_fenced_off_by_the_next_take(
    redis: Redis, streams: RequestStreams
) -> None:
    """Redis lost its last writes (a restart, a failover), A's take among them: the entry was
    delivered again and W took the job, epoch 0 to 1 again. A, on epoch 1 too, was not fenced
    off, and W's entries of the same numbers were skipped as retries of A's."""
    rid = f"r-{uuid.uuid4().hex[:8]}"
    await streams.open(rid, "fp", "u", start(rid))
    meta = streams.keys.meta(rid)
    before = await redis.hgetall(meta)
    a = await streams.take(rid, "worker-a", first=True)
    await redis.delete(meta)  # the take is lost
    await redis.hset(meta, mapping=before)
    w = await streams.take(rid, "worker-w", first=True)
    assert (a.epoch, w.epoch) == (1, 1)

    [from_a] = await streams.append_many([Batch(rid, a.fence, 1, [delta("A's")])])
    [from_w] = await streams.append_many([Batch(rid, w.fence, 1, [delta("W's")])])
    assert await streams.append_final(rid, a.fence, 2, DONE) is Final.FENCED
    assert await streams.append_final(rid, w.fence, 2, DONE) is Final.WRITTEN

    assert (from_a.refused, from_w.refused) == (AppendRefused.FENCED, None)
    entries = await redis.xrange(streams.keys.events(rid))
    assert [json.loads(f["data"]).get("delta") for _, f in entries[1:]] == ["W's", None]


async def test_a_producers_first_entry_names_its_take_when_no_text_is_stored_before_it(
    redis: Redis, streams: RequestStreams
) -> None:
    """Written once however often its append is retried: a relay that sent text before it
    tells from it that Redis lost that text. After stored text (a takeover ended at once, a
    cancel) the entry says nothing: the text stands."""
    rid, empty = "r9-abcdefgh", "r10-abcdefgh"
    for request in (rid, empty):
        await streams.open(request, "fp", "alice", start(request))
    first = (await streams.take(rid, "w1")).fence
    await streams.append_many([Batch(rid, first, 1, [delta("a"), delta("b")])])
    await streams.append_many([Batch(rid, first, 1, [delta("a"), delta("b"), delta("c")])])
    second = (await streams.take(rid, "w2")).fence
    assert await streams.append_final(rid, second, 1, DONE) is Final.WRITTEN
    alone = (await streams.take(empty, "w3")).fence
    assert await streams.append_final(empty, alone, 1, DONE) is Final.WRITTEN
    entries = await redis.xrange(streams.keys.events(rid))
    assert [(f["type"], f.get("take")) for _, f in entries] == [
        ("start", None),
        ("delta", first),
        ("delta", None),
        ("delta", None),
        ("done", None),
    ]
    final = (await redis.xrange(streams.keys.events(empty)))[-1][1]
    assert (final["type"], final.get("take")) == ("done", alone)
