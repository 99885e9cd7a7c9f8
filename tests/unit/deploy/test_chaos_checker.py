"""The chaos checker on hand-made histories: it flags each defect, and nothing the design allows."""

from __future__ import annotations

import json
from typing import Any

import pytest

from deploy.chaos.findings import label
from deploy.chaos.history import (
    CancelCall,
    Connection,
    FaultRecord,
    History,
    ProcessLife,
    Seen,
)
from deploy.chaos.history import Session as ChaosSession
from deploy.chaos.plan import make_plan
from deploy.chaos.run import check
from deploy.chaos.stack import TUNING

S = 1_000_000_000
RID = "chaos-0-00001"
WALL = 1_800_000_000.0  # Unix time of monotonic 0 in these histories


def history(**fields: Any) -> History:
    """A history; unless given, one telemetry document per upstream attempt and an empty
    keyspace before and after."""
    h = History(seed=0, duration_s=60, wall_offset_s=WALL, t0_ns=0, plan={"requests": []})
    h.load["tuning"] = TUNING
    h.telemetry_drained = True
    h.t_end_ns = 100 * S
    empty = {"keys": {}, "used_memory": 1, "used_memory_dataset": 1, "t": 0}
    h.redis = {"baseline": empty, "end": {**empty, "waited_for_ttls": True}, "t_drained": 0}
    for name, value in fields.items():
        setattr(h, name, value)
    if "processes" not in fields:  # a worker ran every request
        lines = [log(0, "job taken (epoch 1) provider=alpha", rid) for rid in h.upstream]
        h.processes = [worker("worker9#1", lines)]
    if "telemetry" not in fields:
        h.telemetry = [
            doc(a["started_ns"] / S - 0.01, (a["ended_ns"] or h.t_end_ns) / S + 0.01)
            for attempts in h.upstream.values()
            for a in attempts
        ]
    return h


def attempt(
    start: float, end: float | None, text: str, outcome: str = "completed"
) -> dict[str, Any]:
    return {
        "key": RID, "provider": "openai", "model": "alpha-model", "status": 200,
        "started_ns": int(start * S), "started_wall": WALL + start, "first_token_ns": None,
        "ended_ns": None if end is None else int(end * S), "closed_by_client": False,
        "tokens_sent": len(text.split()), "text": text, "outcome": outcome, "outage": False,
        "concurrent_with": [],
    }  # fmt: skip


def doc(start: float, end: float, **fields: Any) -> dict[str, Any]:
    return {
        "_id": f"ev{start}", "requestId": RID, "attempt": 1, "provider": "alpha",
        "model": "alpha-model", "latencyMs": (end - start) * 1000, "ttftMs": 5.0,
        "tokensOut": 2, "success": True, "errorCode": None, "ts": WALL + end, **fields,
    }  # fmt: skip


def sse(events: list[tuple[float, str, dict[str, Any]]], *, conns: int = 1) -> ChaosSession:
    """A session whose events get increasing ids; ``conns`` connections split them evenly."""
    session = ChaosSession(RID, "sse_get", "primary", 0)
    for index in range(conns):
        session.connections.append(Connection("start" if index == 0 else "resume", 0, index))
    per_conn = max(1, len(events) // conns)
    for n, (t, kind, data) in enumerate(events):
        conn = min(n // per_conn, conns - 1)
        session.events.append(Seen(int(t * S), conn, kind, f"{1000 + n}-0", data))
    return session


def delta(t: float, text: str) -> tuple[float, str, dict[str, Any]]:
    return (t, "delta", {"delta": text})


def done(t: float, reason: str = "stop") -> tuple[float, str, dict[str, Any]]:
    return (t, "done", {"finish_reason": reason})


def stored_final(kind: str, data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    return {RID: [{"id": "1-0", "type": kind, "data": json.dumps(data)}]}


def violations(h: History) -> list[tuple[str, str]]:
    _, findings = check(h)
    return [(v.invariant, v.detail) for v in findings.violations]


def invariants(h: History) -> set[str]:
    return {name for name, _ in violations(h)}


def worker(name: str, lines: list[str], ended_by: str = "", t_end: float = 0) -> ProcessLife:
    return ProcessLife(name, "worker", 0, int(t_end * S), ended_by, lines)


def log(at: float, message: str, rid: str = RID) -> str:
    from datetime import datetime

    stamp = datetime.fromtimestamp(WALL + at).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
    return f"{stamp} INFO llm-worker echotune.worker.handlers [rid={rid}] {message}"


START = (0.1, "start", {"request_id": RID})


def test_a_clean_answer_passes() -> None:
    session = sse([START, delta(0.5, "a "), delta(0.6, "b "), done(0.7)])
    h = history(
        sessions=[session],
        upstream={RID: [attempt(0.2, 0.65, "a b ")]},
        telemetry=[doc(0.15, 0.66)],
    )
    assert violations(h) == []


def test_a_resumed_answer_with_a_discarded_restart_passes() -> None:
    events = [
        START,
        delta(0.5, "a "),
        (4.0, "failover", {"discard_partial": True, "reason": "worker_lost"}),
        delta(4.5, "x "),
        delta(4.6, "y "),
        done(4.7),
    ]
    h = history(
        sessions=[sse(events, conns=2)],
        upstream={RID: [attempt(0.2, 1.0, "a b ", "closed_by_client"), attempt(4.1, 4.65, "x y ")]},
        telemetry=[doc(4.05, 4.66)],
        processes=[
            worker("worker1#1", [log(0.15, "job taken (epoch 1) provider=alpha")], "SIGKILL", 1.0),
            worker("worker2#1", [log(4.0, "job taken (epoch 2) provider=alpha")]),
        ],
    )
    assert violations(h) == []


def test_text_kept_from_a_lost_worker_is_flagged() -> None:
    events = [START, delta(0.5, "a "), delta(4.5, "x "), delta(4.6, "y "), done(4.7)]
    h = history(
        sessions=[sse(events)],
        upstream={RID: [attempt(0.2, 1.0, "a b ", "closed_by_client"), attempt(4.1, 4.65, "x y ")]},
    )
    found = [d for name, d in violations(h) if name == "text"]
    assert len(found) == 1
    assert "discard_partial not applied" in found[0]


def test_a_duplicated_delta_is_flagged() -> None:
    session = sse([START, delta(0.5, "a "), delta(0.6, "b "), delta(0.7, "b "), done(0.8)])
    h = history(sessions=[session], upstream={RID: [attempt(0.2, 0.65, "a b ")]})
    found = [d for name, d in violations(h) if name == "text"]
    assert len(found) == 1
    assert "duplicated delta" in found[0]


def test_event_ids_must_increase_across_resumes() -> None:
    session = sse([START, delta(0.5, "a "), delta(0.6, "b "), done(0.7)], conns=2)
    session.events[2].id = session.events[1].id
    h = history(sessions=[session], upstream={RID: [attempt(0.2, 0.65, "a ")]})
    assert "event_ids" in invariants(h)


def test_a_resumed_client_must_get_every_stored_event_after_its_position() -> None:
    session = sse([START, delta(0.5, "a "), delta(0.6, "b "), done(0.7)], conns=2)
    session.connections[1].last_event_id = session.events[1].id
    stored = [{"id": e.id, "type": e.type, "data": json.dumps(e.data)} for e in session.events]
    upstream = {RID: [attempt(0.2, 0.65, "a b ")]}
    whole = history(sessions=[session], upstream=upstream, server_events={RID: stored})
    assert violations(whole) == []
    del session.events[2]  # the resumed connection skipped "b "
    session.events[-1].data = {"finish_reason": "stop"}
    gap = history(sessions=[session], upstream=upstream, server_events={RID: stored})
    found = [d for name, d in violations(gap) if name == "event_ids"]
    assert len(found) == 1
    assert "1 stored events never delivered ['1002-0']" in found[0]


def replayed_after_a_loss(*, restart: bool) -> History:
    """The client saw "b " before a failover lost it from Redis; the worker replayed."""
    events = [START, delta(0.5, "a "), delta(0.6, "b ")]
    if restart:
        events.append((5.0, "failover", {"discard_partial": True, "reason": "events_lost"}))
        events += [delta(5.0, "a "), delta(5.0, "b ")]
    events += [delta(5.1, "c"), done(5.2)]
    session = sse(events)
    stored = [{"id": e.id, "type": e.type, "data": json.dumps(e.data)} for e in session.events]
    del stored[2]  # "b " acknowledged, then lost with the old primary
    upstream = {RID: [attempt(0.2, 5.15, "a b c")]}
    return history(sessions=[session], upstream=upstream, server_events={RID: stored})


def test_entries_lost_by_a_failover_and_replayed_are_excused_not_skipped() -> None:
    _, findings = check(replayed_after_a_loss(restart=True))
    assert findings.violations == []
    assert [(name, why[:25]) for name, _, why in findings.excused] == [
        ("event_ids", "a failover lost entries t")
    ]
    found = [d for name, d in violations(replayed_after_a_loss(restart=False))]
    assert any("1 not stored ['1002-0']" in d for d in found), found


def test_a_loss_with_no_trace_that_the_gateway_told_of_is_excused() -> None:
    """Redis lost the take and the text: the next producer started afresh, and the gateway,
    which had relayed the lost text, sent the client an unstored ``events_lost`` restart."""
    restart = (5.0, "failover", {"discard_partial": True, "reason": "events_lost"})
    session = sse([START, delta(0.5, "a "), restart, delta(5.0, "x "), done(5.2)])
    session.events[2].id = None  # the gateway's own: not stored
    stored = [
        {"id": e.id, "type": e.type, "data": json.dumps(e.data)}
        for e in session.events
        if e.id and e.data.get("delta") != "a "  # "a " lost with the take
    ]
    upstream = {RID: [attempt(0.2, 0.6, "a ", "closed_by_client"), attempt(4.9, 5.1, "x ")]}
    h = history(sessions=[session], upstream=upstream, server_events={RID: stored})
    assert violations(h) == []


def test_an_unstored_event_long_before_a_replay_is_not_excused() -> None:
    """An invented id, then stored events, then a genuine loss and its replay."""
    h = replayed_after_a_loss(restart=True)
    session = h.sessions[0]
    session.events.insert(1, Seen(int(0.3 * S), 0, "delta", "1000-5", {"delta": ""}))
    found = [d for name, d in violations(h) if name == "event_ids"]
    assert len(found) == 1
    assert "not stored ['1000-5'" in found[0]


def test_a_loss_whose_replay_came_on_the_resumed_connection_is_excused() -> None:
    h = replayed_after_a_loss(restart=True)
    session = h.sessions[0]
    session.connections.append(Connection("resume", 0, 1, last_event_id="1002-0"))
    for event in session.events[3:]:
        event.conn = 1
    _, findings = check(h)
    assert findings.violations == []


def test_a_partial_error_may_end_a_prefix_but_must_say_so() -> None:
    upstream = {RID: [attempt(0.2, 0.7, "a b c ", "disconnected_by_server")]}
    partial = (0.8, "error", {"code": "partial_answer", "partial": True})
    ok = history(sessions=[sse([START, delta(0.5, "a "), partial])], upstream=upstream)
    assert invariants(ok) == set()
    silent = (0.8, "error", {"code": "shutdown", "partial": False})
    bad = history(sessions=[sse([START, delta(0.5, "a "), silent])], upstream=upstream)
    assert invariants(bad) == {"text"}
    nothing_shown = history(sessions=[sse([START, silent])], upstream=upstream)
    assert invariants(nothing_shown) == set()


def test_two_and_zero_final_events() -> None:
    two = history(
        sessions=[sse([START, delta(0.5, "a "), done(0.6), done(0.7)])],
        upstream={RID: [attempt(0.2, 0.55, "a ")]},
    )
    assert "one_final" in invariants(two)
    session = sse([START, delta(0.5, "a ")])
    session.gave_up = "no final event within 60 s"
    none = history(sessions=[session], server_events={RID: []})
    found = violations(none)
    assert [name for name, _ in found] == ["drained"]
    assert "Redis holds no final event" in found[0][1]


def cancelled_session(final_at: float, reason: str = "cancelled") -> ChaosSession:
    session = sse([START, delta(0.5, "a "), done(final_at, reason)])
    session.cancel = CancelCall(0, int(0.55 * S), int(0.6 * S), 202, "cancelling")
    return session


def test_cancel_latency_and_its_bound() -> None:
    upstream = {RID: [attempt(0.2, 0.62, "a b c ", "closed_by_client")]}
    fast = history(sessions=[cancelled_session(0.63)], upstream=upstream)
    result = check(fast)[1]
    assert result.violations == []
    assert result.cancel_latencies_ms == [pytest.approx(30)]
    slow = history(sessions=[cancelled_session(1.7)], upstream=upstream)
    assert invariants(slow) == {"cancel"}


def test_a_slow_cancel_says_why_and_a_redis_restart_excuses_it() -> None:
    upstream = {RID: [attempt(0.2, 0.9, "a b c ", "closed_by_client")]}
    killed = worker("worker1#1", [log(0.1, "job taken (epoch 1) x")], "SIGKILL", 0.9)
    h = history(sessions=[cancelled_session(4.0)], upstream=upstream, processes=[killed])
    found = [d for name, d in violations(h) if name == "cancel"]
    assert len(found) == 1
    assert "worker1#1 was SIGKILLed; the job waited for the reclaim" in found[0]
    waiting = cancelled_session(2.0)
    del waiting.events[1]  # no text: no worker took the job before the cancel
    queued = history(
        sessions=[waiting], processes=[worker("worker2#1", [log(1.9, "job taken (epoch 1) x")])]
    )
    assert [name for name, _ in violations(queued)] == ["cancel"]
    assert "it was still queued" in violations(queued)[0][1]
    restart = FaultRecord(0, "redis_kill", "redis", int(0.7 * S), int(1.9 * S))
    h = history(sessions=[cancelled_session(2.0)], upstream=upstream, faults=[restart])
    _, findings = check(h)
    assert findings.violations == []
    assert [e[0] for e in findings.excused] == ["cancel"]


def test_a_slow_cancel_while_redis_was_blocked_long_enough_is_excused() -> None:
    """The cancel is acknowledged at 0.6 s and ends at 2.0 s: 400 ms over the bound. Stalls
    count once per second (events overlap), and only those stamped from the 202's second
    until the end: a later one ended after the final arrived."""
    upstream = {RID: [attempt(0.2, 0.9, "a b c ", "closed_by_client")]}
    cases = [
        ([(WALL + 1, 450)], True),
        ([(WALL + 1, 300)], False),
        ([(WALL + 1, 250), (WALL + 1, 250)], False),  # aof-write and aof-write-alone: one stall
        ([(WALL + 0, 200), (WALL + 1, 250)], True),
        ([(WALL + 3, 5000)], False),  # stamped after the final arrived
        (None, False),  # not monitored
    ]
    for stalls, excused in cases:
        h = history(sessions=[cancelled_session(2.0)], upstream=upstream)
        h.redis["stalls"] = stalls
        _, findings = check(h)
        assert [e[0] for e in findings.excused] == (["cancel"] if excused else []), stalls
        assert [v.invariant for v in findings.violations] == ([] if excused else ["cancel"])


def test_a_cancel_the_worker_ignored_is_lost() -> None:
    lost = history(
        sessions=[cancelled_session(2.0, "stop")],
        upstream={RID: [attempt(0.2, 1.9, "a b c ")]},
    )
    assert invariants(lost) == {"cancel", "text"}  # and its text is not the whole answer
    ended_first = history(
        sessions=[cancelled_session(0.7, "stop")],
        upstream={RID: [attempt(0.2, 0.58, "a ")]},
    )
    assert invariants(ended_first) == set()
    raced = history(
        sessions=[cancelled_session(0.9, "stop")],
        upstream={RID: [attempt(0.2, 0.85, "a ")]},
    )
    _, findings = check(raced)
    assert findings.violations == []
    assert "a race" in findings.excused[0][2]


def test_overlapping_upstream_attempts_are_two_runners() -> None:
    second = attempt(0.3, 0.9, "a b ")
    second["concurrent_with"] = [0]
    h = history(
        sessions=[sse([START, delta(0.5, "a "), delta(0.6, "b "), done(1.0)])],
        upstream={RID: [attempt(0.2, 0.95, "a b "), second]},
    )
    assert "single_runner" in invariants(h)


def test_telemetry_one_document_per_attempt() -> None:
    session = sse([START, delta(0.5, "a "), done(0.7)])
    upstream = {RID: [attempt(0.2, 0.3, "", "error_status"), attempt(0.4, 0.65, "a ")]}
    both = [doc(0.15, 0.31, success=False, errorCode="http_503"), doc(0.35, 0.66)]
    assert invariants(history(sessions=[session], upstream=upstream, telemetry=both)) == set()
    missing = history(sessions=[session], upstream=upstream, telemetry=both[1:])
    assert invariants(missing) == {"telemetry"}
    doubled = history(sessions=[session], upstream=upstream, telemetry=[*both, both[1]])
    assert invariants(doubled) == {"telemetry"}


def test_telemetry_excuses() -> None:
    session = sse([START, delta(0.5, "a "), done(0.7)])
    upstream = {RID: [attempt(0.2, 0.3, "", "closed_by_client"), attempt(4.4, 4.65, "a ")]}
    killed = worker("worker1#1", [log(0.1, "job taken (epoch 1) x")], "SIGKILL", 0.3)
    never_sent = doc(5.0, 5.01, success=False, errorCode="cancelled", ttftMs=None, tokensOut=0)
    h = history(
        sessions=[session],
        upstream=upstream,
        telemetry=[doc(4.35, 4.66), never_sent],
        processes=[killed, worker("worker2#1", [log(4.3, "job taken (epoch 2) x")])],
    )
    _, findings = check(h)
    assert [v.detail for v in findings.violations if v.invariant == "telemetry"] == []
    assert sorted(e[0] for e in findings.excused) == ["telemetry", "telemetry"]


def keyspace(keys: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {"keys": keys, "used_memory": 1, "used_memory_dataset": 1, "t": 0}


def key(family: str, ttl_ms: int, **extra: Any) -> dict[str, Any]:
    return {"type": "hash", "ttl_ms": ttl_ms, "bytes": 100, "family": family, **extra}


def test_redis_keys_return_to_the_baseline() -> None:
    jobs_before = key("jobs-stream", -1, length=0)
    end = {
        "chaos:jobs": key("jobs-stream", -1, length=3),
        "chaos:live:alpha:1": key("live-stats", 500_000),
        "chaos:req:{x}:meta": key("per-request", -1),
        "chaos:req:{y}:events": key("per-request", 30_000),
        "chaos:breaker:{alpha}": key("breaker", -1),
    }
    audit = {
        "baseline": keyspace({"chaos:jobs": jobs_before}),
        "end": {**keyspace(end), "waited_for_ttls": False},
        "ttl_wait": "full",
        "t_drained": 0,
    }
    h = history(redis=audit, server_events={f"r{i}": [{"type": "start"}] for i in range(3)})
    found = [d for name, d in violations(h) if name == "redis"]
    assert len(found) == 3
    assert any("chaos:jobs retains all 3 jobs" in d for d in found)
    assert any("{x}:meta" in d and "no TTL" in d for d in found)
    assert any("{y}:events" in d and "still present" in d for d in found)
    audit["ttl_wait"] = "skip"
    assert len([d for name, d in violations(h) if name == "redis"]) == 2


def test_openai_door_text_is_the_last_connection_and_cancel_is_read_from_redis() -> None:
    session = ChaosSession(RID, "v1_stream", "primary", 0)
    session.connections = [Connection("start", 0, 0), Connection("start", 1, 1)]
    session.events = [
        Seen(int(0.5 * S), 0, "delta", None, {"delta": "a "}),
        Seen(int(1.5 * S), 1, "delta", None, {"delta": "a "}),
        Seen(int(1.6 * S), 1, "done", None, {"finish_reason": "stop"}),
    ]
    upstream = {RID: [attempt(0.2, 3.0, "a b ", "closed_by_client")]}
    cancelled = stored_final("done", {"finish_reason": "cancelled"})
    h = history(sessions=[session], upstream=upstream, server_events=cancelled)
    assert violations(h) == []
    assert label(session.events[-1]) == "done:stop"


def test_the_plan_is_a_function_of_the_seed() -> None:
    one, again, other = make_plan(7, 60), make_plan(7, 60), make_plan(8, 60)
    assert one == again
    assert one != other
    assert {f.kind for f in one.faults} >= {"worker_kill", "redis_kill", "breaker_trip"}
    assert 50 < len(one.requests) < 200
    assert all(r.request_id.startswith("chaos-7-") for r in one.requests)


def test_worker_logs_it_cannot_read_are_a_harness_failure_not_violations() -> None:
    h = history(
        sessions=[sse([START, delta(0.5, "a "), done(0.7)])],
        upstream={RID: [attempt(0.2, 0.65, "a ")]},
        processes=[worker("worker1#1", [log(0.1, "a job began (new wording)")])],
    )
    assert invariants(h) == {"harness"}


def test_the_telemetry_stream_stays_within_its_maxlen() -> None:
    def run(length: int) -> list[str]:
        stream = key("telemetry-stream", -1, length=length)
        audit = {
            "baseline": keyspace({"chaos:telemetry": key("telemetry-stream", -1, length=0)}),
            "end": {**keyspace({"chaos:telemetry": stream}), "waited_for_ttls": True},
            "t_drained": 0,
        }
        return [d for name, d in violations(history(redis=audit)) if name == "redis"]

    assert run(1100) == []  # MAXLEN 1000 in the chaos settings, trimmed by whole nodes
    assert run(1500) == ["chaos:telemetry holds 1500 entries, beyond its MAXLEN 1000"]


def test_an_openai_client_error_ends_partial_text_but_the_stored_final_must_say_so() -> None:
    session = ChaosSession(RID, "v1_stream", "primary", 0)
    session.connections = [Connection("start", 0, 0)]
    session.events = [
        Seen(int(0.5 * S), 0, "delta", None, {"delta": "a "}),
        Seen(int(0.6 * S), 0, "error", None, {"code": "shutdown"}),
    ]
    upstream = {RID: [attempt(0.2, 0.55, "a b ", "closed_by_client")]}

    def stored_error(partial: bool) -> dict[str, list[dict[str, Any]]]:
        events = [("start", {}), ("delta", {"delta": "a "}), ("error", {"partial": partial})]
        return {
            RID: [
                {"id": f"{n}-0", "type": kind, "data": json.dumps(data)}
                for n, (kind, data) in enumerate(events, 1)
            ]
        }

    said = history(sessions=[session], upstream=upstream, server_events=stored_error(True))
    assert violations(said) == []
    unsaid = history(sessions=[session], upstream=upstream, server_events=stored_error(False))
    found = violations(unsaid)
    assert len(found) == 1
    assert "says partial=False after 2 characters" in found[0][1]


def test_a_door_stream_ended_at_a_restart_is_checked_against_the_attempt_it_got() -> None:
    """The OpenAI door ended its stream (worker_lost) when the answer restarted after text it
    had sent; the restarted attempt streamed a little before the door's cancel reached it,
    and the client's text was compared with that later attempt's (seed 527954)."""
    session = ChaosSession(RID, "v1_stream", "primary", 0)
    session.connections = [Connection("start", 0, 0)]
    session.events = [
        Seen(int(0.5 * S), 0, "delta", None, {"delta": "a "}),
        Seen(int(0.6 * S), 0, "delta", None, {"delta": "b "}),
        Seen(int(4.0 * S), 0, "error", None, {"code": "worker_lost"}),
    ]
    upstream = {
        RID: [
            attempt(0.2, 0.7, "a b c ", "closed_by_client"),  # its worker was killed
            attempt(4.1, 4.2, "x ", "closed_by_client"),  # the restart, cancelled by the door
        ]
    }
    assert violations(history(sessions=[session], upstream=upstream)) == []
    session.events.insert(2, Seen(int(4.15 * S), 0, "delta", None, {"delta": "y "}))
    assert invariants(history(sessions=[session], upstream=upstream)) == {"text"}
