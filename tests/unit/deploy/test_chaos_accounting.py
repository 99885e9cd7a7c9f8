"""The chaos run's telemetry accounting: which documents are duplicates."""

from __future__ import annotations

from typing import Any

from deploy.chaos.accounting import _unmatched
from deploy.chaos.findings import Findings


def doc(attempt: int, ts: float, **fields: Any) -> dict[str, Any]:
    return {
        "_id": f"d{attempt}",
        "attempt": attempt,
        "provider": "beta",
        "ts": ts,
        "latencyMs": 1.0,
        "success": False,
        "ttftMs": None,
        "tokensOut": 0,
        **fields,
    }


def test_a_retry_cancelled_before_it_was_sent_is_no_duplicate_of_the_attempt_before() -> None:
    """A retry with no delay starts within the matching slack of the attempt it follows: its
    document was called a duplicate (a fresh-clone CI run's chaos test, seed 20261201)."""
    findings = Findings()
    first = doc(1, 100.000, errorCode="disconnected")
    retry = doc(2, 100.003, errorCode="cancelled")
    _unmatched("r", retry, [first], findings)
    assert findings.violations == []
    assert len(findings.excused) == 1


def test_the_same_attempt_recorded_twice_is_a_duplicate() -> None:
    findings = Findings()
    _unmatched("r", doc(2, 100.003, errorCode="cancelled"), [doc(2, 100.0)], findings)
    assert "duplicates another document" in findings.violations[0].detail
