"""One chat job: walk the provider chain with retries and failover, end the stream once."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from echotune.common.breaker import Permit
from echotune.common.capabilities import refusals
from echotune.common.completion import CompletionFeatures
from echotune.common.messages import (
    ChatEvent,
    ChatJob,
    ChatMessage,
    DoneEvent,
    ErrorCode,
    ErrorEvent,
    FailoverEvent,
    FinishReason,
    Grounding,
    LogprobsUse,
    RetryEvent,
    Role,
    Timings,
    Usage,
)
from echotune.common.providers import ProviderConfig
from echotune.worker.attempt import Attempt, AttemptInfo, MidStreamFailure
from echotune.worker.confidence import ConfidenceMeter
from echotune.worker.conversations import ConversationContext
from echotune.worker.observability import failed_over, permitted, retried, skipped, waited
from echotune.worker.prompt import Prompt, build_prompt
from echotune.worker.providers.base import ProviderError, ProviderRequest
from echotune.worker.resources import Worker
from echotune.worker.retry import backoff_delay, is_retryable, refused_the_request
from echotune.worker.writer import EventWriter

log = logging.getLogger(__name__)

CONTINUE_PROMPT = "Continue your previous answer exactly where it stopped, without repeating it."


Chain = list[tuple[ProviderConfig, str]]


def provider_chain(ctx: Worker, job: ChatJob) -> Chain:
    """The providers the job may call, in order, each with its model: the job's own, then its
    fallbacks; one unknown here or unable to honour the job is skipped."""
    chain: Chain = []
    for index, name in enumerate(dict.fromkeys([job.provider, *job.fallbacks])):
        config = ctx.registry.get(name)
        if config is None:
            continue
        if refused := refusals(config.kind, job.features, job.messages):
            log.info("provider %s skipped: cannot honour %s", name, refused[0].param)
            continue
        chain.append((config, job.model if index == 0 else config.model))
    return chain


def starts_with_own(job: ChatJob, chain: Chain) -> bool:
    """Whether the chain's first attempt calls the job's own provider."""
    return bool(chain) and chain[0][0].name == job.provider


class Skip(Exception):
    """The provider is not called now (open breaker, rate-limit cool-down)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JobRunner:
    """Produces the events of one ``ChatJob`` through the writer of the worker that holds it."""

    def __init__(
        self,
        ctx: Worker,
        job: ChatJob,
        writer: EventWriter,
        chain: Chain,
        permit: Permit | None = None,
    ) -> None:
        """``chain``: the job's ``provider_chain``; ``permit``: the job provider's, asked along
        with the take (used by the first attempt if it was granted, else given back)."""
        self.ctx, self.job, self.writer, self.chain = ctx, job, writer, chain
        self._spare = permit
        self.context = ConversationContext()
        self.prompt: Prompt | None = None
        self.attempts = 0
        self.first_token_at: float | None = None
        self.partial: list[str] = []
        self.confidence = ConfidenceMeter()
        self.last_call: Attempt | None = None

    async def produce(self) -> ChatEvent:
        """Load context and listening profile (together, each bounded), build the prompt, then
        walk the provider chain; the final event."""
        self.context, profile = await asyncio.gather(
            self.ctx.conversations.context(self.job), self.ctx.profiles.load(self.job)
        )
        max_chars = self.ctx.settings.profile_max_chars
        self.prompt = build_prompt(self.job, self.context, profile, max_chars)
        return await self._produce()

    def cancelled(self) -> DoneEvent:
        """The end of a cancelled answer, named after the call that was answering."""
        call = self.last_call
        if call is None:
            config = self.ctx.registry.get(self.job.provider)
            return self._done(FinishReason.CANCELLED, config, self.job.provider, self.job.model)
        return self._done(
            FinishReason.CANCELLED, call.config, call.config.name, call.model, call.usage
        )

    def _grounding(self, config: ProviderConfig | None) -> Grounding | None:
        """What the answer was grounded in (``None`` before the prompt was built)."""
        if self.prompt is None:
            return None
        return Grounding(
            profile=self.prompt.profile_use,
            context_turns=self.context.usage.turns,
            prompt=self.prompt.summary(),
            logprobs=self._logprobs_use(config),
        )

    def _logprobs_use(self, config: ProviderConfig | None) -> LogprobsUse:
        if config is None or not config.offers_logprobs:
            return LogprobsUse.NOT_OFFERED
        features = self._features(config)
        asked = features is not None and bool(features.logprobs)
        return LogprobsUse.REQUESTED if asked else LogprobsUse.NOT_REQUESTED

    def _done(
        self,
        reason: FinishReason,
        config: ProviderConfig | None,
        provider: str,
        model: str,
        usage: Usage | None = None,
    ) -> DoneEvent:
        total_ms = (datetime.now(UTC) - self.job.created_at).total_seconds() * 1000
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
            context=self.context.usage,
            grounding=self._grounding(config),
            confidence=self.confidence.result(),
        )

    @property
    def _continue_on_failure(self) -> bool:
        features = self.job.features
        if features is not None and (features.tools or features.wants_json):
            return False  # a tool call or a JSON document cannot be continued by another model
        opt_in = self.job.options.continue_on_failure
        return self.ctx.settings.continue_on_failure if opt_in is None else opt_in

    async def _produce(self) -> ChatEvent:
        """Try each provider of the chain in turn; the final event to write."""
        chain, reason, continuing = self.chain, "unavailable", False
        refusal: tuple[str, ProviderError] | None = None  # while every provider refused it
        for index, (config, model) in enumerate(chain):
            if index > 0:
                previous = chain[index - 1][0].name
                failed_over(self.ctx.metrics, previous, config.name, reason, continuing)
                self.writer.emit(
                    FailoverEvent(
                        from_provider=previous,
                        to_provider=config.name,
                        to_model=model,
                        reason=reason,
                        continues_partial=continuing,
                    )
                )
            refused, refusal = refusal is not None or index == 0, None
            try:
                return await self._with_retries(config, model, index > 0, continuing)
            except Skip as skip:
                reason = skip.reason
                skipped(self.ctx.metrics, config.name, reason)
            except ProviderError as error:
                reason = error.code
                if refused and refused_the_request(error):
                    refusal = (config.name, error)
            except MidStreamFailure as failure:
                reason = failure.error.code
                if not (self._continue_on_failure and index + 1 < len(chain)):
                    return _partial_error(config.name, reason)
                continuing = True
            log.warning("provider %s gave up: %s", config.name, reason)
        if refusal is not None:
            return _refused(*refusal, partial=bool(self.partial))
        return ErrorEvent(
            code=ErrorCode.ALL_PROVIDERS_FAILED,
            message=f"no provider could answer (last reason: {reason})",
            retryable=True,
            partial=bool(self.partial),
        )

    async def _with_retries(
        self, config: ProviderConfig, model: str, is_failover: bool, continuing: bool
    ) -> ChatEvent:
        settings = self.ctx.settings
        for attempt in range(1, settings.retry_attempts + 1):
            permit = await self._permit(config.name)
            self.attempts += 1
            call = Attempt(
                self.ctx,
                self.job,
                self.writer,
                config,
                permit,
                AttemptInfo(self.attempts, attempt > 1, is_failover, self._grounding(config)),
            )
            try:
                finish = await call.run(self._request(config, model, continuing))
            except ProviderError as error:
                if not is_retryable(error) or attempt == settings.retry_attempts:
                    raise
                await self._wait_before_retry(config.name, attempt, error)
                continue
            finally:
                self._absorb(call)
            return self._done(finish.reason, config, config.name, model, finish.usage)
        raise AssertionError("unreachable")

    def _absorb(self, call: Attempt) -> None:
        self.last_call = call
        if self.first_token_at is None:
            self.first_token_at = call.first_token_at
        self.partial.extend(call.text)
        self.confidence.merge(call.confidence)

    async def give_back(self) -> None:
        """Give back the permit asked with the take if no attempt used it."""
        spare, self._spare = self._spare, None
        if spare is not None:
            await self.ctx.breakers.give_back(spare)

    async def _permit(self, provider: str) -> Permit:
        """The breaker's permit; waits out a short rate-limit cool-down, skips an open breaker.

        The permit asked with the take is used if it was granted for ``provider``; a refusal
        is asked again (the prompt's build may have outlasted it)."""
        spare = self._spare
        if spare is not None and not (spare.allowed and spare.provider == provider):
            await self.give_back()
        while True:
            permit, self._spare = self._spare, None
            if permit is None:
                permit = await self.ctx.breakers.acquire(provider)
                permitted(self.ctx.metrics, permit)
            if permit.allowed:
                return permit
            wait = (permit.retry_at or 0) - time.time()
            cap = self.ctx.settings.retry_after_cap_s
            if (
                permit.reason != "rate_limited"
                or wait > cap
                or time.time() + wait >= self.job.deadline_at
            ):
                raise Skip(permit.reason or "unavailable")
            waited(provider, wait)
            await asyncio.sleep(max(wait, 0.01))

    async def _wait_before_retry(self, provider: str, attempt: int, error: ProviderError) -> None:
        settings = self.ctx.settings
        delay = backoff_delay(
            attempt,
            base_s=settings.retry_base_s,
            cap_s=settings.retry_cap_s,
            retry_after_s=error.retry_after,
            retry_after_cap_s=settings.retry_after_cap_s,
        )
        if time.time() + delay >= self.job.deadline_at:
            raise error
        retried(self.ctx.metrics, provider, attempt, delay, error.code)
        self.writer.emit(
            RetryEvent(
                provider=provider, attempt=attempt, delay_ms=round(delay * 1000), reason=error.code
            )
        )
        await asyncio.sleep(delay)

    def _request(self, config: ProviderConfig, model: str, continuing: bool) -> ProviderRequest:
        assert self.prompt is not None  # built by produce() before the chain is walked
        messages = list(self.prompt.messages)
        if continuing and self.partial:
            messages += [
                ChatMessage(role=Role.ASSISTANT, content="".join(self.partial)),
                ChatMessage(role=Role.USER, content=CONTINUE_PROMPT),
            ]
        options = self.job.options
        return ProviderRequest(
            request_id=self.job.request_id,
            model=model,
            messages=messages,
            temperature=options.temperature,
            max_tokens=options.max_tokens,
            stop=options.stop,
            features=self._features(config),
            profile=self.prompt.profile,
        )

    def _features(self, config: ProviderConfig) -> CompletionFeatures | None:
        """The job's features; logprobs added for a chat (no features) when the provider is
        configured to give them (an OpenAI-door client asks for them itself)."""
        if self.job.features is None and config.logprobs:
            return CompletionFeatures(logprobs=True)
        return self.job.features


def _partial_error(provider: str, reason: str) -> ErrorEvent:
    return ErrorEvent(
        code=ErrorCode.PARTIAL_ANSWER,
        message=f"the provider failed mid-answer ({reason}); the answer is incomplete",
        partial=True,
        provider=provider,
    )


def _refused(provider: str, error: ProviderError, *, partial: bool) -> ErrorEvent:
    """Every provider refused the request itself: sending it again as is cannot help."""
    return ErrorEvent(
        code=ErrorCode.REQUEST_REFUSED,
        message=f"the provider refused the request (HTTP {error.status})",
        provider=provider,
        partial=partial,
        retryable=False,
    )


def shutdown_error(partial: bool) -> ErrorEvent:
    return ErrorEvent(
        code=ErrorCode.SHUTDOWN,
        message="the worker shut down before the answer was complete",
        partial=partial,
        retryable=True,
    )
