"""Where one answer's first token spends its time (``--timeline``), from Redis ``MONITOR``.

Each stage is the first command Redis ran for a request that marks it: the gateway's checks
(its first command naming the request), the job entry, the worker's take (the epoch's
increment), its first ``delta`` and its final event. Scripts' own commands are named, so no
script hash matters; Redis lists a command once it ran. Joined with the client's marks
(response head, first token, end) and the time the fake upstream received the request, all
as milliseconds after the client began (its connect included), and per answer as the time
since its previous stage. The rounds run with ``MONITOR`` on are extra ones, kept out of the
latency and CPU figures (``MONITOR`` costs Redis CPU and adds to every stage).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from deploy.bench import measure
from deploy.bench.client import Stream

STAGES = (  # name, label, the stage it follows ("": the client's start)
    ("checks", "gateway: first command for the request (checks)", ""),
    ("job_queued", "gateway: job entry added", "checks"),
    ("head", "client: response head", "job_queued"),
    ("taken", "worker: job taken (epoch written)", "job_queued"),
    ("upstream", "upstream: request received", "taken"),
    ("first_stamp", "upstream: first token sent", "upstream"),
    ("first_append", "worker: first delta appended", "first_stamp"),
    ("first_token", "client: first token", "first_append"),
    ("final", "worker: final event appended", "first_token"),
    ("end", "client: final event", "final"),
)


@dataclass(frozen=True, slots=True)
class Command:
    """One command Redis ran: when (CLOCK_MONOTONIC ns) and what, as redis-py gives MONITOR's
    line (arguments unquoted, joined by spaces: ``XADD key * v 1 type delta data {...}``)."""

    at_ns: int
    text: str


class Monitor:
    """Records every command one Redis runs while it is on (one connection, ``MONITOR``)."""

    def __init__(self, redis_url: str) -> None:
        self._redis = Redis.from_url(redis_url)
        self.commands: list[Command] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> Monitor:
        self._task = asyncio.create_task(self._record())
        ready = asyncio.create_task(self._ready.wait())
        await asyncio.wait({self._task, ready}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        if not self._ready.is_set():  # MONITOR refused, Redis away, or no answer in time
            ready.cancel()
            await self.__aexit__()
            raise RuntimeError("Redis MONITOR did not start")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError):
                await self._task
        await self._redis.aclose()

    async def _record(self) -> None:
        wall_to_mono = time.time_ns() - time.monotonic_ns()  # the same host's two clocks
        async with self._redis.monitor() as monitor:
            self._ready.set()
            while True:
                info = await monitor.next_command()
                at_ns = int(info["time"] * 1e9) - wall_to_mono
                self.commands.append(Command(at_ns, info["command"]))


def marks(stream: Stream, commands: Iterable[Command], upstream_ns: int | None) -> dict[str, float]:
    """The stages of one answer reached, in ms after the client began."""
    rid = stream.rid
    meta, events = f"req:{{{rid}}}:meta", f"req:{{{rid}}}:events"
    at: dict[str, int] = {}
    for command in commands:
        text = command.text
        if rid not in text:
            continue
        at.setdefault("checks", command.at_ns)
        if text.startswith("XADD") and ":jobs" in text.split(" ", 2)[1]:
            at.setdefault("job_queued", command.at_ns)
        elif text.startswith("HINCRBY") and meta in text and "epoch" in text:
            at.setdefault("taken", command.at_ns)
        elif text.startswith("XADD") and events in text:
            kind = _entry_type(text)
            if kind == "delta":
                at.setdefault("first_append", command.at_ns)
            elif kind in ("done", "error"):
                at.setdefault("final", command.at_ns)
    client = {
        "head": stream.head_ns,
        "first_stamp": stream.first_stamp,
        "first_token": stream.first_token_ns,
        "end": stream.end_ns,
        "upstream": upstream_ns or 0,
    }
    at.update({name: ns for name, ns in client.items() if ns})
    return {name: (ns - stream.start_ns) / 1e6 for name, ns in at.items()}


def _entry_type(text: str) -> str:
    """The ``type`` field of an events ``XADD`` (the first ``type`` argument: its data follows)."""
    _, found, rest = text.partition(" type ")
    return rest.partition(" ")[0] if found else ""


def summarize(
    streams: list[Stream], commands: list[Command], upstream: Mapping[str, int]
) -> dict[str, Any]:
    """Per stage, over the answers that reached it, quantiles of when (ms after the client
    began) and of the step from the stage it follows (the same answer's)."""
    per_stage: dict[str, list[float]] = {name: [] for name, _, _ in STAGES}
    steps: dict[str, list[float]] = {name: [] for name, _, _ in STAGES}
    by_rid: dict[str, list[Command]] = {s.rid: [] for s in streams}
    for command in commands:  # a request id is in the keys of its commands: one scan
        for rid in by_rid:
            if rid in command.text:
                by_rid[rid].append(command)
    for stream in streams:
        if stream.error:
            continue
        at = marks(stream, by_rid[stream.rid], upstream.get(stream.rid)) | {"": 0.0}
        for name, _, after in STAGES:
            if name in at:
                per_stage[name].append(at[name])
                if after in at:
                    steps[name].append(at[name] - at[after])
    return {
        "answers": sum(1 for s in streams if not s.error),
        "stages": {name: measure.quantiles(v, scale=1.0) for name, v in per_stage.items()},
        "steps": {name: measure.quantiles(v, scale=1.0) for name, v in steps.items()},
    }


def markdown(timeline: Mapping[str, Any] | None) -> str:
    if not timeline:
        return ""
    lines = [
        f"### Where the first token's time goes at 1 stream ({timeline['answers']} answers, "
        "extra rounds with Redis MONITOR on)",
        "",
        "ms after the client began (its connect included); each stage is the first time Redis "
        "(or the client, or the fake upstream) saw it; the step is the time since the stage it "
        "follows, per answer. MONITOR adds to every stage.",
        "",
        "| stage | p50 | p95 | step from | step p50 | step p95 | n |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for name, label, after in STAGES:
        q, step = timeline["stages"][name], timeline["steps"][name]
        lines.append(
            f"| {label} | {_ms(q['p50'])} | {_ms(q['p95'])} | {after or 'start'} "
            f"| {_ms(step['p50'])} | {_ms(step['p95'])} | {q['n']} |"
        )
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"
