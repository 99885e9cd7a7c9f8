"""One call to one provider: stream its tokens, time it, and record what happened."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from opentelemetry.trace import Span

from echotune.common.breaker import Outcome, Permit
from echotune.common.messages import ChatJob, Grounding, Usage
from echotune.common.providers import ProviderConfig
from echotune.common.request_faults import HEALTH_NEUTRAL_STATUSES
from echotune.common.stop_reasons import CANCELLED
from echotune.worker.confidence import ConfidenceMeter
from echotune.worker.deadline import Deadline
from echotune.worker.observability import attempt_ended, attempt_span, breaker_changed
from echotune.worker.providers.base import (
    Finish,
    ProviderError,
    ProviderRequest,
    StreamItem,
    TextChunk,
    ToolCallChunk,
)
from echotune.worker.resources import Worker
from echotune.worker.telemetry import AttemptClock
from echotune.worker.writer import EventWriter

log = logging.getLogger(__name__)


class MidStreamFailure(Exception):
    """The provider failed after text was already streamed to the client."""

    def __init__(self, error: ProviderError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(slots=True)
class AttemptInfo:
    """What the job tells about the attempt, for telemetry."""

    number: int
    is_retry: bool
    is_failover: bool
    grounding: Grounding | None = None


def outcome_of(error: ProviderError) -> Outcome:
    if error.code == "rate_limited":
        return Outcome.RATE_LIMITED
    if error.status in HEALTH_NEUTRAL_STATUSES:
        return Outcome.IGNORED
    return Outcome.FAILURE


class Attempt:
    """Streams one provider answer into the job's event stream."""

    def __init__(
        self,
        ctx: Worker,
        job: ChatJob,
        writer: EventWriter,
        config: ProviderConfig,
        permit: Permit,
        info: AttemptInfo,
    ) -> None:
        self.ctx, self.job, self.writer = ctx, job, writer
        self.config, self.permit, self.info = config, permit, info
        self.clock = AttemptClock()
        self.text: list[str] = []
        self.first_token_at: float | None = None
        self.span: Span | None = None
        self.confidence = ConfidenceMeter()
        self.model = ""
        self.usage = Usage()
        """What the call used, as its telemetry counts it (estimates where the provider said
        nothing): known once it ended."""
        features = job.features
        self.relays_logprobs = features is not None and bool(features.logprobs)

    async def run(self, request: ProviderRequest) -> Finish:
        with attempt_span(self.config, request, self.info.number, self.permit) as span:
            self.span = span
            return await self._call(request)

    async def _call(self, request: ProviderRequest) -> Finish:
        outcome, retry_after = Outcome.IGNORED, 0.0
        error_code: str | None = CANCELLED
        finish: Finish | None = None
        try:
            async with self.ctx.breakers.holding(self.permit):
                finish = await self._stream(request)
            outcome, error_code = Outcome.SUCCESS, None
            return finish
        except ProviderError as error:
            outcome, error_code = outcome_of(error), error.code
            retry_after = error.retry_after or 0.0
            if self.clock.tokens:
                raise MidStreamFailure(error) from error
            raise
        except asyncio.CancelledError:
            error_code = self.ctx.jobs.reason(self.job.request_id) or CANCELLED
            raise
        finally:
            await self._record(request, outcome, error_code, retry_after, finish)

    async def _stream(self, request: ProviderRequest) -> Finish:
        deadline = Deadline()
        try:
            return await self._read(request, deadline)
        except asyncio.CancelledError as exc:
            if deadline.expired():  # it may fire as the provider stream closes
                phase = "first token" if self.clock.tokens == 0 else "next token"
                raise ProviderError("timeout", f"no {phase} in time") from exc
            raise
        finally:
            deadline.close()

    async def _read(self, request: ProviderRequest, deadline: Deadline) -> Finish:
        timeouts = self.config.timeouts
        loop = asyncio.get_running_loop()
        ends_at = loop.time() + timeouts.total
        provider = self.ctx.providers[self.config.name]
        async with contextlib.aclosing(provider.stream(request)) as items:
            while True:
                if self.ctx.jobs.reason(self.job.request_id) is not None:
                    # cancelled, but a Redis call swallowed the CancelledError (a cluster
                    # client sends through asyncio.wait_for, which on 3.11 can drop one)
                    raise asyncio.CancelledError
                wait = timeouts.first_token if self.clock.tokens == 0 else timeouts.idle
                deadline.move(min(loop.time() + wait, ends_at))
                try:
                    item = await anext(items)
                except StopAsyncIteration as exc:
                    raise ProviderError("malformed_stream", "ended without finish") from exc
                if isinstance(item, Finish):
                    deadline.close()
                    return item
                self._relay(item)

    def _relay(self, item: StreamItem) -> None:
        """Buffer a piece of the answer (text, logprobs or a tool-call piece) for the stream."""
        if isinstance(item, TextChunk) and not (item.text or item.logprobs):
            return
        self.clock.token()
        self.first_token_at = self.first_token_at or time.time()
        if isinstance(item, ToolCallChunk):
            self.writer.pieces("", tool_calls=[item.delta])
        elif isinstance(item, TextChunk):
            self.text.append(item.text)
            self.confidence.add(item.logprobs)
            if item.logprobs and self.relays_logprobs:  # the client asked for them
                self.writer.pieces(item.text, logprobs=list(item.logprobs))
            elif item.text:
                self.writer.delta(item.text)

    async def _record(
        self,
        request: ProviderRequest,
        outcome: Outcome,
        error_code: str | None,
        retry_after: float,
        finish: Finish | None,
    ) -> None:
        """Breaker, live figures and telemetry; shielded so a cancel cannot skip them."""
        usage = finish.usage if finish else None
        tokens_in = sum(len(m.content) for m in request.messages) // 4
        event = self.clock.event(
            self.job,
            attempt=self.info.number,
            provider=self.config.name,
            model=request.model,
            success=outcome is Outcome.SUCCESS,
            error_code=error_code,
            tokens_in=usage.prompt_tokens if usage and usage.prompt_tokens else tokens_in,
            tokens_out=usage.completion_tokens if usage and usage.completion_tokens else None,
            breaker_state=self.permit.state,
            is_retry=self.info.is_retry,
            is_failover=self.info.is_failover,
            grounding=self.info.grounding,
            confidence=self.confidence.result(),
        )
        self.model = request.model
        self.usage = Usage(prompt_tokens=event.tokens_in, completion_tokens=event.tokens_out)
        self.ctx.telemetry.publish(event)
        tokens = (event.tokens_in, event.tokens_out) if outcome is Outcome.SUCCESS else None
        attempt_ended(
            self.ctx.metrics,
            self.span,
            self.config,
            request.model,
            self.clock,
            event,
            finish,
            tokens,
        )
        await asyncio.shield(
            self._update_health(outcome, retry_after, event.latency_ms, event.ttft_ms)
        )

    async def _update_health(
        self, outcome: Outcome, retry_after: float, latency_ms: float, ttft_ms: float | None
    ) -> None:
        """Breaker and live figures (``outcomes.py``)."""
        name = self.config.name
        try:
            transition = await self.ctx.outcomes.record(
                name,
                outcome,
                token=self.permit.token,
                retry_after_s=retry_after,
                latency_ms=latency_ms,
                ttft_ms=ttft_ms,
            )
            if transition:
                log.warning("breaker %s: %s -> %s", name, transition.old, transition.new)
                breaker_changed(self.ctx.metrics, transition)
        except Exception:
            log.exception("could not record the outcome of a call to %s", name)
