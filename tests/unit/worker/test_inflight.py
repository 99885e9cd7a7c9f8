"""The jobs a worker holds, found by request for every token."""

from __future__ import annotations

from echotune.common.stop_reasons import CANCELLED
from echotune.worker.inflight import InFlightJobs


def test_a_request_held_twice_is_stopped_and_released_entry_by_entry() -> None:
    jobs = InFlightJobs()
    first, second = jobs.hold("r1", "1-0"), jobs.hold("r1", "2-0")
    other = jobs.hold("r2", "3-0")
    jobs.stop("r1", CANCELLED)
    assert (first.reason, second.reason, other.reason) == (CANCELLED, CANCELLED, None)
    jobs.release(first)
    assert jobs.reason("r1") == CANCELLED
    assert len(jobs) == 2
    jobs.release(second)
    jobs.release(second)  # twice: no harm
    assert jobs.reason("r1") is None
    assert jobs.reason("r2") is None
    assert jobs.request_ids() == ["r2"]


def test_an_entry_held_again_replaces_the_old_hold() -> None:
    jobs = InFlightJobs()
    old = jobs.hold("r1", "1-0")
    new = jobs.hold("r1", "1-0")
    jobs.release(old)  # no longer held: changes nothing
    jobs.stop("r1", CANCELLED)
    assert (old.reason, new.reason) == (None, CANCELLED)
    jobs.release(new)
    assert len(jobs) == 0
    assert jobs.reason("r1") is None
