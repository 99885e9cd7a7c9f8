"""Facts the checks share: which worker process ran which request (from the workers' logs),
when processes died, when Redis was restarting, each request's upstream attempts."""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from deploy.chaos.history import History

LOG_LINE = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<level>\w+) \S+ \S+ "
    r"\[rid=(?P<rid>[^\]]*)\] (?P<message>.*)$"
)
# what a worker says about one request (worker/execute.py, telemetry.py), by its message
WORKER_EVENTS = (
    (re.compile(r"^job taken \(epoch 1\)"), "started"),
    (re.compile(r"^job taken \(epoch \d+\)"), "reclaimed"),
    (re.compile(r"^job \w+ before it started"), "already_ended"),
    (re.compile(r"^final \w+ not written"), "final_refused"),
    (re.compile(r"^another worker took the job over"), "fenced"),
    (re.compile(r"^telemetry event"), "telemetry_lost"),
)
RUNNING = ("started", "reclaimed")
BREAKER = re.compile(r"breaker (\S+): (\S+) -> (\S+)")


@dataclass(frozen=True)
class Run:
    """One worker log line about one request."""

    process: str
    what: str
    wall: float
    message: str


@dataclass
class Evidence:
    history: History
    runs: dict[str, list[Run]] = field(default_factory=lambda: defaultdict(list))
    breaker_trips: list[tuple[str, str, str, str]] = field(default_factory=list)
    kills: list[tuple[int, str]] = field(default_factory=list)  # (t_ns, process) of SIGKILLs
    redis_down: list[tuple[int, int]] = field(default_factory=list)
    attempts: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @classmethod
    def of(cls, history: History) -> Evidence:
        evidence = cls(history)
        for life in history.processes:
            if life.role == "worker":
                evidence._read_worker_log(life.name, life.lines)
            if life.ended_by == "SIGKILL":
                evidence.kills.append((life.t_end_ns, life.name))
        evidence.redis_down = [
            (f.t_ns, f.t_up_ns or history.t_end_ns)
            for f in history.faults
            if f.kind.startswith("redis_")
        ]
        evidence.attempts = {
            key: sorted(attempts, key=lambda a: a["started_ns"])
            for key, attempts in history.upstream.items()
        }
        return evidence

    def _read_worker_log(self, process: str, lines: list[str]) -> None:
        for line in lines:
            match = LOG_LINE.match(line)
            if match is None:
                continue
            message = match["message"]
            if found := BREAKER.search(message):
                self.breaker_trips.append((process, found[1], found[2], found[3]))
            what = next((w for p, w in WORKER_EVENTS if p.search(message)), None)
            if what is None or match["rid"] == "-":
                continue
            wall = datetime.strptime(match["at"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            self.runs[match["rid"]].append(Run(process, what, wall, message))

    def runners(self, request_id: str) -> list[str]:
        """Worker processes that started or reclaimed the request, in log order."""
        seen = [r.process for r in self.runs.get(request_id, []) if r.what in RUNNING]
        return list(dict.fromkeys(seen))

    def killed_runner(self, request_id: str, start_ns: int, end_ns: int) -> str | None:
        """A worker that ran the request and was SIGKILLed between the two times."""
        runners = set(self.runners(request_id))
        for t_ns, process in self.kills:
            if process in runners and start_ns <= t_ns <= end_ns:
                return process
        return None

    def killed_between(self, start_ns: int, end_ns: int) -> str | None:
        """A worker SIGKILLed between the two times, if any."""
        return next((p for t, p in self.kills if start_ns <= t <= end_ns), None)

    def redis_restarting(self, start_ns: int, end_ns: int) -> bool:
        return any(down <= end_ns and up >= start_ns for down, up in self.redis_down)

    def redis_stalled_ms(self, start_ns: int, end_ns: int) -> int | None:
        """At most how long Redis' main thread was blocked between the two times, by its
        latency monitor (``None``: not monitored).

        Each event keeps its worst stall per second, stamped with the whole second it ended
        in; events overlap (``aof-write`` holds every ``aof-write-*``), so a second counts its
        worst stall once. A stall stamped in the first second may have ended before
        ``start_ns``: an upper bound, as an excuse may use.
        """
        stalls = self.history.redis.get("stalls")
        if stalls is None:
            return None
        begin, end = int(self.history.wall(start_ns)), self.history.wall(end_ns)
        worst: dict[int, int] = {}
        for at, ms in stalls:
            if begin <= at <= end:
                worst[int(at)] = min(max(worst.get(int(at), 0), int(ms)), 1000)
        return sum(worst.values())

    def describe_runs(self, request_id: str) -> str:
        runs = self.runs.get(request_id, [])
        t0 = self.history.wall(self.history.t0_ns)
        described = "; ".join(f"{r.process} {r.what} at +{r.wall - t0:.2f}s" for r in runs)
        return f"{described or 'no worker logged this request'} | {self.faults_during(request_id)}"

    def request_span(self, request_id: str) -> tuple[int, int]:
        """From the first client's start to the last event any client got."""
        sessions = [s for s in self.history.sessions if s.request_id == request_id]
        begin = min((s.t_begin_ns for s in sessions), default=0)
        end = max((e.t_ns for s in sessions for e in s.events), default=begin)
        return begin, max(end, *(c.t_close_ns for s in sessions for c in s.connections), end)

    def faults_during(self, request_id: str) -> str:
        begin, end = self.request_span(request_id)
        found = [
            f"{f.kind} {f.target} {self.since_t0(f.t_ns)}"
            for f in self.history.faults
            if f.t_ns <= end and (f.t_up_ns or self.history.t_end_ns) >= begin
        ]
        return f"faults meanwhile: {', '.join(found)}" if found else "no fault meanwhile"

    def since_t0(self, t_ns: int | None) -> str:
        return "-" if t_ns is None else f"+{(t_ns - self.history.t0_ns) / 1e9:.2f}s"
