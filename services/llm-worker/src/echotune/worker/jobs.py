"""One chat job: walk the provider chain with retries, stream tokens, end the stream once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime

from echotune.common.messages import (
    ChatEvent,
    ChatJob,
    ChatMessage,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    FailoverEvent,
    FinishReason,
    RetryEvent,
    Role,
    Timings,
    Usage,
)
from echotune.common.providers import ProviderConfig
from echotune.worker.context import WorkerContext
from echotune.worker.events import EventWriter
from echotune.worker.providers.base import Finish, ProviderError, ProviderRequest, TextChunk
from echotune.worker.retry import backoff_delay, is_retryable
from echotune.worker.telemetry import AttemptClock

log = logging.getLogger(__name__)

SYSTEM_PROMPT = "You are EchoTune, a friendly music recommendation assistant. Answer concisely."


class MidStreamFailure(Exception):
    """The provider failed after text was already streamed to the client."""

    def __init__(self, error: ProviderError) -> None:
        super().__init__(error.message)
        self.error = error


class JobRunner:
    """Produces the events of one ``ChatJob``."""

    def __init__(self, ctx: WorkerContext, job: ChatJob) -> None:
        self.ctx, self.job = ctx, job
        settings = ctx.settings
        self.writer = EventWriter(
            ctx.redis,
            settings.keys,
            job.request_id,
            maxlen=settings.events_maxlen,
            final_ttl_s=int(settings.resume_window_s + 60),
            stamp=settings.stamp_tokens,
        )
        self.attempts = 0
        self.first_token_at: float | None = None
        self.text: list[str] = []

    async def run(self) -> None:
        """Run the job to its final event, whatever happens (cancel included)."""
        if await self.ctx.redis.exists(self.ctx.settings.keys.cancel_flag(self.job.request_id)):
            await self._final(self._done(FinishReason.CANCELLED, self.job.provider, self.job.model))
            return
        task = asyncio.create_task(self._produce())
        inflight = self.ctx.cancels.add(self.job.request_id, task)
        try:
            async with asyncio.timeout(max(self.job.deadline_at - time.time(), 0.001)):
                final = await task
        except TimeoutError:
            final = ErrorEvent(code=ErrorCode.DEADLINE_EXCEEDED, message="the answer took too long")
        except asyncio.CancelledError:
            if inflight.reason is None:
                raise
            final = self._done(FinishReason.CANCELLED, self.job.provider, self.job.model)
        finally:
            self.ctx.cancels.remove(self.job.request_id)
        await self._final(final)

    async def _final(self, event: ChatEvent) -> None:
        if not await self.writer.final(event):
            log.warning("stream had already ended; final %s not written", event.type)

    def _done(
        self, reason: FinishReason, provider: str, model: str, usage: Usage | None = None
    ) -> DoneEvent:
        now = datetime.now(UTC)
        total_ms = (now - self.job.created_at).total_seconds() * 1000
        ttft_ms = None
        if self.first_token_at is not None:
            ttft_ms = (self.first_token_at - self.job.created_at.timestamp()) * 1000
        return DoneEvent(
            finish_reason=reason,
            provider=provider,
            model=model,
            usage=usage or Usage(),
            timings=Timings(ttft_ms=ttft_ms, total_ms=total_ms),
            attempts=max(self.attempts, 1),
        )

    def _chain(self) -> list[tuple[ProviderConfig, str]]:
        chain: list[tuple[ProviderConfig, str]] = []
        for index, name in enumerate(dict.fromkeys([self.job.provider, *self.job.fallbacks])):
            config = self.ctx.registry.get(name)
            if config is not None:
                chain.append((config, self.job.model if index == 0 else config.model))
        return chain

    async def _produce(self) -> ChatEvent:
        """Try each provider of the chain in turn; the final event to write."""
        last_error: ProviderError | None = None
        chain = self._chain()
        for index, (config, model) in enumerate(chain):
            if index > 0:
                previous = chain[index - 1][0].name
                reason = last_error.code if last_error else "unavailable"
                await self.writer.emit(
                    FailoverEvent(
                        from_provider=previous,
                        to_provider=config.name,
                        to_model=model,
                        reason=reason,
                    )
                )
            try:
                return await self._with_retries(config, model, is_failover=index > 0)
            except ProviderError as error:
                last_error = error
                log.warning("provider %s failed: %s", config.name, error.code)
            except MidStreamFailure as failure:
                return ErrorEvent(
                    code=ErrorCode.PARTIAL_ANSWER,
                    message=f"the provider failed mid-answer ({failure.error.code}); "
                    "the answer is incomplete",
                    partial=True,
                    provider=config.name,
                )
        return ErrorEvent(
            code=ErrorCode.ALL_PROVIDERS_FAILED,
            message=f"no provider could answer (last error: {last_error.code if last_error else '-'})",
            retryable=True,
        )

    async def _with_retries(
        self, config: ProviderConfig, model: str, *, is_failover: bool
    ) -> ChatEvent:
        settings = self.ctx.settings
        for attempt in range(1, settings.retry_attempts + 1):
            try:
                return await self._attempt(config, model, attempt, is_failover=is_failover)
            except ProviderError as error:
                if not is_retryable(error) or attempt == settings.retry_attempts:
                    raise
                delay = backoff_delay(
                    attempt,
                    base_s=settings.retry_base_s,
                    cap_s=settings.retry_cap_s,
                    retry_after_s=error.retry_after,
                    retry_after_cap_s=settings.retry_after_cap_s,
                )
                if time.time() + delay >= self.job.deadline_at:
                    raise
                await self.writer.emit(
                    RetryEvent(
                        provider=config.name,
                        attempt=attempt,
                        delay_ms=round(delay * 1000),
                        reason=error.code,
                    )
                )
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    def _request(self, model: str) -> ProviderRequest:
        messages = [ChatMessage(role=Role.SYSTEM, content=SYSTEM_PROMPT), *self.job.messages]
        options = self.job.options
        return ProviderRequest(
            request_id=self.job.request_id,
            model=model,
            messages=messages,
            temperature=options.temperature,
            max_tokens=options.max_tokens,
            stop=options.stop,
        )

    async def _attempt(
        self, config: ProviderConfig, model: str, attempt: int, *, is_failover: bool
    ) -> ChatEvent:
        self.attempts += 1
        clock = AttemptClock()
        request = self._request(model)
        tokens_in = sum(len(m.content) for m in request.messages) // 4
        outcome: tuple[bool, str | None] = (False, "cancelled")
        usage: Usage | None = None
        try:
            finish = await self._stream(config, request, clock)
            usage = finish.usage
            outcome = (True, None)
            return self._done(finish.reason, config.name, model, finish.usage)
        except ProviderError as error:
            outcome = (False, error.code)
            if clock.tokens:
                raise MidStreamFailure(error) from error
            raise
        except asyncio.CancelledError:
            inflight_reason = self._cancel_reason()
            outcome = (False, inflight_reason or "cancelled")
            raise
        finally:
            success, code = outcome
            self.ctx.telemetry.publish(
                clock.event(
                    self.job,
                    attempt=self.attempts,
                    provider=config.name,
                    model=model,
                    success=success,
                    error_code=code,
                    tokens_in=usage.prompt_tokens if usage and usage.prompt_tokens else tokens_in,
                    tokens_out=usage.completion_tokens
                    if usage and usage.completion_tokens
                    else None,
                    is_retry=attempt > 1,
                    is_failover=is_failover,
                )
            )

    def _cancel_reason(self) -> str | None:
        return self.ctx.cancels.reason(self.job.request_id)

    async def _stream(
        self, config: ProviderConfig, request: ProviderRequest, clock: AttemptClock
    ) -> Finish:
        timeouts = config.timeouts
        ends_at = time.monotonic() + timeouts.total
        provider = self.ctx.providers[config.name]
        async with contextlib.aclosing(provider.stream(request)) as items:
            while True:
                wait = timeouts.first_token if clock.tokens == 0 else timeouts.idle
                wait = min(wait, ends_at - time.monotonic())
                try:
                    async with asyncio.timeout(max(wait, 0)):
                        item = await anext(items)
                except TimeoutError as exc:
                    phase = "first token" if clock.tokens == 0 else "next token"
                    raise ProviderError("timeout", f"no {phase} within {wait:.1f} s") from exc
                except StopAsyncIteration as exc:
                    raise ProviderError(
                        "malformed_stream", "the stream ended without a finish"
                    ) from exc
                if isinstance(item, Finish):
                    return item
                if isinstance(item, TextChunk) and item.text:
                    clock.token()
                    if self.first_token_at is None:
                        self.first_token_at = time.time()
                    self.text.append(item.text)
                    await self.writer.delta(item.text)
