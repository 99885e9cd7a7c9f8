"""The cancel invariant: an acknowledged cancel ends the answer `cancelled` within 1 s.

A cancel is *lost* when upstream work went on after it and the answer ended otherwise more
than 1 s later; an answer that ended by itself first (or within the bound: a race with its
natural end) is excused. A slow `cancelled` says why: the worker running it did not stop in
time, no worker had taken the job yet (queued, or held by a worker), or its worker was killed.
Only Redis restarting or blocked (its latency monitor: an fsync waiting for the disk) meanwhile
excuses a slow one: nobody can write then.
"""

from __future__ import annotations

from deploy.chaos.evidence import RUNNING, Evidence
from deploy.chaos.findings import CANCEL_BOUND_MS, Findings, final_of, label
from deploy.chaos.history import History, Seen, Session


class CancelChecks:
    def __init__(self, history: History, evidence: Evidence, findings: Findings) -> None:
        self.h, self.ev, self.f = history, evidence, findings

    def run(self) -> None:
        for session in self.h.sessions:
            if session.cancel is not None:
                self.cancel(session)

    def cancel(self, s: Session) -> None:
        call, rid = s.cancel, s.request_id
        assert call is not None
        if call.status != 202:
            self.f.count(f"{call.state or call.status or 'not delivered'}")
            return
        final = final_of(s)
        if final is None:
            self.f.count("no final")
            return
        latency = max(0.0, (final.t_ns - call.t_returned_ns) / 1e6)
        if label(final) == "done:cancelled":
            self.f.count("cancelled")
            if s.connections[final.conn].t_open_ns > call.t_returned_ns:
                why = "the client was away (disconnected or reconnecting) after the cancel"
                self.f.excuse("cancel", rid, f"cancelled after {latency:.0f} ms: {why}")
                return
            self.f.cancel_latencies_ms.append(latency)
            if latency > CANCEL_BOUND_MS:
                self._slow_cancel(s, final, latency)
            return
        after = [
            a
            for a in self.ev.attempts.get(rid, [])
            if a["ended_ns"] is None or a["ended_ns"] > call.t_returned_ns
        ]
        if not after or latency <= CANCEL_BOUND_MS:
            self.f.count("answer ended first")
            why = (
                "every upstream attempt had ended before the cancel was acknowledged"
                if not after
                else f"the answer ended by itself {latency:.0f} ms after the cancel (a race)"
            )
            self.f.excuse("cancel", rid, f"{label(final)}: {why}")
            return
        self.f.count("lost")
        described = "; ".join(
            f"attempt to {a['provider']} {self.ev.since_t0(a['started_ns'])}.."
            f"{self.ev.since_t0(a['ended_ns'])} ({a['outcome']})"
            for a in after
        )
        self.f.add(
            "cancel",
            rid,
            f"cancel acknowledged (202) at {self.ev.since_t0(call.t_returned_ns)}, yet the answer "
            f"ended {label(final)} {latency:.0f} ms later; upstream still running after the "
            f"cancel: {described}",
            self.ev.describe_runs(rid),
        )

    def _slow_cancel(self, s: Session, final: Seen, latency: float) -> None:
        call, rid = s.cancel, s.request_id
        assert call is not None
        if self.ev.redis_restarting(call.t_sent_ns, final.t_ns):
            self.f.excuse(
                "cancel",
                rid,
                f"cancelled after {latency:.0f} ms: Redis was "
                "restarting meanwhile (no one can write)",
            )
            return
        # Measured from the 202: a stall before it delayed the 202 as much as the cancel.
        stalled_ms = self.ev.redis_stalled_ms(call.t_returned_ns, final.t_ns)
        if stalled_ms is not None and stalled_ms >= latency - CANCEL_BOUND_MS:
            self.f.excuse(
                "cancel",
                rid,
                f"cancelled after {latency:.0f} ms: Redis was blocked up to {stalled_ms} ms "
                "meanwhile (its latency monitor: no one can write then)",
            )
            return
        self.f.add(
            "cancel",
            rid,
            f"cancel acknowledged at {self.ev.since_t0(call.t_returned_ns)}, `cancelled` arrived "
            f"{latency:.0f} ms later (bound {CANCEL_BOUND_MS:.0f} ms): "
            f"{self._why_slow(rid, call.t_sent_ns, final.t_ns)}",
            self.ev.describe_runs(rid),
        )

    def _why_slow(self, rid: str, sent_ns: int, final_ns: int) -> str:
        """Whether a worker was running the job when the cancel came, or why none was."""
        if killed := self.ev.killed_runner(rid, sent_ns, final_ns):
            return f"its worker {killed} was SIGKILLed; the job waited for the reclaim"
        runs = [r for r in self.ev.runs.get(rid, []) if r.what in RUNNING]
        sent = self.h.wall(sent_ns)
        if runs and all(r.wall > sent for r in runs):
            taken = f"no worker ran the job when the cancel came (taken {runs[0].what} at "
            taken += f"{self.ev.since_t0(int((runs[0].wall - self.h.wall_offset_s) * 1e9))})"
            if runs[0].what == "reclaimed":
                begin, _ = self.ev.request_span(rid)
                if holder := self.ev.killed_between(begin, int(sent_ns)):
                    return f"{taken}: a worker that held it, likely {holder}, was SIGKILLed"
                return f"{taken}: it was held by a worker waiting for a slot"
            return f"{taken}: it was still queued"
        return "the worker running it did not stop in time"
