"""The first-token timeline: MONITOR's commands mapped to an answer's stages."""

from __future__ import annotations

import time

import pytest

from deploy.bench.client import B, Stream
from deploy.bench.timeline import Command, Monitor, marks, summarize

MS = 1_000_000
RID, OTHER = "bench-B1r0-0-0-aaaaaaaa", "bench-B1r0-0-1-bbbbbbbb"


def _commands(rid: str, t0: int) -> list[Command]:
    """What Redis runs for one answer, as redis-py's monitor gives it (arguments unquoted)."""
    meta, events = f"ns:req:{{{rid}}}:meta", f"ns:req:{{{rid}}}:events"
    return [
        Command(t0 + 1 * MS, "HGET ns:api-keys bench1"),  # names no request: not a stage
        Command(t0 + 2 * MS, f"HMGET {meta} fingerprint user_id final_id"),
        Command(t0 + 3 * MS, f"EVALSHA abc 4 {meta} {events}"),
        Command(t0 + 3 * MS + 10, f"HMGET {meta} fingerprint user_id"),
        Command(t0 + 3 * MS + 20, f'XADD ns:jobs * __data__ {{"request_id":"{rid}"}}'),
        Command(t0 + 3 * MS + 30, f"XADD {events} * v 1 type start data {{}}"),
        Command(t0 + 4 * MS, f'XADD ns:telemetry * __data__ {{"request_id":"{rid}"}}'),
        Command(t0 + 5 * MS, f"HINCRBY {meta} epoch 1"),
        Command(t0 + 60 * MS, f'XADD {events} * v 1 type delta data {{"d":"a type done"}}'),
        Command(t0 + 61 * MS, f"XADD {events} MAXLEN ~ 9 * v 1 type delta data {{}}"),
        Command(t0 + 80 * MS, f"XADD {events} * v 1 type done data {{}}"),
    ]


def _stream(rid: str, t0: int) -> Stream:
    return Stream(
        B, rid, start_ns=t0, head_ns=t0 + 4 * MS, first_token_ns=t0 + 62 * MS,
        end_ns=t0 + 81 * MS, first_stamp=t0 + 59 * MS,
    )  # fmt: skip


def test_each_stage_is_the_first_command_that_marks_it() -> None:
    assert marks(_stream(RID, 0), _commands(RID, 0), upstream_ns=7 * MS) == {
        "checks": 2.0,
        "job_queued": 3.00002,
        "head": 4.0,
        "taken": 5.0,
        "upstream": 7.0,
        "first_stamp": 59.0,
        "first_append": 60.0,
        "first_token": 62.0,
        "final": 80.0,
        "end": 81.0,
    }


def test_answers_interleaved_keep_their_own_commands_and_steps() -> None:
    """The second answer starts while the first streams: each keeps its own stages."""
    later = 30 * MS
    commands = sorted(_commands(RID, 0) + _commands(OTHER, later), key=lambda c: c.at_ns)
    streams = [_stream(RID, 0), _stream(OTHER, later)]
    timeline = summarize(streams, commands, {RID: 7 * MS, OTHER: later + 9 * MS})

    assert timeline["answers"] == 2
    stages, steps = timeline["stages"], timeline["steps"]
    assert stages["taken"]["n"] == 2
    assert stages["taken"]["max"] == 5.0
    assert stages["first_append"]["max"] == 60.0
    assert stages["final"]["max"] == 80.0
    assert steps["taken"]["max"] == 2.0  # job queued at 3 ms, taken at 5
    assert (steps["upstream"]["p50"], steps["upstream"]["max"]) == (3.0, 4.0)
    assert steps["checks"]["max"] == 2.0  # from the client's start


def test_a_failed_answer_is_left_out() -> None:
    failed = _stream(OTHER, 0)
    failed.error = "timeout"
    timeline = summarize([_stream(RID, 0), failed], _commands(RID, 0) + _commands(OTHER, 0), {})
    assert timeline["answers"] == 1
    assert timeline["stages"]["checks"]["n"] == 1
    assert timeline["stages"]["upstream"]["n"] == 0


async def test_a_monitor_that_cannot_start_says_so_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="MONITOR did not start"):
        async with Monitor("redis://127.0.0.1:1/0"):
            pass
    assert time.monotonic() - started < 5  # not the 10 s start-up limit
