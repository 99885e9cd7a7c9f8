"""What a chaos run recorded: every client-side event, every fault, every service process.

Times ``*_ns`` are ``time.monotonic_ns()`` (CLOCK_MONOTONIC, the same clock in every process
of the host: the fake upstream's records use it too); ``wall_offset_s`` converts them to Unix
time (service logs and MongoDB documents carry wall-clock times).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FINAL_TYPES = ("done", "error")


def now_ns() -> int:
    return time.monotonic_ns()


@dataclass
class Seen:
    """One event as the client received it. SSE: the event's type, id and JSON data; the
    OpenAI door: ``delta`` (``{"delta": text}``), ``done`` (``{"finish_reason"}``) or
    ``error`` (the error object, plus ``status`` when it was the HTTP answer)."""

    t_ns: int
    conn: int
    type: str
    id: str | None
    data: dict[str, Any]

    @property
    def is_final(self) -> bool:
        return self.type in FINAL_TYPES


@dataclass
class Connection:
    """One HTTP request a session made (a start, a retried start or a resume)."""

    purpose: str  # start | resume
    gateway: int
    t_open_ns: int
    last_event_id: str | None = None
    t_close_ns: int = 0
    status: int | None = None
    error: str | None = None  # transport error, or the error body of a refused request
    end: str = ""  # final | disconnect | broken | eof | refused | deadline


@dataclass
class CancelCall:
    """``POST /api/chat/{id}/cancel`` as the client made it (retried on another gateway)."""

    gateway: int
    t_sent_ns: int  # the try that got an answer
    t_returned_ns: int = 0
    status: int | None = None
    state: str | None = None  # cancelling | finished
    failures: list[str] = field(default_factory=list)


@dataclass
class Session:
    """One client reading one request, across reconnections."""

    request_id: str
    kind: str
    role: str  # primary | duplicate
    t_begin_ns: int
    connections: list[Connection] = field(default_factory=list)
    events: list[Seen] = field(default_factory=list)
    cancel: CancelCall | None = None
    gave_up: str | None = None  # why the session ended without a final event

    @property
    def finals(self) -> list[Seen]:
        return [e for e in self.events if e.is_final]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Session:
        cancel = CancelCall(**data["cancel"]) if data.get("cancel") else None
        return cls(
            **{
                **data,
                "connections": [Connection(**c) for c in data["connections"]],
                "events": [Seen(**e) for e in data["events"]],
                "cancel": cancel,
            }
        )


@dataclass
class FaultRecord:
    """A fault as it happened: ``t_ns`` it was injected, ``t_up_ns`` the target was back."""

    index: int
    kind: str
    target: str  # a process name (``worker2#1``), ``redis``, ``mongodb`` or a provider
    t_ns: int
    t_up_ns: int = 0
    note: str = ""


@dataclass
class ProcessLife:
    """One incarnation of a service process and how it ended."""

    name: str  # worker1#2: slot 1, second incarnation
    role: str  # gateway | worker | telemetry | fake-llm
    t_start_ns: int
    t_end_ns: int = 0
    ended_by: str = ""  # SIGKILL | SIGTERM | stop (end of run)
    lines: list[str] = field(default_factory=list)


@dataclass
class History:
    seed: int
    duration_s: float
    wall_offset_s: float  # Unix time = monotonic_ns / 1e9 + wall_offset_s
    t0_ns: int
    plan: dict[str, Any]
    sessions: list[Session] = field(default_factory=list)
    faults: list[FaultRecord] = field(default_factory=list)
    processes: list[ProcessLife] = field(default_factory=list)
    upstream: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    server_events: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    server_meta: dict[str, dict[str, str]] = field(default_factory=dict)
    telemetry: list[dict[str, Any]] = field(default_factory=list)
    telemetry_drained: bool = False
    redis: dict[str, Any] = field(default_factory=dict)
    load: dict[str, Any] = field(default_factory=dict)
    t_end_ns: int = 0

    def wall(self, t_ns: int) -> float:
        return t_ns / 1e9 + self.wall_offset_s

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), default=str))

    @classmethod
    def load_file(cls, path: Path) -> History:
        data = json.loads(path.read_text())
        return cls(
            **{
                **data,
                "sessions": [Session.from_dict(s) for s in data["sessions"]],
                "faults": [FaultRecord(**f) for f in data["faults"]],
                "processes": [ProcessLife(**p) for p in data["processes"]],
            }
        )
