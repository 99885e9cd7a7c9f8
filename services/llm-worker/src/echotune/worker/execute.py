"""One held job from take to final: fencing, cancel, deadline, shutdown, acknowledgement."""

from __future__ import annotations

import asyncio
import logging
import time

from redis.exceptions import RedisClusterException, RedisError

from echotune.common import job_queue, scripts
from echotune.common.breaker import ACQUIRE, Permit
from echotune.common.logs import request_id_var
from echotune.common.messages import (
    EVENTS_LOST,
    ChatEvent,
    ChatJob,
    DoneEvent,
    FailoverEvent,
    FinishReason,
    deadline_exceeded,
    internal_error,
)
from echotune.common.request_stream import TAKE, AppendRefused, Final, Take, Taken
from echotune.common.stop_reasons import CANCELLED, ENDED, FENCED
from echotune.worker.inflight import InFlight
from echotune.worker.jobs import JobRunner, provider_chain, shutdown_error, starts_with_own
from echotune.worker.observability import job_ended, job_span, job_taken, permitted
from echotune.worker.resources import Worker
from echotune.worker.writer import EventWriter, Refused, WriteFailed

log = logging.getLogger(__name__)


async def execute(ctx: Worker, job: ChatJob, held: InFlight, *, first: bool) -> bool:
    """Run one held job to its end; whether its entry may be acknowledged.

    ``False`` when another worker took the job over (its entry is theirs; or, still this
    worker's, acknowledged here) or the run left it for a reclaim (Redis away, or lost this
    take). ``first``: the entry's first delivery (not a reclaim).
    """
    token = request_id_var.set(held.request_id)
    keys, consumer = ctx.settings.keys, ctx.settings.consumer
    try:
        with job_span(job.traceparent, held.request_id, held.entry_id, keys.jobs, consumer):
            return await _execute(ctx, job, held, first)
    finally:
        request_id_var.reset(token)


async def _let_go(ctx: Worker, held: InFlight, taken: Taken) -> None:
    """A run that ended unacknowledged. Fenced off by a later take (whatever stopped it
    first), it acknowledges its entry if the entry is still this worker's: that take came
    through another entry of the job (a retried publication), which carries the job now; left
    pending, this one would be reclaimed and take the job over in turn, every reclaim period.
    Its own fence still stored (it was stopped before its take landed, or its final could not
    be written), an earlier epoch (Redis lost its take) or a take through this very entry
    (reclaimed from this run, then back from a taker that died): the entry is left for a
    reclaim."""
    settings = ctx.settings
    try:
        fence, through, epoch = await ctx.streams.current_take(held.request_id)
        if fence == taken.fence or epoch < taken.epoch or through == held.entry_id:
            log.warning("this run was not taken over; its entry is left for a reclaim")
        elif await job_queue.let_go(ctx.redis, settings.keys, settings.consumer, held.entry_id):
            log.info("taken over through another entry of the job; this one acknowledged")
    except (RedisError, RedisClusterException):
        log.warning("could not let the entry go; left for a reclaim", exc_info=True)


async def _hand_back(ctx: Worker, held: InFlight, duplicate: Taken) -> None:
    """The jobs stream lost this entry's delivery and gave it again: the run that has the job
    came through this very entry, so the entry goes back to that run's worker, not to an
    acknowledgement, which would leave the job with no entry to reclaim should it die.

    A take meanwhile through another entry may have fenced that run off and had it let go
    already: the entry handed to it is then acknowledged, not left for a reclaim that would
    take the job over from the live run. Not when Redis lost the take instead (no later one
    stored): the entry is that run's, to leave for a reclaim."""
    settings, entry, owner = ctx.settings, held.entry_id, duplicate.owner
    if owner == settings.consumer:
        return  # a run of this process holds it
    try:
        if not await job_queue.hand_over(ctx.redis, settings.keys, settings.consumer, entry, owner):
            return  # not this worker's any more
        log.warning("job taken through this entry by %s; the entry is handed back", owner)
        fence, through, epoch = await ctx.streams.current_take(held.request_id)
        later = fence != duplicate.fence and epoch >= duplicate.epoch
        if later and through not in ("", entry):
            await job_queue.let_go(ctx.redis, settings.keys, owner, entry)
    except (RedisError, RedisClusterException):
        log.warning("could not hand the entry back; left for a reclaim", exc_info=True)


async def _execute(ctx: Worker, job: ChatJob, held: InFlight, first: bool) -> bool:
    if held.reason == FENCED:  # reclaimed by another worker while it waited for a slot
        return False
    chain = provider_chain(ctx, job)
    taken, permit = await _take(ctx, job, held, first, ask_breaker=starts_with_own(job, chain))
    if taken.state is not Take.TAKEN:
        if permit is not None:
            await ctx.breakers.give_back(permit)
        if taken.state is Take.DUPLICATE and taken.entry == held.entry_id:
            await _hand_back(ctx, held, taken)
            return False  # the entry is the run's that has the job
        log.info("job %s before it started; acknowledging it", taken.state.value)
        return True
    held.fence = taken.fence
    log.info("job taken (epoch %d) provider=%s model=%s", taken.epoch, job.provider, job.model)
    job_taken(ctx.metrics, held.entry_id, taken.epoch)
    writer = EventWriter(
        ctx.flusher,
        job.request_id,
        taken.fence,
        on_cancel=lambda: held.stop(CANCELLED),
        on_refused=lambda why: held.stop(FENCED if why is AppendRefused.FENCED else ENDED),
        restart=_starting_over(job, EVENTS_LOST),
        stamp=ctx.settings.stamp_tokens,
    )
    runner = JobRunner(ctx, job, writer, chain, permit)
    try:
        acknowledge = await _run(ctx, job, held, taken, runner, _restart(job, taken, first))
    except asyncio.CancelledError:  # the worker's shutdown: fenced off meanwhile, let go too
        if not held.ended:
            await asyncio.shield(_let_go(ctx, held, taken))
        raise
    finally:
        writer.close()
    if not acknowledge:  # fenced off, whatever stopped it first; or left for a reclaim
        await asyncio.shield(_let_go(ctx, held, taken))  # the shutdown may come meanwhile
    return acknowledge


def _restart(job: ChatJob, taken: Taken, first: bool) -> FailoverEvent | None:
    """How a taken-over answer starts: ``worker_lost`` when its last worker had streamed; on a
    reclaim the store says nobody took, ``events_lost``: a failover may have lost that take
    and what its worker wrote, which clients may have seen."""
    if taken.epoch > 1 and taken.streamed:
        reason = "worker_lost"
    elif not first and taken.epoch == 1:
        reason = EVENTS_LOST
    else:
        return None
    return _starting_over(job, reason)


def _starting_over(job: ChatJob, reason: str) -> FailoverEvent:
    """The event that starts the job's answer over on its own provider."""
    return FailoverEvent(
        from_provider=job.provider,
        to_provider=job.provider,
        to_model=job.model,
        reason=reason,
        discard_partial=True,
    )


async def _take(
    ctx: Worker, job: ChatJob, held: InFlight, first: bool, *, ask_breaker: bool
) -> tuple[Taken, Permit | None]:
    """Take the job and, with ``ask_breaker`` (the first attempt calls the job's provider), ask its
    breaker in the same round trip (no permit if that part failed: the attempt asks again)."""
    owner, rid, entry = ctx.settings.consumer, job.request_id, held.entry_id
    if not ask_breaker:
        return await ctx.streams.take(rid, owner, first=first, entry=entry), None
    async with ctx.redis.pipeline(transaction=False) as pipe:
        ctx.streams.queue_take(pipe, rid, owner, first=first, entry=entry)
        ctx.breakers.queue_acquire(pipe, job.provider)
        took, acquired = await scripts.execute(ctx.redis, pipe, [TAKE, ACQUIRE])
    permit = None
    if isinstance(acquired, Exception):
        log.warning("breaker of %s not asked with the take: %s", job.provider, acquired)
    else:
        permit = ctx.breakers.permit(job.provider, acquired)
        permitted(ctx.metrics, permit)
    if isinstance(took, Exception):
        if permit is not None:
            await ctx.breakers.give_back(permit)
        raise took
    return ctx.streams.taken(took), permit


async def _run(
    ctx: Worker,
    job: ChatJob,
    held: InFlight,
    taken: Taken,
    runner: JobRunner,
    restart: FailoverEvent | None,
) -> bool:
    if taken.cancelled:
        held.stop(CANCELLED)
    writer = runner.writer
    try:
        final = await _produce(job, held, runner, writer, restart)
        try:  # all of it stored before the turn is recorded and the final chosen
            await writer.flush()
        except WriteFailed:  # some text was given up: the answer is not whole
            final = internal_error(partial=bool(runner.partial))
        if held.reason in (FENCED, ENDED):
            log.warning("the answer was ended or taken over elsewhere; this run stops")
            return held.reason == ENDED
        done = isinstance(final, DoneEvent) and final.finish_reason is not FinishReason.CANCELLED
        if done and not await _record_turn(ctx, job, held, "".join(runner.partial), taken):
            log.warning("the answer was taken over elsewhere; this run stops")
            return False
        job_ended(ctx.metrics, final, held.reason)
        return await _end(writer, final, held, job.deadline_at)
    except Refused as refused:
        return refused.why is not AppendRefused.FENCED
    except asyncio.CancelledError:
        # The worker is shutting down, wherever this run was: end the answer first.
        if held.reason == ENDED:
            held.ended = True
        elif held.reason != FENCED:
            end = runner.cancelled() if held.reason else shutdown_error(bool(runner.partial))
            job_ended(ctx.metrics, end, held.reason)
            held.ended = await asyncio.shield(_end(writer, end, held, job.deadline_at))
        raise
    finally:
        await runner.give_back()  # the permit asked with the take, when no attempt used it


async def _record_turn(
    ctx: Worker, job: ChatJob, held: InFlight, answer: str, taken: Taken
) -> bool:
    """Recorded before the client hears ``done``, so its next message sees the turn; only
    while this run's fence is the job's (whether it still is). A producer whose take Redis
    lost shares its epoch with the next one: should Redis lose the take after this check,
    the next run's turn, of a later take time, still replaces this one."""
    if not ctx.conversations.records(job):
        return True
    try:
        fence, _, _ = await ctx.streams.current_take(job.request_id)
        if fence != held.fence:
            held.stop(FENCED)
            return False
    except (RedisError, RedisClusterException):
        pass  # Redis away: the final's write, retried, decides
    await ctx.conversations.append(job, answer, taken.epoch, taken.at)
    return True


async def _produce(
    job: ChatJob,
    held: InFlight,
    runner: JobRunner,
    writer: EventWriter,
    restart: FailoverEvent | None = None,
) -> ChatEvent:
    """The final event; the answer is produced in a task that a cancel can stop at once."""
    if held.reason is not None:
        return runner.cancelled()
    if restart is not None:  # the answer starts over
        writer.emit(restart)
    held.task = task = asyncio.create_task(runner.produce())
    try:
        async with asyncio.timeout(max(job.deadline_at - time.time(), 0.001)):
            return await task
    except TimeoutError:
        return deadline_exceeded(partial=bool(runner.partial))
    except asyncio.CancelledError:
        if held.reason is None:  # the worker is shutting down (see _run)
            raise
        return runner.cancelled()
    except (Refused, RedisError, RedisClusterException):  # fenced or ended elsewhere; Redis
        raise  # away (a cluster's slot too): left for a reclaim
    except Exception:  # a bug fails every worker alike: end the answer, do not leave it pending
        log.exception("the answer failed on an internal error")
        return internal_error(partial=bool(runner.partial))


async def _end(writer: EventWriter, final: ChatEvent, held: InFlight, deadline_at: float) -> bool:
    """Write the final event, retrying while Redis is unreachable (a finished answer is not
    thrown away over a blip); whether the entry may be acknowledged."""
    attempt = 0
    while True:
        try:
            outcome = await writer.final(final)
            break
        except Refused as refused:
            return refused.why is not AppendRefused.FENCED
        except RedisError as exc:
            attempt += 1
            if time.time() >= deadline_at:
                log.error("final %s not written before the deadline: %s", final.type, exc)
                return False  # left pending: whoever reclaims it ends it
            await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
    if outcome is not Final.WRITTEN:
        log.warning("final %s not written: %s", final.type, outcome.value)
    if outcome is Final.FENCED:
        held.stop(FENCED)
    return outcome not in (Final.FENCED, Final.LOST)  # lost again and again: left for a reclaim
