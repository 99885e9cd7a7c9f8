"""The per-request invariants, checked over a recorded history.

Every violation names its request and says what was seen; a ``hint`` adds the evidence that
points at a cause (which workers ran the request, what Redis stored). Behaviour the design
allows is never a violation: such cases are counted as ``excused`` with the reason.
"""

from __future__ import annotations

from typing import Any

from deploy.chaos.evidence import Evidence
from deploy.chaos.findings import Findings, final_of, label, parse_id, server_final, stored
from deploy.chaos.history import History, Seen, Session


class RequestChecks:
    """Runs the per-request invariants of every session of a history."""

    def __init__(self, history: History, evidence: Evidence, findings: Findings) -> None:
        self.h, self.ev, self.f = history, evidence, findings

    def run(self) -> None:
        for session in self.h.sessions:
            self.finals(session)
            if session.kind.startswith("sse"):
                self.event_ids(session)
            self.text(session)
        for request_id, attempts in self.ev.attempts.items():
            self.single_runner(request_id, attempts)
        sse = {s.request_id for s in self.h.sessions if s.kind.startswith("sse")}
        for request_id in sorted(set(self.h.server_events) - sse):
            self.stored_partial(request_id)

    # --- one_final, drained -----------------------------------------------------------------

    def finals(self, s: Session) -> None:
        rid, finals = s.request_id, s.finals
        who = f"{s.role} {s.kind} client"
        if not finals:
            stored_final = server_final(self.h, rid)
            where = (
                f"Redis holds its final {label(stored_final)}: it was not delivered"
                if stored_final
                else "Redis holds no final event: the answer never ended"
            )
            conns = ", ".join(
                f"{c.purpose}@gw{c.gateway}:{c.status or c.end}" for c in s.connections[-6:]
            )
            meta = self.h.server_meta.get(rid)
            state = f"; its meta hash: {meta}" if meta else ""
            self.f.add(
                "drained",
                rid,
                f"{who} got no final event ({s.gave_up}); {where}{state}; last connections: "
                f"{conns}",
                self.ev.describe_runs(rid),
            )
            return
        first = s.events.index(finals[0])
        if len(finals) > 1 or first != len(s.events) - 1:
            after = [e.type for e in s.events[first + 1 :]]
            self.f.add("one_final", rid, f"{who}: {label(finals[0])} followed by {after}")
        if s.kind.startswith("sse") and finals[0].id is None:
            self.f.add(
                "drained",
                rid,
                f"{who}: the gateway ended the stream ({label(finals[0])}, no event id): "
                "the answer itself never ended",
                self.ev.describe_runs(rid),
            )

    # --- event_ids --------------------------------------------------------------------------

    def event_ids(self, s: Session) -> None:
        previous: Seen | None = None
        for event in s.events:
            if event.id is None:
                continue
            if previous is not None and parse_id(event.id) <= parse_id(previous.id or "0-0"):
                self.f.add(
                    "event_ids",
                    s.request_id,
                    f"{s.role} client: {event.type} id {event.id} after {previous.type} id "
                    f"{previous.id} (connections {previous.conn}->{event.conn})",
                )
                return
            previous = event
        self.no_gaps(s)

    def no_gaps(self, s: Session) -> None:
        """Each connection delivered every stored event after the position it asked for, up
        to the last one it got: none skipped, none invented."""
        stored = [e["id"] for e in self.h.server_events.get(s.request_id) or []]
        if not stored:
            return
        for index, conn in enumerate(s.connections):
            got = [e.id for e in s.events if e.conn == index and e.id]
            if not got:
                continue
            lower, upper = parse_id(conn.last_event_id or "0-0"), parse_id(got[-1])
            wanted = [i for i in stored if lower < parse_id(i) <= upper]
            if got != wanted:
                missed = [i for i in wanted if i not in got]
                extra = [i for i in got if i not in wanted]
                if not missed and self._replayed(s, set(stored)):
                    self.f.excuse(
                        "event_ids",
                        s.request_id,
                        "a failover lost entries the client had seen; the worker replayed the "
                        "answer behind an events_lost restart",
                    )
                    continue
                self.f.add(
                    "event_ids",
                    s.request_id,
                    f"{s.role} client, connection {index} ({conn.purpose} at gateway "
                    f"{conn.gateway}, after {conn.last_event_id or 'the start'}): "
                    f"{len(missed)} stored events never delivered {missed[:3]}…, "
                    f"{len(extra)} not stored {extra[:3]}",
                    self._sharing(s, index),
                )

    @staticmethod
    def _replayed(s: Session, stored: set[str]) -> bool:
        """Each delivered entry Redis no longer holds is followed, next among the stored ones
        the client got (on its connection or the one that resumed after it), by an
        ``events_lost`` restart: Redis lost them after acknowledging (request_stream.py). The
        worker's is stored; the gateway's, sent when the loss left no trace for the next
        producer to know of, is not (no id)."""
        events = [e for e in s.events if e.id or e.type == "failover"]
        for n, event in enumerate(events):
            if not event.id or event.id in stored:
                continue
            after = next((e for e in events[n + 1 :] if not e.id or e.id in stored), None)
            if after is None or after.type != "failover":
                return False
            data = after.data or {}
            if data.get("reason") != "events_lost" or not data.get("discard_partial"):
                return False
        return True

    def _sharing(self, s: Session, index: int) -> str:
        """Other clients of the same request on the same gateway at the same time."""
        conn = s.connections[index]
        others = [
            f"{o.role} client connection {i}"
            for o in self.h.sessions
            if o.request_id == s.request_id and o is not s
            for i, c in enumerate(o.connections)
            if c.gateway == conn.gateway and c.t_open_ns < conn.t_close_ns
            and (c.t_close_ns or self.h.t_end_ns) > conn.t_open_ns
        ]  # fmt: skip
        return f"read at the same time on that gateway by: {others}" if others else ""

    # --- text -------------------------------------------------------------------------------

    def stored_text(self, request_id: str) -> str:
        """The text in Redis, read as an SSE client would (discard_partial applied)."""
        text = ""
        for event in self.h.server_events.get(request_id) or []:
            kind, data = stored(event)
            if kind == "delta":
                text += str(data.get("delta", ""))
            elif kind == "failover" and data.get("discard_partial"):
                text = ""
        return text

    def client_text(self, s: Session, final: Seen) -> str:
        """The text the client shows: SSE deltas minus what a discard_partial failover
        dropped; on the OpenAI door, the deltas of the connection that got the final."""
        text = ""
        for event in s.events:
            if s.kind.startswith("v1") and event.conn != final.conn:
                continue
            if event.type == "delta":
                text += str(event.data.get("delta", ""))
            elif event.type == "failover" and event.data.get("discard_partial"):
                text = ""
        return text

    def text(self, s: Session) -> None:
        final = final_of(s)
        if final is None:
            return
        rid, attempts = s.request_id, self.ev.attempts.get(s.request_id, [])
        text = self.client_text(s, final)
        who = f"{s.role} {s.kind} client"
        reason = final.data.get("finish_reason")
        truth = server_final(self.h, rid)
        if s.kind.startswith("v1") and truth and label(truth) == "done:cancelled":
            reason = "cancelled"  # the OpenAI door reports a cancelled answer as "stop"
        if final.type == "done" and reason != "cancelled":
            done = [a for a in attempts if a["outcome"] == "completed"]
            if not done:
                outcomes = [a["outcome"] for a in attempts]
                self.f.add(
                    "text",
                    rid,
                    f"{who}: {label(final)} but no upstream attempt "
                    f"completed (attempts: {outcomes})",
                    self.ev.describe_runs(rid),
                )
            elif text != done[-1]["text"]:
                stored = self.stored_text(rid)
                where = (
                    "Redis holds the right text: the client lost it in delivery"
                    if stored == done[-1]["text"]
                    else "Redis holds the same wrong text: it was written so"
                    if stored == text
                    else "Redis holds yet another text"
                )
                self.f.add(
                    "text",
                    rid,
                    f"{who}: {label(final)} with a text that is not the "
                    f"finished attempt's: {mismatch(text, done[-1]['text'], attempts)}; {where}",
                    self.ev.describe_runs(rid),
                )
            return
        if not text:
            return
        if final.type == "error" and not says_partial(final, s.kind):
            self.f.add(
                "text",
                rid,
                f"{who}: {label(final)} after {len(text)} characters of text, and the error "
                "does not say the text is partial",
                self.ev.describe_runs(rid),
            )
        # the attempt the text came from: one started after the client's last delta (a
        # restart the OpenAI door ended its stream at, then cancelled) gave it none
        last = max(e.t_ns for e in s.events if e.type == "delta")
        source = next((a for a in reversed(attempts) if a["text"] and a["started_ns"] < last), None)
        if source is None or not source["text"].startswith(text):
            expected = source["text"] if source else ""
            self.f.add(
                "text",
                rid,
                f"{who}: {label(final)} with a text that is not a prefix of the last upstream "
                f"answer: {mismatch(text, expected, attempts)}",
                self.ev.describe_runs(rid),
            )

    # --- single_runner ----------------------------------------------------------------------

    def single_runner(self, request_id: str, attempts: list[dict[str, Any]]) -> None:
        for index, attempt in enumerate(attempts):
            if not attempt.get("concurrent_with"):
                continue
            others = [attempts[i] for i in attempt["concurrent_with"] if i < len(attempts)]
            described = "; ".join(
                f"attempt to {o['provider']} started {self.ev.since_t0(o['started_ns'])} "
                f"ended {self.ev.since_t0(o['ended_ns'])} ({o['outcome']}, "
                f"{o['tokens_sent']} tokens)"
                for o in others
            )
            self.f.add(
                "single_runner",
                request_id,
                f"upstream attempt {index} ({attempt['provider']}) started "
                f"{self.ev.since_t0(attempt['started_ns'])} while another was running: "
                f"{described}",
                self.ev.describe_runs(request_id),
            )

    def stored_partial(self, request_id: str) -> None:
        """The answer's own final error says ``partial`` when text was stored before it (an SSE
        client would read that flag; the OpenAI door's clients, checked here, cannot)."""
        final = server_final(self.h, request_id)
        if final is None or final["type"] != "error":
            return
        text, (_, data) = self.stored_text(request_id), stored(final)
        if text and data.get("partial") is not True:
            self.f.add(
                "text",
                request_id,
                f"the answer's final {label(final)} (stored) says partial={data.get('partial')} "
                f"after {len(text)} characters of text were stored",
                self.ev.describe_runs(request_id),
            )


def says_partial(final: Seen, kind: str) -> bool:
    """An error that tells the client its text is incomplete. The OpenAI door has no such
    flag: there an error chunk always means the completion did not finish."""
    return kind.startswith("v1") or final.data.get("partial") is True


def mismatch(text: str, expected: str, attempts: list[dict[str, Any]]) -> str:
    """What differs between the client's text and the upstream's, with a guess at why."""
    if text == expected:
        return "identical"
    common = 0
    while common < min(len(text), len(expected)) and text[common] == expected[common]:
        common += 1
    got, want = text[common : common + 40], expected[common : common + 40]
    guess = ""
    if len(text) > len(expected) and _collapse(text.split(" ")) == _collapse(expected.split(" ")):
        guess = " (the same tokens with some repeated: a duplicated delta)"
    kept = text[: len(text) - len(expected)] if text.endswith(expected) else ""
    if kept and any(a["text"].startswith(kept) for a in attempts if a["text"] != expected):
        guess = " (an earlier attempt's text kept: discard_partial not applied)"
    return (
        f"client has {len(text)} chars, upstream {len(expected)}; they differ at {common}: "
        f"client {got!r} vs upstream {want!r}{guess}"
    )


def _collapse(tokens: list[str]) -> list[str]:
    """The tokens without immediate repeats (every planned token is distinct from the next)."""
    return [t for i, t in enumerate(tokens) if i == 0 or t != tokens[i - 1]]
