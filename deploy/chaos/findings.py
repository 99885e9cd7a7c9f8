"""What the checks find: violations, excused cases, cancel figures; shared readers of events."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from deploy.chaos.history import History, Seen, Session

INVARIANTS = {
    "one_final": "exactly one final event (done or error) per client session",
    "event_ids": "SSE event ids strictly increasing with no duplicates, across resumes, and "
    "no stored event skipped",
    "text": "the client's text (after discard_partial) is the upstream text of the attempt "
    "that finished, or a prefix of it under an error that says partial (or a cancel)",
    "single_runner": "no two runners produce for one request at the same time "
    "(no overlapping upstream attempts)",
    "cancel": "every acknowledged cancel (202) ends the answer `cancelled` within 1 s",
    "drained": "no request is left without its final event once the run drains",
    "telemetry": "one MongoDB document per upstream attempt, none duplicated",
    "redis": "after the TTLs, keys and memory return to the baseline",
    "harness": "the run's own evidence is readable",
}
CANCEL_BOUND_MS = 1000.0


@dataclass
class Violation:
    invariant: str
    request_id: str | None
    detail: str
    hint: str = ""


@dataclass
class Findings:
    violations: list[Violation] = field(default_factory=list)
    excused: list[tuple[str, str | None, str]] = field(default_factory=list)
    cancel_latencies_ms: list[float] = field(default_factory=list)
    cancel_outcomes: dict[str, int] = field(default_factory=dict)

    def add(self, invariant: str, request_id: str | None, detail: str, hint: str = "") -> None:
        self.violations.append(Violation(invariant, request_id, detail, hint))

    def excuse(self, invariant: str, request_id: str | None, why: str) -> None:
        self.excused.append((invariant, request_id, why))

    def count(self, outcome: str) -> None:
        self.cancel_outcomes[outcome] = self.cancel_outcomes.get(outcome, 0) + 1


def parse_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def final_of(session: Session) -> Seen | None:
    finals = session.finals
    return finals[0] if finals else None


def label(event: Seen | dict[str, Any] | None) -> str:
    """``done:stop``, ``error:partial_answer``… of an event (a Seen or a stored event)."""
    if event is None:
        return "none"
    kind, data = (event.type, event.data) if isinstance(event, Seen) else stored(event)
    detail = data.get("finish_reason") if kind == "done" else data.get("code")
    return f"{kind}:{detail}"


def stored(event: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return str(event["type"]), json.loads(event["data"] or "{}")


def server_final(history: History, request_id: str) -> dict[str, Any] | None:
    events = history.server_events.get(request_id) or []
    return next((e for e in events if e["type"] in ("done", "error")), None)
