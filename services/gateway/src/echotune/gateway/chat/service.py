"""Chat use cases: start a job, attach to its stream, cancel it."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, cast

from faststream.redis import RedisBroker
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from echotune.common.completion import CompletionFeatures
from echotune.common.keys import JOBS_GROUP
from echotune.common.messages import (
    ChatJob,
    ChatMessage,
    ChatOptions,
    ErrorCode,
    ErrorEvent,
    Role,
    StartEvent,
    encode_event,
    new_request_id,
)
from echotune.common.providers import ProviderConfig
from echotune.common.streams import append_final
from echotune.gateway.chat.relay import Entry, StreamRelay, Subscription, parse_stream_id
from echotune.gateway.chat.sse import HEARTBEAT, frame
from echotune.gateway.errors import ApiError
from echotune.gateway.limits import ChatLimits
from echotune.gateway.providers.service import ProviderService
from echotune.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)


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


class ChatService:
    def __init__(
        self,
        redis: Redis,
        relay: StreamRelay,
        broker: RedisBroker,
        providers: ProviderService,
        limits: ChatLimits,
        settings: GatewaySettings,
    ) -> None:
        self.redis, self.relay, self.broker = redis, relay, broker
        self.providers, self.settings, self.keys = providers, settings, settings.keys
        self.limits = limits
        self._background: set[asyncio.Task[object]] = set()
        self._open_streams: dict[str, str] = {}  # stream key → user id, for the open-stream cap

    @property
    def _request_ttl_s(self) -> int:
        return int(self.settings.max_stream_s + self.settings.resume_window_s + 60)

    async def open(self, chat: ChatInput, last_event_id: str | None) -> OpenStream | None:
        """Start or attach to the stream of ``chat.request_id``; ``None``: nothing left to send."""
        stream_key = f"{self.relay.gateway_id}:{uuid.uuid4().hex}"
        await self.limits.open_stream(chat.user_id, stream_key)
        try:
            stream = await self._open(chat, last_event_id)
        except BaseException:
            await self.limits.close_stream(chat.user_id, stream_key)
            raise
        if stream is None:
            await self.limits.close_stream(chat.user_id, stream_key)
            return None
        stream.owner, stream.stream_key = chat.user_id, stream_key
        self._open_streams[stream_key] = chat.user_id
        return stream

    async def _open(self, chat: ChatInput, last_event_id: str | None) -> OpenStream | None:
        if chat.message is not None:
            self._check_message(chat.message)
            config, model = await self.providers.choose(chat.user_id, chat.provider, chat.model)
            if not await self._exists_for(chat):
                await self.limits.check_start(chat.user_id, chat.client_ip, chat.request_id)
                await self._check_backlog()
            if await self._claim(chat):
                return await self._start(chat, config, model)
        await self._check_owner(chat.request_id, chat.user_id)
        return await self._attach(chat.request_id, last_event_id)

    async def _exists_for(self, chat: ChatInput) -> bool:
        stored = await self.redis.hget(self.keys.meta(chat.request_id), "fingerprint")
        return stored == chat.fingerprint()

    async def _check_owner(self, request_id: str, user_id: str) -> None:
        """404 for a stream that does not exist or belongs to someone else (no leak)."""
        owner = await self.redis.hget(self.keys.meta(request_id), "user_id")
        if owner != user_id:
            raise ApiError(404, "unknown_request", "no stream with this request id")

    def _check_message(self, message: str) -> None:
        if not message.strip():
            raise ApiError(422, "empty_message", "the message is empty")
        if len(message) > self.settings.max_message_chars:
            raise ApiError(
                422,
                "message_too_long",
                f"the message has {len(message)} characters; at most "
                f"{self.settings.max_message_chars} are allowed",
            )

    async def backlog(self) -> int:
        """Jobs queued but not yet delivered to any worker."""
        try:
            groups = await self.redis.xinfo_groups(self.keys.jobs)
        except ResponseError:  # no stream yet
            return 0
        for group in groups:
            if group["name"] == JOBS_GROUP:
                lag = group.get("lag")
                return int(lag) if lag is not None else int(await self.redis.xlen(self.keys.jobs))
        return int(await self.redis.xlen(self.keys.jobs))

    async def _check_backlog(self) -> None:
        backlog = await self.backlog()
        if backlog >= self.settings.max_backlog:
            retry_after = str(self.settings.backlog_retry_after_s)
            raise ApiError(
                429,
                "overloaded",
                f"{backlog} answers are waiting for a worker; try again shortly",
                headers={"Retry-After": retry_after},
            )

    async def _claim(self, chat: ChatInput) -> bool:
        """Reserve the request id for this input; ``False`` when it exists for the same input."""
        meta = self.keys.meta(chat.request_id)
        if await self.redis.hsetnx(meta, "fingerprint", chat.fingerprint()):
            await self.redis.expire(meta, self._request_ttl_s)
            return True
        if await self.redis.hget(meta, "fingerprint") != chat.fingerprint():
            raise ApiError(
                409, "request_id_conflict", "this request id is in use for a different request"
            )
        return False

    async def _start(self, chat: ChatInput, config: ProviderConfig, model: str) -> OpenStream:
        provider = config.name
        conversation_id = chat.conversation_id
        if conversation_id is None and chat.options.use_context:
            conversation_id = new_request_id()  # a new conversation; the client continues it
        job = ChatJob(
            request_id=chat.request_id,
            conversation_id=conversation_id,
            new_conversation=chat.conversation_id is None,
            user_id=chat.user_id,
            messages=chat.messages(),
            provider=provider,
            model=model,
            fallbacks=[f for f in self.settings.fallbacks if f != provider],
            options=chat.options,
            features=chat.features,
            deadline_at=time.time() + self.settings.max_stream_s,
        )
        start = StartEvent(
            request_id=chat.request_id,
            conversation_id=conversation_id,
            provider=provider,
            model=model,
            provider_is_demo=config.is_demo,
        )
        start_id = await self._write_start(chat, start)
        subscription = await self.relay.subscribe(chat.request_id, start_id)
        try:
            await self.broker.publish(job, stream=self.keys.jobs)
        except Exception:
            self.relay.unsubscribe(subscription)
            await self._fail_unqueued(chat.request_id)
            raise
        log.info("queued chat job provider=%s model=%s", provider, model)
        first = frame(
            start.type, encode_event(start)["data"], start_id, self.settings.stream_retry_ms
        )
        return OpenStream(chat.request_id, subscription, first)

    async def _write_start(self, chat: ChatInput, start: StartEvent) -> str:
        ttl = self._request_ttl_s
        rid = chat.request_id
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self.keys.meta(rid), mapping={"user_id": chat.user_id, "created": time.time()}
            )
            pipe.xadd(self.keys.events(rid), cast(Any, encode_event(start)))
            pipe.expire(self.keys.events(rid), ttl)
            pipe.set(self.keys.reader(rid), "1", px=int(self.settings.resume_window_s * 1000))
            _, start_id, *_ = await pipe.execute()
        return str(start_id)

    async def _fail_unqueued(self, request_id: str) -> None:
        error = ErrorEvent(code=ErrorCode.PROVIDER_ERROR, message="could not queue the job")
        ttl = int(self.settings.resume_window_s + 60)
        await append_final(self.redis, self.keys, request_id, encode_event(error), ttl)

    async def _attach(self, request_id: str, last_event_id: str | None) -> OpenStream | None:
        final_id = await self.redis.hget(self.keys.meta(request_id), "final_id")
        after = last_event_id or "0-0"
        if final_id and parse_stream_id(after) >= parse_stream_id(str(final_id)):
            return None
        await self.redis.set(
            self.keys.reader(request_id), "1", px=int(self.settings.resume_window_s * 1000)
        )
        log.info("client attached after %s", after)
        return OpenStream(request_id, await self.relay.subscribe(request_id, after))

    async def cancel(self, request_id: str, user_id: str) -> str:
        meta = await self.redis.hmget(self.keys.meta(request_id), ["user_id", "final_id"])
        if meta[0] is None or meta[0] != user_id:
            raise ApiError(404, "unknown_request", "no stream with this request id")
        if meta[1] is not None:
            return "finished"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.cancel_flag(request_id), "1", ex=self._request_ttl_s)
            pipe.publish(self.keys.cancel_channel, request_id)
            await pipe.execute()
        log.info("cancel requested")
        return "cancelling"

    async def entries(self, stream: OpenStream) -> AsyncIterator[Entry | None]:
        """Relayed events until the final one; ``None`` after each ``heartbeat_s`` of silence.

        A stream that outlives ``max_stream_s`` plus the resume window ends with a
        ``deadline_exceeded`` error that is not stored (it has no id): nothing hangs forever.
        """
        sub, heartbeat = stream.subscription, self.settings.heartbeat_s
        deadline = time.monotonic() + self.settings.max_stream_s + self.settings.resume_window_s
        try:
            while time.monotonic() < deadline:
                try:
                    async with asyncio.timeout(heartbeat):
                        entry = await sub.queue.get()
                except TimeoutError:
                    yield None
                    continue
                yield entry
                if entry.is_terminal:
                    return
            error = ErrorEvent(code=ErrorCode.DEADLINE_EXCEEDED, message="the answer took too long")
            yield Entry("", error.type, encode_event(error)["data"])
        finally:
            self.relay.unsubscribe(sub)
            self._open_streams.pop(stream.stream_key, None)
            self._close_soon(stream)

    def _close_soon(self, stream: OpenStream) -> None:
        """Forget the open stream in Redis, off the response path (Redis may be down)."""
        task = asyncio.create_task(self.limits.close_stream(stream.owner, stream.stream_key))
        self._background.add(task)
        task.add_done_callback(_log_failure)
        task.add_done_callback(self._background.discard)

    def cancel_soon(self, request_id: str, user_id: str) -> None:
        """Cancel from a context that is itself being cancelled (a client that left)."""
        task = asyncio.create_task(self.cancel(request_id, user_id))
        self._background.add(task)
        task.add_done_callback(_log_failure)
        task.add_done_callback(self._background.discard)

    async def frames(self, stream: OpenStream) -> AsyncIterator[bytes]:
        """The SSE body: first frame, then relayed events and heartbeats until the final one."""
        if stream.first_frame:
            yield stream.first_frame
        async for entry in self.entries(stream):
            if entry is None:
                yield HEARTBEAT
            else:
                yield frame(entry.type, entry.data, entry.id or None)

    async def keep_readers_alive(self) -> None:
        """Refresh the reader marker of every attached stream, so workers keep producing."""
        period = self.settings.resume_window_s / 3
        ttl_ms = int(self.settings.resume_window_s * 1000)
        while True:
            await asyncio.sleep(period)
            request_ids = self.relay.attached_request_ids()
            if not request_ids:
                continue
            try:
                async with self.redis.pipeline(transaction=False) as pipe:
                    for request_id in request_ids:
                        pipe.set(self.keys.reader(request_id), "1", px=ttl_ms)
                    await pipe.execute()
                await self.limits.refresh([(user, key) for key, user in self._open_streams.items()])
            except Exception:
                log.exception("could not refresh reader markers")


def _log_failure(task: asyncio.Task[object]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("background Redis call failed: %s", error)
