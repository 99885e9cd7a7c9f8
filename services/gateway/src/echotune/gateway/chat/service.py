"""Chat use cases: start a job, attach to its stream, cancel it.

A new start costs two sequential Redis round trips: the checks (request lookup, provider
selection, backlog, open-stream cap and rate limits in one pipeline), then the open script
(claim, start event, TTLs, reader marker and, on one Redis, the job itself: queued only if
the answer was started, and once even if the call is retried). A cluster keeps the jobs
stream in another slot: there the job is published in a third round trip.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from faststream.redis import RedisBroker
from redis.asyncio import Redis
from redis.exceptions import RedisError

from echotune.common import job_queue
from echotune.common.completion import CompletionFeatures
from echotune.common.messages import (
    EVENTS_LOST,
    ChatJob,
    ChatMessage,
    ChatOptions,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    EventType,
    FailoverEvent,
    FinishReason,
    Role,
    StartEvent,
    Timings,
    deadline_exceeded,
    encode_event,
    new_request_id,
)
from echotune.common.providers import ProviderConfig
from echotune.common.request_stream import (
    FORCE,
    UNTAKEN,
    Attached,
    Cancel,
    Final,
    Lookup,
    Opened,
    RequestStreams,
)
from echotune.common.scripts import execute
from echotune.gateway.chat.publish import job_fields, publish_job, sending
from echotune.gateway.chat.relay import Entry, StreamRelay, Subscription, parse_stream_id
from echotune.gateway.chat.sse import HEARTBEAT, frame
from echotune.gateway.limits import ADMIT_START, OPEN_STREAMS, Admission, ChatLimits
from echotune.gateway.metrics import GatewayMetrics
from echotune.gateway.providers.service import ProviderService
from echotune.gateway.settings import GatewaySettings
from echotune.web.errors import ApiError

log = logging.getLogger(__name__)

WORKER_SEEN_S = 15.0
"""A worker that said it was alive this recently counts as running."""


@dataclass(frozen=True, slots=True)
class ChatInput:
    """A chat request as the client expressed it."""

    request_id: str
    user_id: str
    message: str | None
    conversation_id: str | None = None
    provider: str | None = None
    model: str | None = None
    options: ChatOptions = field(default_factory=ChatOptions)
    history: tuple[ChatMessage, ...] = ()
    """Earlier messages sent by the client itself (OpenAI-style requests)."""
    client_ip: str = ""
    features: CompletionFeatures | None = None
    """Tools, JSON output, logprobs… (OpenAI-style requests)."""
    final: ChatMessage | None = None
    """The last message when it is not the user's ``message`` (a tool result)."""

    def fingerprint(self) -> str:
        fields: list[object] = [self.user_id, self.message, self.conversation_id]
        fields += [self.provider, self.model, self.options.model_dump(mode="json")]
        fields += [m.model_dump(mode="json") for m in self.history]
        fields += [m.model_dump(mode="json") for m in (self.features, self.final) if m]
        return hashlib.sha256(json.dumps(fields).encode()).hexdigest()

    def messages(self) -> list[ChatMessage]:
        last = self.final or ChatMessage(role=Role.USER, content=self.message or "")
        return [*self.history, last]


@dataclass(slots=True)
class OpenStream:
    """An accepted stream: the first frame to flush at once and the live subscription."""

    request_id: str
    subscription: Subscription
    first_frame: bytes | None = None
    owner: str = ""
    stream_key: str = ""
    provider: str = ""
    model: str = ""
    opened_at: float = 0.0
    ended: bool = False
    """The final event was relayed."""
    released: bool = False
    client_text: bool = False
    """The client may hold text of this answer: a delta was relayed to it since the answer
    last started over, or it resumed after an event past the start."""
    replay_to: str = ""
    """The newest event when the client attached: the events up to it are a replay."""

    def relayed(self, entry: Entry) -> Entry | None:
        """``entry`` goes to the client; the failover to send before it, if the answer started
        over with no trace of the text the client holds (see :meth:`_started_over`)."""
        restart = self._started_over(entry) if entry.take else None
        self.ended = entry.is_terminal
        if entry.type == EventType.DELTA:
            self.client_text = True
        elif _discards(entry):
            self.client_text = False
        return restart

    def _started_over(self, entry: Entry) -> Entry | None:
        """A ``discard_partial`` failover when ``entry`` names a take with no text stored
        before it (``take``) while the client holds text, and does not discard it itself:
        Redis lost the job's delivery, its take and that text, and the new producer cannot
        know the answer had begun; only the relay does."""
        if not self.client_text or _discards(entry):
            return None
        log.warning("the answer started over with no trace of the text relayed")
        self.client_text = False
        restart = FailoverEvent(
            from_provider=self.provider,
            to_provider=self.provider,
            to_model=self.model,
            reason=EVENTS_LOST,
            discard_partial=True,
        )
        return Entry("", restart.type, encode_event(restart)["data"])


def _discards(entry: Entry) -> bool:
    """Whether ``entry`` is a failover that voids the text sent before it."""
    return entry.type == EventType.FAILOVER and bool(json.loads(entry.data).get("discard_partial"))


@dataclass(frozen=True, slots=True)
class _Checks:
    """What the first round trip of a start found out."""

    lookup: Lookup
    selection: list[str | bytes | None]
    backlog: int | None
    open_refusal: ApiError | None
    admission: Admission


def _unknown() -> ApiError:
    return ApiError(404, "unknown_request", "no stream with this request id")


class ChatService:
    def __init__(
        self,
        redis: Redis,
        relay: StreamRelay,
        broker: RedisBroker,
        providers: ProviderService,
        limits: ChatLimits,
        streams: RequestStreams,
        settings: GatewaySettings,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.redis, self.relay, self.broker = redis, relay, broker
        self.metrics = metrics or GatewayMetrics()
        self.providers, self.settings, self.keys = providers, settings, settings.keys
        self.limits, self.streams = limits, streams
        self._background: set[asyncio.Task[object]] = set()
        self._to_take_back: list[tuple[str, str]] = []
        self._taking_back: asyncio.Task[object] | None = None
        self._open_streams: dict[str, str] = {}  # stream key → user id, for the open-stream cap
        self._stream_prefix = f"{uuid.uuid4().hex}:"  # a stream's key: this, then a number
        self._stream_numbers = itertools.count()

    async def open(self, chat: ChatInput, last_event_id: str | None) -> OpenStream | None:
        """Start or attach to the stream of ``chat.request_id``; ``None``: nothing left to send."""
        opened_at = time.monotonic()
        stream_key = f"{self._stream_prefix}{next(self._stream_numbers)}"
        open_key = (self.keys.open_streams(chat.user_id), stream_key)
        if chat.message is None:
            stream = await self._resume(chat, stream_key, last_event_id)
        else:
            stream = await self._start_or_attach(chat, stream_key, last_event_id)
        if stream is None:
            self._take_back_soon([open_key])
            return None
        stream.owner, stream.stream_key, stream.opened_at = chat.user_id, stream_key, opened_at
        self._open_streams[stream_key] = chat.user_id
        return stream

    async def _resume(
        self, chat: ChatInput, stream_key: str, last_event_id: str | None
    ) -> OpenStream | None:
        """Attach to an existing answer (one round trip)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            self.limits.queue_open_stream(pipe, chat.user_id, stream_key)
            replies = await execute(self.redis, pipe, [OPEN_STREAMS])
        if refusal := self.limits.open_stream_refusal(replies[0]):
            raise _refused(chat, refusal)
        try:
            return await self._attach(chat.request_id, chat.user_id, last_event_id)
        except BaseException:
            self._take_back_soon([(self.keys.open_streams(chat.user_id), stream_key)])
            raise

    async def _start_or_attach(
        self, chat: ChatInput, stream_key: str, last_event_id: str | None
    ) -> OpenStream | None:
        self._check_message(chat.message or "", tool_result=chat.final is not None)
        if chat.provider is not None:
            self.providers.validate(chat.provider, chat.model)
        # what this call may have counted: its own members, so taking back is always safe
        undo = [
            (self.keys.open_streams(chat.user_id), stream_key),
            *self.limits.start_members(chat.user_id, chat.client_ip, stream_key),
        ]
        try:
            checks = await self._checks(chat, stream_key)
            stream, started = await self._decide(chat, checks, last_event_id)
        except BaseException:
            self._take_back_soon(undo)
            raise
        if not started:
            self._take_back_soon(checks.admission.taken)
        return stream

    async def _checks(self, chat: ChatInput, stream_key: str) -> _Checks:
        """Everything a start must know, in one pipeline (one round trip)."""
        user, ip, rid = chat.user_id, chat.client_ip, chat.request_id
        async with self.redis.pipeline(transaction=False) as pipe:
            self.streams.queue_lookup(pipe, rid)
            self.providers.queue_selection(pipe, user)
            job_queue.queue_backlog(pipe, self.keys)
            self.limits.queue_open_stream(pipe, user, stream_key)
            self.limits.queue_start(pipe, user, ip, stream_key)
            scripts = [None, None, None, None, OPEN_STREAMS, ADMIT_START, ADMIT_START]
            replies = await execute(self.redis, pipe, scripts)
        for reply in (replies[0], replies[1], replies[4], replies[5], replies[6]):
            if isinstance(reply, Exception):
                raise reply
        return _Checks(
            lookup=self.streams.lookup(replies[0]),
            selection=replies[1],
            backlog=job_queue.backlog(replies[2], replies[3]),
            open_refusal=self.limits.open_stream_refusal(replies[4]),
            admission=self.limits.start_admission(replies[5:7], user, ip, stream_key),
        )

    async def _decide(
        self, chat: ChatInput, checks: _Checks, last_event_id: str | None
    ) -> tuple[OpenStream | None, bool]:
        """(the stream, whether a new answer was started)."""
        if checks.open_refusal is not None:
            raise _refused(chat, checks.open_refusal)
        lookup = checks.lookup
        if lookup.fingerprint is not None:
            self._check_same(lookup, chat)
            return await self._attach(chat.request_id, chat.user_id, last_event_id), False
        if last_event_id is not None:  # a reconnect: its answer lapsed; never start it again
            raise _unknown()
        if checks.admission.refusal is not None:
            raise _refused(chat, checks.admission.refusal)
        self._check_backlog(chat, checks.backlog)
        config, model = self.providers.choose_from(checks.selection, chat.provider, chat.model)
        return await self._start(chat, config, model, group_missing=checks.backlog is None)

    def _check_same(self, lookup: Lookup, chat: ChatInput) -> None:
        """404 for someone else's request id (its existence is not told), 409 for new input."""
        if lookup.user_id != chat.user_id:
            raise _unknown()
        if lookup.fingerprint != chat.fingerprint():
            raise ApiError(
                409, "request_id_conflict", "this request id is in use for a different request"
            )

    def _check_message(self, message: str, *, tool_result: bool = False) -> None:
        """A tool result may be empty (a function that returned nothing); a message may not."""
        if not message.strip() and not tool_result:
            raise ApiError(422, "empty_message", "the message is empty")
        if len(message) > self.settings.max_message_chars:
            raise ApiError(
                422,
                "message_too_long",
                f"the message has {len(message)} characters; at most "
                f"{self.settings.max_message_chars} are allowed",
            )

    def _check_backlog(self, chat: ChatInput, backlog: int | None) -> None:
        if backlog is not None and backlog >= self.settings.max_backlog:
            raise _refused(
                chat,
                ApiError(
                    429,
                    "overloaded",
                    f"{backlog} answers are waiting for a worker; try again shortly",
                    headers={"Retry-After": str(self.settings.backlog_retry_after_s)},
                ),
            )

    def _job(self, chat: ChatInput, config: ProviderConfig, model: str) -> ChatJob:
        conversation_id = chat.conversation_id
        if conversation_id is None and chat.options.use_context:
            conversation_id = new_request_id()  # a new conversation; the client continues it
        return ChatJob(
            request_id=chat.request_id,
            conversation_id=conversation_id,
            new_conversation=chat.conversation_id is None,
            user_id=chat.user_id,
            messages=chat.messages(),
            provider=config.name,
            model=model,
            fallbacks=[f for f in self.settings.fallbacks if f != config.name],
            options=chat.options,
            features=chat.features,
            deadline_at=time.time() + self.settings.max_stream_s,
        )

    async def _start(
        self,
        chat: ChatInput,
        config: ProviderConfig,
        model: str,
        *,
        group_missing: bool,
    ) -> tuple[OpenStream | None, bool]:
        start = StartEvent(
            request_id=chat.request_id,
            conversation_id=(job := self._job(chat, config, model)).conversation_id,
            provider=config.name,
            model=model,
            provider_is_demo=config.is_demo,
        )
        if group_missing:
            await job_queue.ensure_group(self.redis, self.keys)
        with sending(job, self.keys.jobs) as job:
            entry = None
            if self.streams.queues_jobs:
                entry = (self.keys.jobs, await job_fields(self.broker, job))
            opened = await self.streams.open(
                chat.request_id, chat.fingerprint(), chat.user_id, start, entry
            )
            if opened.state is Opened.FOREIGN:
                raise _unknown()
            if opened.state is Opened.CONFLICT:
                raise ApiError(
                    409, "request_id_conflict", "this request id is in use for a different request"
                )
            if opened.state is Opened.EXISTS:  # an identical request won the race
                twin = Attached("", opened.final_id, config.name, model)
                return self._subscribe(chat.request_id, None, twin), False
            if opened.unreplicated:
                log.warning("the opening is not on enough replicas: a failover could lose it")
                self.metrics.unreplicated_opens.inc()
            subscription = self.relay.subscribe(chat.request_id, opened.start_id, new=True)
            if not opened.job_queued:
                await self._publish(job, subscription)
        log.info("queued chat job provider=%s model=%s", config.name, model)
        data = encode_event(start)["data"]
        first = frame(start.type, data, opened.start_id, self.settings.stream_retry_ms)
        return OpenStream(
            chat.request_id, subscription, first, provider=config.name, model=model
        ), True

    async def _publish(self, job: ChatJob, subscription: Subscription) -> None:
        """Queue the job apart from its start (a cluster); if it cannot be, end the answer."""
        try:
            await publish_job(self.broker, job, self.keys.jobs)
        except Exception:
            self.relay.unsubscribe(subscription)
            await self._end_untaken(job.request_id, "could not queue the job")
            raise

    async def _end_untaken(self, request_id: str, message: str) -> Final:
        """End the answer with a retryable ``no_worker`` error unless a worker took it."""
        error = ErrorEvent(code=ErrorCode.NO_WORKER, message=message, retryable=True)
        return await self.streams.append_final(request_id, UNTAKEN, 0, error)

    async def _attach(
        self, request_id: str, user_id: str, last_event_id: str | None
    ) -> OpenStream | None:
        attached = await self.streams.attach(request_id, user_id)
        if attached is None:
            raise _unknown()
        return self._subscribe(request_id, last_event_id, attached)

    def _subscribe(
        self, request_id: str, last_event_id: str | None, attached: Attached
    ) -> OpenStream | None:
        after = last_event_id or "0-0"
        try:
            position = parse_stream_id(after)
        except ValueError as exc:
            raise ApiError(422, "invalid_last_event_id", str(exc)) from exc
        if attached.final_id and position >= parse_stream_id(attached.final_id):
            return None
        past_start = not attached.start_id or position > parse_stream_id(attached.start_id)
        if attached.newest_id and position > parse_stream_id(attached.newest_id):
            # no event has that id (yet): a made-up id, or Redis lost the events after it
            log.warning("Last-Event-ID %s is past the newest event; resuming after that", after)
            after = attached.newest_id
        log.info("client attached after %s", after)
        subscription = self.relay.subscribe(request_id, after)
        return OpenStream(
            request_id,
            subscription,
            provider=attached.provider,
            model=attached.model,
            client_text=bool(last_event_id) and past_start,
            replay_to=attached.newest_id,
        )

    async def cancel(self, request_id: str, user_id: str) -> str:
        """Stop an answer: the worker holding it ends it ``cancelled`` within moments; one that
        nobody holds is ended here at once, and one whose worker does not react (dead, cut
        off) is ended here after ``cancel_grace_s``, fencing that worker off."""
        found = await self.streams.cancel(request_id, user_id)
        if found.state == "unknown":
            raise _unknown()
        log.info("cancel of %s requested: %s", request_id, found.state)
        if found.state == "cancelling":
            ended = not found.taken and await self._end_cancelled(request_id, found, UNTAKEN)
            if not ended:
                self._soon(self._end_cancelled_later(request_id, found))
        return found.state

    async def _end_cancelled(self, request_id: str, found: Cancel, fence: str) -> bool:
        """Write the ``cancelled`` final as ``fence`` (UNTAKEN or FORCE); whether it ended it."""
        started_ms = parse_stream_id(found.start_id)[0] if found.start_id else 0
        total_ms = max(time.time() * 1000 - started_ms, 0.0) if started_ms else 0.0
        done = DoneEvent(
            finish_reason=FinishReason.CANCELLED,
            provider=found.provider,
            model=found.model,
            timings=Timings(total_ms=total_ms),
            attempts=0,
        )
        outcome = await self.streams.append_final(request_id, fence, 0, done)
        return outcome in (Final.WRITTEN, Final.ENDED, Final.GONE)

    async def _end_cancelled_later(self, request_id: str, found: Cancel) -> None:
        await asyncio.sleep(self.settings.cancel_grace_s)
        await self._end_cancelled(request_id, found, FORCE)

    async def entries(self, stream: OpenStream) -> AsyncIterator[Entry | None]:
        """Relayed events until the final one; ``None`` after each ``heartbeat_s`` of silence.

        After ``pickup_timeout_s`` without any event the workers are checked: with none alive,
        a job nobody took ends with a retryable ``no_worker`` error and one whose worker died
        with ``worker_lost``. A stream that outlives ``max_stream_s`` plus the resume window
        is ended with ``deadline_exceeded`` for everyone (stored; unstored, without an id,
        only when Redis cannot take it): nothing hangs forever.
        """
        sub, settings = stream.subscription, self.settings
        now = time.monotonic()
        deadline = now + settings.max_stream_s + settings.resume_window_s
        check_at, beat_at = now + settings.pickup_timeout_s, now + settings.heartbeat_s
        watch = self.metrics.watch(
            bool(stream.first_frame), stream.opened_at, stream.provider, stream.model,
            stream.replay_to,
        )  # fmt: skip
        try:
            while time.monotonic() < deadline:
                wait = max(min(beat_at, check_at) - time.monotonic(), 0.0)
                entry = await sub.queue.get_within(wait)
                now = time.monotonic()
                if entry is None:
                    if now >= check_at:
                        await self._check_workers(sub.request_id)
                        check_at = time.monotonic() + settings.pickup_timeout_s
                    if now >= beat_at:
                        beat_at = now + settings.heartbeat_s
                        yield None
                    continue
                check_at, beat_at = now + settings.pickup_timeout_s, now + settings.heartbeat_s
                if (restart := stream.relayed(entry)) is not None:
                    yield restart
                yield entry
                watch.sent(entry)
                if stream.ended:
                    return
            async for entry in self._end_late(stream):
                yield entry
                watch.sent(entry)
        finally:
            watch.end()
            self.release(stream)

    async def _end_late(self, stream: OpenStream) -> AsyncIterator[Entry]:
        """The answer outlived its deadline: end it for everyone (stored, fencing off whoever
        holds it), then relay that final; if Redis cannot take it, say so unstored."""
        error = deadline_exceeded()
        try:
            await self.streams.append_final(stream.request_id, FORCE, 0, error)
            until = asyncio.get_running_loop().time() + self.settings.heartbeat_s
            while not stream.ended:
                async with asyncio.timeout_at(until):  # the wait only, not the client's send
                    entry = await stream.subscription.queue.get()
                if (restart := stream.relayed(entry)) is not None:
                    yield restart
                yield entry
        except (TimeoutError, RedisError):
            unstored = error.model_copy(update={"partial": stream.client_text})
            yield Entry("", error.type, encode_event(unstored)["data"])

    def release(self, stream: OpenStream) -> None:
        """Stop relaying ``stream`` and give its slot back (once; the response may end before
        its body ever started)."""
        if stream.released:
            return
        stream.released = True
        self.relay.unsubscribe(stream.subscription)
        if not stream.ended:
            self._soon(self.streams.reader_left(stream.request_id))
        self._open_streams.pop(stream.stream_key, None)
        self._take_back_soon([(self.keys.open_streams(stream.owner), stream.stream_key)])

    async def _check_workers(self, request_id: str) -> None:
        """A silent answer while no worker is alive: end it rather than wait for nothing."""
        if await job_queue.workers_alive(self.redis, self.keys, WORKER_SEEN_S):
            return  # busy or slow: the backlog is bounded at the door, a lost one is reclaimed
        untaken = await self._end_untaken(request_id, "no worker is running; try again later")
        if untaken is Final.TAKEN:
            error = ErrorEvent(
                code=ErrorCode.WORKER_LOST,
                message="the worker answering was lost and no other is running",
                retryable=True,
            )
            await self.streams.append_final(request_id, FORCE, 0, error)

    def _take_back_soon(self, taken: Sequence[tuple[str, str]]) -> None:
        """Forget counted starts or open streams, off the response path (Redis may be down):
        at once, or with whatever else comes while a take-back is in flight."""
        if not taken:
            return
        self._to_take_back += taken
        if self._taking_back is None:
            self._taking_back = self._soon(self._take_back_all())
            self._taking_back.add_done_callback(self._took_back)

    def _took_back(self, task: asyncio.Task[object]) -> None:
        if task.cancelled() and self._taking_back is task:  # maybe before its first step:
            self._taking_back = None  # its ``finally`` never ran

    async def _take_back_all(self) -> None:
        """One round trip per round, until nothing is left to take back."""
        try:
            while self._to_take_back:
                taken, self._to_take_back = self._to_take_back, []
                try:
                    await self.limits.take_back(taken)
                except Exception as exc:  # the members lapse (see limits.py)
                    log.warning("could not take back %d counted members: %s", len(taken), exc)
        finally:
            self._taking_back = None

    def cancel_soon(self, request_id: str, user_id: str) -> None:
        """Cancel from a context that is itself being cancelled (a client that left)."""
        self._soon(self.cancel(request_id, user_id))

    def _soon(self, work: Any) -> asyncio.Task[object]:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(_log_failure)
        task.add_done_callback(self._background.discard)
        return task

    async def frames(self, stream: OpenStream) -> AsyncIterator[bytes]:
        """The SSE body: first frame, then relayed events and heartbeats until the final one.

        Whatever was queued for the stream goes out in one write per wake-up.
        """
        if stream.first_frame:
            yield stream.first_frame
        queue, pending = stream.subscription.queue, []
        async for entry in self.entries(stream):
            pending.append(
                HEARTBEAT if entry is None else frame(entry.type, entry.data, entry.id or None)
            )
            if queue.empty():
                yield b"".join(pending)
                pending.clear()
        if pending:
            yield b"".join(pending)

    async def refresh_open_streams(self) -> None:
        """Keep the reader markers and open-stream entries of this process from lapsing."""
        request_ids = self.relay.attached_request_ids()
        if request_ids:
            async with self.redis.pipeline(transaction=False) as pipe:
                for request_id in request_ids:
                    self.streams.queue_reader_refresh(pipe, request_id)
                await pipe.execute()
        by_user: dict[str, list[str]] = {}
        for stream_key, user in self._open_streams.items():
            by_user.setdefault(user, []).append(stream_key)
        if by_user:
            await self.limits.refresh(by_user)


def _refused(chat: ChatInput, error: ApiError) -> ApiError:
    """A 429, logged with whom it refused: the metrics count refusals by scope only. The
    request is named: a POST's may differ from the call's own id (``rid``)."""
    log.info(
        "chat refused (%s): user %s, ip %s, request %s: %s",
        error.code, chat.user_id, chat.client_ip, chat.request_id, error.message,
    )  # fmt: skip
    return error


def _log_failure(task: asyncio.Task[object]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("background Redis call failed: %s", error)
