"""The chat service in-process: claim, start, attach and cancel against a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import pytest
from fastapi import FastAPI
from redis.asyncio.connection import AbstractConnection, Connection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from deploy.local.gateway_app import running_gateway
from echotune.common import job_queue
from echotune.common.messages import (
    ChatEvent,
    DeltaEvent,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    FailoverEvent,
    FinishReason,
    Timings,
    encode_event,
)
from echotune.common.redis import timed_sends
from echotune.common.request_stream import UNTAKEN, Batch, Final, Take
from echotune.gateway.chat.relay import Entry
from echotune.gateway.chat.service import ChatInput, ChatService, OpenStream
from echotune.web.errors import ApiError
from tests.support.streams import wait_for_final


@contextlib.contextmanager
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """``caplog`` hears the root logger again (an app built in the test set its handlers)."""
    root = logging.getLogger()
    root.addHandler(caplog.handler)
    try:
        yield
    finally:
        root.removeHandler(caplog.handler)


def chat_input(request_id: str, message: str | None = "hi", user: str = "anonymous") -> ChatInput:
    return ChatInput(request_id=request_id, user_id=user, message=message, client_ip="127.0.0.1")


async def test_a_twin_arriving_while_the_first_start_is_half_done_attaches(
    gateway: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Claim and start were separate round trips: a twin arriving in between got 404."""
    service: ChatService = gateway.state.chat
    between = asyncio.Event()
    resume = asyncio.Event()
    slowed = service.redis.expire

    async def slow_expire(*args: object, **kwargs: object) -> object:
        between.set()  # the first start has claimed the id and not written its start yet
        await asyncio.wait_for(resume.wait(), 5)
        return await slowed(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(service.redis, "expire", slow_expire)
    first = asyncio.create_task(service.open(chat_input("twin-0000001"), None))
    halfway = asyncio.create_task(between.wait())
    await asyncio.wait({first, halfway}, return_when=asyncio.FIRST_COMPLETED)
    try:
        twin = await service.open(chat_input("twin-0000001"), None)
    finally:
        resume.set()
    assert twin is not None
    assert (await first) is not None


async def test_an_answer_its_twin_started_stays_counted(
    gateway: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twins counted one member, the request id: the twin that lost the start race took back
    the count of the answer that did start, so twins started answers no limit counted."""
    service: ChatService = gateway.state.chat
    looked_up = service._checks
    twins: list[OpenStream] = []

    async def twin_wins(chat: ChatInput, stream_key: str) -> Any:
        checks = await looked_up(chat, stream_key)  # this call counted its start ...
        monkeypatch.setattr(service, "_checks", looked_up)
        twin = await service.open(chat_input(chat.request_id), None)  # ... the twin started
        assert twin is not None
        assert twin.first_frame
        twins.append(twin)
        return checks

    monkeypatch.setattr(service, "_checks", twin_wins)
    stream = await service.open(chat_input("race-0000002"), None)  # "exists": it attaches
    assert stream is not None
    assert not stream.first_frame
    await asyncio.gather(*service._background)  # the take-backs
    for scope, who in (("user", "anonymous"), ("ip", "127.0.0.1")):
        counted = await service.redis.zrange(service.keys.rate_limit(scope, who), 0, -1)
        assert counted == [twins[0].stream_key], scope  # the twin's start, once
    service.release(stream)
    service.release(twins[0])


async def test_a_start_whose_checks_failed_leaves_nothing_counted(gateway: FastAPI) -> None:
    """A reply in error after the checks had counted the start: its count stayed a minute."""
    service: ChatService = gateway.state.chat
    rid = "checks-failed-1"
    await service.redis.set(service.keys.meta(rid), "x")  # the lookup's reply is an error
    for _ in range(3):  # the page sends the same request again
        with pytest.raises(ResponseError):
            await service.open(chat_input(rid), None)
    await asyncio.gather(*service._background)  # the take-backs
    for scope, who in (("user", "anonymous"), ("ip", "127.0.0.1")):
        assert await service.redis.zcard(service.keys.rate_limit(scope, who)) == 0, scope
    assert await service.redis.zcard(service.keys.open_streams("anonymous")) == 0


async def test_a_reconnect_to_an_answer_that_lapsed_does_not_start_it_again(
    gateway: FastAPI,
) -> None:
    """An EventSource reconnects to its first URL (message included) with Last-Event-ID: once
    the answer's keys had lapsed, a whole new answer started under the same request id, and
    the page appended it to the part it had."""
    service: ChatService = gateway.state.chat
    first = await service.open(chat_input("lapsed-000001"), None)
    assert first is not None
    assert first.first_frame
    service.release(first)
    keys, rid = service.keys, "lapsed-000001"
    await service.redis.delete(keys.events(rid), keys.meta(rid), keys.reader(rid))  # lapsed
    with pytest.raises(ApiError) as gone:
        await service.open(chat_input(rid), "1700000000000-3")
    assert (gone.value.status, gone.value.code) == (404, "unknown_request")
    await asyncio.gather(*service._background)  # the take-backs
    counted = await service.redis.zrange(keys.rate_limit("user", "anonymous"), 0, -1)
    assert counted == [first.stream_key], "the refused reconnect is not counted"


@contextlib.contextmanager
def round_trips() -> Iterator[list[int]]:
    """Count the Redis requests sent by the current task (a pipeline is one request)."""
    counted: list[int] = [0]
    me = asyncio.current_task()
    # the broker's connections send as redis-py does; the clients' as common.redis does
    senders = {
        cls: cls.send_packed_command for cls in (AbstractConnection, timed_sends(Connection))
    }

    def counting(cls: type[AbstractConnection]) -> Any:
        async def send(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
            if asyncio.current_task() is me:
                counted[0] += 1
            await senders[cls](self, *args, **kwargs)

        return send

    with pytest.MonkeyPatch.context() as patch:
        for cls in senders:
            patch.setattr(cls, "send_packed_command", counting(cls))
        yield counted


@pytest.mark.single_node(reason="a proxy in front of the one Redis")
async def test_a_new_start_costs_two_round_trips(gateway: FastAPI) -> None:
    """Checks, then the open script, which queues the job too (it was a third round trip)."""
    service: ChatService = gateway.state.chat
    await service.open(chat_input("warm-up-0001"), None)  # connections and scripts ready
    with round_trips() as counted:
        stream = await service.open(chat_input("counted-0001"), None)
    assert stream is not None
    print(f"round trips of a new start: {counted[0]}")
    assert counted[0] == 2


async def final_of(service: ChatService, request_id: str) -> dict[str, Any]:
    return await wait_for_final(service.redis, service.settings.namespace, request_id, timeout=5)


async def test_a_cancel_of_a_job_no_worker_holds_ends_it_at_once(
    gateway: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """It ended only when a worker took the job, seconds later (no worker runs here). Its log
    line names the answer: it carries the cancel call's own request id (new-user review)."""
    service: ChatService = gateway.state.chat
    assert await service.open(chat_input("queued-0001"), None) is not None
    with caplog.at_level(logging.INFO, logger="echotune.gateway.chat.service"):
        assert await service.cancel("queued-0001", "anonymous") == "cancelling"
    assert "cancel of queued-0001 requested: cancelling" in caplog.messages
    final = await final_of(service, "queued-0001")
    assert (final["type"], final["finish_reason"]) == ("done", "cancelled")
    assert (await service.streams.take("queued-0001", "late-worker")).state.value == "ended"


async def test_a_cancel_whose_worker_is_gone_ends_after_the_grace(gateway: FastAPI) -> None:
    """A dead worker's job was cancelled only once another worker reclaimed it."""
    service: ChatService = gateway.state.chat
    assert await service.open(chat_input("orphan-0001"), None) is not None
    taken = await service.streams.take("orphan-0001", "worker-that-dies")
    began = asyncio.get_running_loop().time()
    await service.cancel("orphan-0001", "anonymous")
    final = await final_of(service, "orphan-0001")
    waited = asyncio.get_running_loop().time() - began
    assert (final["type"], final["finish_reason"]) == ("done", "cancelled")
    assert service.settings.cancel_grace_s <= waited < 3
    late = DoneEvent(
        finish_reason=FinishReason.STOP, provider="p", model="m", timings=Timings(total_ms=1)
    )
    refused = await service.streams.append_final("orphan-0001", taken.fence, 9, late)
    assert refused.value == "ended"


@pytest.mark.parametrize("bad", ["99999999999999999999-0", "\u0661-\u0660"])
async def test_a_last_event_id_redis_would_refuse_is_a_422_not_a_stalled_relay(
    gateway: FastAPI, bad: str
) -> None:
    """Redis refused the whole multiplexed read: every stream of the process stalled."""
    service: ChatService = gateway.state.chat
    assert await service.open(chat_input("badid-0001"), None) is not None
    with pytest.raises(ApiError) as refused:
        await service.open(chat_input("badid-0001", message=None), bad)
    assert refused.value.status == 422


async def test_a_client_gone_before_the_body_started_leaves_nothing_behind(
    gateway: FastAPI,
) -> None:
    """The body's own cleanup never ran: the subscription and its open-stream slot leaked."""
    service: ChatService = gateway.state.chat
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        await asyncio.sleep(0)  # a real server's send yields: the cancel lands right here
        messages.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/api/chat/stream",
        "raw_path": b"/api/chat/stream",
        "query_string": b"message=hi&request_id=gone-early-0001",
        "headers": [(b"host", b"gateway")],
        "client": ("127.0.0.1", 1),
        "server": ("gateway", 80),
        "root_path": "",
    }
    await gateway(scope, receive, send)
    assert "gone-early-0001" not in service.relay.attached_request_ids()
    assert not service._open_streams


async def test_a_silent_answer_whose_worker_died_with_no_other_alive_ends(
    gateway: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job taken by a worker that then died waited for the full ten minutes."""
    service: ChatService = gateway.state.chat
    monkeypatch.setattr(service.settings, "pickup_timeout_s", 0.2)
    stream = await service.open(chat_input("lonely-0001"), None)
    assert stream is not None
    await service.streams.take("lonely-0001", "worker-that-dies")  # and no worker says alive
    seen = []
    async with asyncio.timeout(5):
        async for entry in service.entries(stream):
            if entry is not None:
                seen.append(entry)
    assert [e.type for e in seen] == ["error"]
    assert '"code":"worker_lost"' in seen[0].data


async def test_a_silent_answer_gets_a_heartbeat_every_heartbeat_s(
    gateway: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check for live workers (every ``pickup_timeout_s``) came before each due heartbeat
    and skipped it: with the defaults (20 s, 10 s) a silent stream got one by chance, gaps
    up to 160 s, and proxies cut it."""
    service: ChatService = gateway.state.chat
    monkeypatch.setattr(service.settings, "heartbeat_s", 0.3)
    monkeypatch.setattr(service.settings, "pickup_timeout_s", 0.1)
    await job_queue.heartbeat(service.redis, service.keys, "a-busy-worker", 60)
    stream = await service.open(chat_input("silent-0001"), None)
    assert stream is not None
    entries, beats = service.entries(stream), []
    async with asyncio.timeout(5):
        while len(beats) < 4:
            assert await anext(entries) is None
            beats.append(time.monotonic())
    await entries.aclose()
    gaps = [later - earlier for earlier, later in itertools.pairwise(beats)]
    assert max(gaps) < 0.6, gaps  # one heartbeat_s, and room for a busy machine


async def stored_half_answer(service: ChatService, request_id: str) -> None:
    """A worker takes the job, stores some text, then goes silent."""
    taken = await service.streams.take(request_id, "a-worker-that-stops-mid-answer")
    delta = encode_event(DeltaEvent(delta="half an answer"))
    [appended] = await service.streams.append_many(
        [Batch(request_id, taken.fence, 1, [(delta["type"], delta["data"])])]
    )
    assert not isinstance(appended, Exception)
    assert appended.refused is None


async def opened_late(service: ChatService, request_id: str, *, text: bool) -> OpenStream:
    """An answer just started; with half its text stored by a worker if ``text``."""
    stream = await service.open(chat_input(request_id), None)
    assert stream is not None
    if text:
        await stored_half_answer(service, request_id)
    return stream


async def late_entries(
    service: ChatService, stream: OpenStream, monkeypatch: pytest.MonkeyPatch
) -> list[Entry]:
    """What the client gets once the answer outlives a short deadline."""
    monkeypatch.setattr(service.settings, "max_stream_s", 0.5)
    monkeypatch.setattr(service.settings, "resume_window_s", 0.1)
    async with asyncio.timeout(5):
        return [e async for e in service.entries(stream) if e is not None]


@pytest.mark.parametrize("text", [False, True], ids=["no text", "text stored"])
async def test_an_answer_past_its_deadline_is_ended_for_everyone(
    gateway: FastAPI, monkeypatch: pytest.MonkeyPatch, text: bool
) -> None:
    """The gateway said `deadline_exceeded` to its client only: the answer itself never
    ended (found by the chaos run, seed 4242). Then it said ``partial=False`` after the
    worker had stored text: a client would take the cut answer for a whole one."""
    service: ChatService = gateway.state.chat
    rid = f"late-000{int(text)}"
    stream = await opened_late(service, rid, text=text)
    if not text:
        await service.streams.take(rid, "a-worker-that-never-answers")
    seen = await late_entries(service, stream, monkeypatch)
    assert [e.type for e in seen] == (["delta", "error"] if text else ["error"])
    assert seen[-1].id, "stored in the answer's stream"
    final = await final_of(service, rid)
    assert (final["code"], final["partial"]) == ("deadline_exceeded", text)


@pytest.mark.parametrize("text", [False, True], ids=["no text", "text sent"])
async def test_a_late_answer_redis_cannot_end_tells_its_client_whether_it_is_partial(
    gateway: FastAPI, monkeypatch: pytest.MonkeyPatch, text: bool
) -> None:
    """Redis refusing the late final left the unstored error saying ``partial=False`` to a
    client that had been sent text."""
    service: ChatService = gateway.state.chat
    stream = await opened_late(service, f"late-001{int(text)}", text=text)

    async def unreachable(*args: object) -> None:
        raise RedisConnectionError("Redis went away")

    monkeypatch.setattr(service.streams, "append_final", unreachable)
    seen = await late_entries(service, stream, monkeypatch)
    assert [e.type for e in seen] == (["delta", "error"] if text else ["error"])
    assert seen[-1].id == "", "not stored"
    assert json.loads(seen[-1].data)["partial"] is text


async def produced(
    service: ChatService, rid: str, worker: str, *events: ChatEvent, first: bool = True
) -> str:
    """``worker`` takes the job (its ``first`` delivery, or a reclaim) and stores ``events``:
    the id of the first."""
    taken = await service.streams.take(rid, worker, first=first)
    assert taken.state is Take.TAKEN
    batch = [(e["type"], e["data"]) for e in map(encode_event, events)]
    [appended] = await service.streams.append_many([Batch(rid, taken.fence, 1, batch)])
    assert not isinstance(appended, Exception)
    assert appended.refused is None
    events_key = service.streams.keys.events(rid)
    return str((await service.redis.xrevrange(events_key, count=len(events)))[-1][0])


async def lost_since_the_start(service: ChatService, rid: str) -> None:
    """A failover lost everything written after the start: the job's take and its text (and,
    elsewhere, the job's delivery, which goes to a worker again as new)."""
    redis, keys = service.redis, service.streams.keys
    start_id, _ = (await redis.xrange(keys.events(rid), count=1))[0]
    for entry_id, _ in await redis.xrange(keys.events(rid), min=f"({start_id}"):
        await redis.xdel(keys.events(rid), entry_id)
    await redis.hset(keys.meta(rid), mapping={"epoch": 0, "seq": 0})
    await redis.hdel(keys.meta(rid), "taker", "owner", "entry", "entry_taker", "streamed")


async def relayed(entries: AsyncIterator[Entry | None], count: int) -> list[Entry]:
    """The next ``count`` entries sent to the client (heartbeats skipped)."""
    seen: list[Entry] = []
    async with asyncio.timeout(5):
        while len(seen) < count:
            if (entry := await anext(entries)) is not None:
                seen.append(entry)
    return seen


async def relaying_after_a_loss(service: ChatService, rid: str) -> AsyncIterator[Entry | None]:
    """A client's entries once it got text that Redis then lost with the take (no trace)."""
    stream = await service.open(chat_input(rid), None)
    assert stream is not None
    entries = service.entries(stream)
    await produced(service, rid, "w-lost", DeltaEvent(delta="lost text"))
    assert [e.type for e in await relayed(entries, 1)] == ["delta"]
    await lost_since_the_start(service, rid)
    return entries


def starting_over(reason: str) -> FailoverEvent:
    """A producer's own restart of the answer."""
    return FailoverEvent(
        from_provider="demo", to_provider="demo", to_model="demo-1", reason=reason,
        discard_partial=True,
    )  # fmt: skip


def discards(entry: Entry) -> bool:
    return entry.type == "failover" and json.loads(entry.data)["discard_partial"] is True


async def test_an_answer_started_over_with_no_trace_of_the_text_sent_is_discarded_first(
    gateway: FastAPI,
) -> None:
    """Redis lost the job's delivery, its take and the text sent to the client: the next
    producer started afresh with no ``discard_partial`` (nothing stored said the answer had
    begun), and the client kept the lost text in front of the new answer."""
    service: ChatService = gateway.state.chat
    entries = await relaying_after_a_loss(service, "afresh-0001")
    await produced(service, "afresh-0001", "w-next", DeltaEvent(delta="the answer"))
    restart, text = await relayed(entries, 2)
    await entries.aclose()  # type: ignore[attr-defined]
    assert discards(restart), restart
    assert json.loads(restart.data)["reason"] == "events_lost"
    assert restart.id == "", "not stored: only this client saw the lost text"
    assert json.loads(text.data)["delta"] == "the answer"


@pytest.mark.parametrize("resumed_after", ["start", "lost text"])
async def test_a_resumed_client_is_told_to_discard_only_text_it_may_hold(
    gateway: FastAPI, resumed_after: str
) -> None:
    """A client resuming after the lost text discards it; one resuming after the start event
    (it had no text) is told nothing."""
    service: ChatService = gateway.state.chat
    rid = f"resumed-{resumed_after.replace(' ', '-')}"
    opened = await service.open(chat_input(rid), None)
    assert opened is not None
    service.release(opened)
    start_id = str((await service.redis.xrange(service.streams.keys.events(rid)))[0][0])
    lost_id = await produced(service, rid, "w-lost", DeltaEvent(delta="lost text"))
    await lost_since_the_start(service, rid)
    after = start_id if resumed_after == "start" else lost_id
    stream = await service.open(chat_input(rid, message=None), after)
    assert stream is not None
    entries = service.entries(stream)
    await produced(service, rid, "w-next", DeltaEvent(delta="the answer"))
    seen = await relayed(entries, 2 if resumed_after == "lost text" else 1)
    await entries.aclose()  # type: ignore[attr-defined]
    assert [discards(e) for e in seen] == (
        [True, False] if resumed_after == "lost text" else [False]
    )
    if resumed_after == "lost text":
        assert json.loads(seen[0].data)["to_provider"] == "demo", "named after the request's"


async def test_a_last_event_id_past_the_newest_event_resumes_after_the_newest(
    gateway: FastAPI,
) -> None:
    """A ``Last-Event-ID`` past every event of a running answer waited for events after it:
    the rest of the answer never came, and the stream ended with ``deadline_exceeded`` after
    eleven minutes, holding one of the user's open-stream slots all along."""
    service: ChatService = gateway.state.chat
    opened = await service.open(chat_input("ahead-0001"), None)
    assert opened is not None
    service.release(opened)
    await produced(service, "ahead-0001", "w-1", DeltaEvent(delta="sent"))
    stream = await service.open(chat_input("ahead-0001", message=None), "99999999999999999-0")
    assert stream is not None
    entries = service.entries(stream)
    await produced(service, "ahead-0001", "w-1", DeltaEvent(delta="the rest"), first=False)
    [rest] = await relayed(entries, 1)
    await entries.aclose()  # type: ignore[attr-defined]
    assert json.loads(rest.data)["delta"] == "the rest"


async def test_a_takeover_that_says_discard_itself_is_not_told_twice(gateway: FastAPI) -> None:
    service: ChatService = gateway.state.chat
    stream = await service.open(chat_input("takeover-0001"), None)
    assert stream is not None
    entries = service.entries(stream)
    await produced(service, "takeover-0001", "w-dies", DeltaEvent(delta="half"))
    restart = starting_over("worker_lost")
    await produced(
        service, "takeover-0001", "w-next", restart, DeltaEvent(delta="whole"), first=False
    )
    seen = await relayed(entries, 3)
    await entries.aclose()  # type: ignore[attr-defined]
    assert [(e.type, bool(e.id)) for e in seen] == [
        ("delta", True),
        ("failover", True),
        ("delta", True),
    ]


async def test_an_answer_taken_over_and_ended_at_once_keeps_its_text(gateway: FastAPI) -> None:
    """A worker that reclaims a cancelled job ends it at once, with no restart: the stored
    text stands, and its client is not told to discard it."""
    service: ChatService = gateway.state.chat
    stream = await service.open(chat_input("kept-0001"), None)
    assert stream is not None
    entries = service.entries(stream)
    await produced(service, "kept-0001", "w-dies", DeltaEvent(delta="half"))
    taken = await service.streams.take("kept-0001", "w-next", first=False)
    cancelled = DoneEvent(
        finish_reason=FinishReason.CANCELLED, provider="p", model="m", timings=Timings(total_ms=1)
    )
    assert (
        await service.streams.append_final("kept-0001", taken.fence, 1, cancelled) is Final.WRITTEN
    )
    seen = await relayed(entries, 2)
    await entries.aclose()  # type: ignore[attr-defined]
    assert [e.type for e in seen] == ["delta", "done"]


async def test_a_gateways_own_end_after_a_loss_with_no_trace_is_discarded_first(
    gateway: FastAPI,
) -> None:
    """No worker took the job again after the loss: the gateway's ``no_worker`` error (partial
    false, right for what is stored) came after the lost text, which its client kept."""
    service: ChatService = gateway.state.chat
    entries = await relaying_after_a_loss(service, "untaken-0001")
    await service._end_untaken("untaken-0001", "no worker took the job")
    seen = await relayed(entries, 2)
    await entries.aclose()  # type: ignore[attr-defined]
    assert [e.type for e in seen] == ["failover", "error"]
    assert discards(seen[0])


def test_a_client_told_to_discard_by_a_stored_restart_holds_no_text() -> None:
    """After a stored discard, a producer's first entry naming its take adds none of its own;
    nor does an entry naming its take that discards itself."""
    stream = OpenStream("held-0001", cast(Any, None), client_text=True)
    data = encode_event(starting_over("events_lost"))["data"]
    assert stream.relayed(Entry("1-1", "failover", data)) is None
    assert not stream.client_text
    assert stream.relayed(Entry("1-2", "delta", '{"delta":"a"}', take="f2")) is None
    assert stream.relayed(Entry("1-3", "failover", data, take="f3")) is None
    assert not stream.client_text
    assert stream.relayed(Entry("1-4", "delta", '{"delta":"b"}')) is None
    assert stream.relayed(Entry("1-5", "delta", '{"delta":"c"}', take="f5")) is not None


async def test_a_reclaim_that_restarts_after_a_loss_with_no_trace_is_not_told_twice(
    gateway: FastAPI,
) -> None:
    """The loss left the job's entry pending: its reclaim restarts with its own discard."""
    service: ChatService = gateway.state.chat
    entries = await relaying_after_a_loss(service, "reclaim-0001")
    restart = starting_over("events_lost")
    await produced(service, "reclaim-0001", "w-next", restart, DeltaEvent(delta="x"), first=False)
    seen = await relayed(entries, 2)
    await entries.aclose()  # type: ignore[attr-defined]
    assert [(e.type, bool(e.id)) for e in seen] == [("failover", True), ("delta", True)]


async def test_a_late_end_after_a_loss_with_no_trace_is_discarded_first(
    gateway: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    service: ChatService = gateway.state.chat
    monkeypatch.setattr(service.settings, "max_stream_s", 1.0)
    monkeypatch.setattr(service.settings, "resume_window_s", 0.1)
    entries = await relaying_after_a_loss(service, "late-0020")
    seen = await relayed(entries, 2)
    await entries.aclose()  # type: ignore[attr-defined]
    assert [e.type for e in seen] == ["failover", "error"]
    assert discards(seen[0])
    assert json.loads(seen[1].data)["code"] == "deadline_exceeded"


@pytest.mark.single_node  # a cluster's primaries have replicas
async def test_a_start_no_replica_held_in_time_goes_on_and_is_counted(
    redis_server_url: str,
) -> None:
    """REDIS_WAIT_REPLICAS reaches the opening: this Redis has no replica, the wait runs out."""
    async with running_gateway(redis_server_url, redis_wait_replicas=1, redis_wait_ms=20) as app:
        service: ChatService = app.state.chat
        began = time.monotonic()
        stream = await service.open(chat_input("unreplicated-1"), None)
        assert stream is not None
        assert stream.first_frame
        assert time.monotonic() - began >= 0.015  # it waited for the replica (Redis: 1 ms ticks)
        assert service.metrics.unreplicated_opens._value.get() == 1
        service.release(stream)


@pytest.mark.single_node  # a cluster's primaries have replicas
async def test_a_final_the_gateway_writes_before_a_replica_holds_it_is_counted(
    redis_server_url: str,
) -> None:
    """Such finals (no worker, cancel grace, deadline, worker lost) were only logged."""
    async with running_gateway(redis_server_url, redis_wait_replicas=1, redis_wait_ms=10) as app:
        service: ChatService = app.state.chat
        stream = await service.open(chat_input("unreplicated-2"), None)
        assert stream is not None
        error = ErrorEvent(code=ErrorCode.NO_WORKER, message="none in this test")
        ended = await service.streams.append_final("unreplicated-2", UNTAKEN, 0, error)
        service.release(stream)
    assert ended is Final.WRITTEN
    assert service.metrics.unreplicated_finals._value.get() == 1


async def test_take_backs_while_one_is_in_flight_go_together(
    gateway: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each ended stream gave its slot back in a round trip and a task of its own; busy, those
    ending while one is in flight now go in the next round trip, all at once."""
    service: ChatService = gateway.state.chat
    rounds: list[list[tuple[str, str]]] = []
    sent, go_on = asyncio.Event(), asyncio.Event()

    async def take_back(taken: list[tuple[str, str]]) -> None:
        rounds.append(list(taken))
        sent.set()
        await go_on.wait()
        if taken[0][1] == "fails":
            raise RedisConnectionError("Redis is away")

    monkeypatch.setattr(service.limits, "take_back", take_back)
    service._take_back_soon([("k", "fails")])  # idle: at once
    await sent.wait()
    service._take_back_soon([("k", "a")])
    service._take_back_soon([("k", "b"), ("k", "c")])
    sent.clear()
    go_on.set()  # the first fails: the others still go, in one round trip
    await sent.wait()
    assert rounds == [[("k", "fails")], [("k", "a"), ("k", "b"), ("k", "c")]]
    await asyncio.gather(*service._background)
    service._take_back_soon([("k", "d")])  # idle again: at once
    await asyncio.gather(*service._background)
    assert rounds[2:] == [[("k", "d")]]


async def test_a_take_back_cancelled_before_it_ran_does_not_stop_the_next(
    gateway: FastAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    service: ChatService = gateway.state.chat
    rounds: list[list[tuple[str, str]]] = []

    async def take_back(taken: list[tuple[str, str]]) -> None:
        rounds.append(list(taken))

    monkeypatch.setattr(service.limits, "take_back", take_back)
    before = set(service._background)
    service._take_back_soon([("k", "a")])
    (first,) = service._background - before
    first.cancel()  # before its first step: its own finally never runs
    await asyncio.gather(first, return_exceptions=True)
    service._take_back_soon([("k", "b")])
    await asyncio.gather(*service._background)
    assert rounds == [[("k", "a"), ("k", "b")]]


@pytest.mark.parametrize(
    ("limits", "code"),
    [
        ({"chat_starts_per_minute_user": 1}, "rate_limited"),
        ({"max_open_streams_per_user": 1}, "too_many_streams"),
        ({"max_backlog": 1}, "overloaded"),
    ],
)
async def test_a_refused_start_is_logged_with_its_user_and_request(
    redis_server_url: str, caplog: pytest.LogCaptureFixture, limits: dict[str, int], code: str
) -> None:
    """The metrics count 429s by scope only (no label per user): nothing named whom."""
    async with running_gateway(redis_server_url, **limits) as app:
        with captured(caplog):
            service: ChatService = app.state.chat
            await service.open(chat_input("refused-first", user="ann"), None)
            with caplog.at_level(logging.INFO), pytest.raises(ApiError) as refused:
                await service.open(chat_input("refused-second", user="ann"), None)
    assert refused.value.code == code
    [line] = [r.getMessage() for r in caplog.records if code in r.getMessage()]
    for who in ("user ann", "ip 127.0.0.1", "request refused-second"):
        assert who in line
