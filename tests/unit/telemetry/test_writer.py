"""What the writer refuses to store, before MongoDB sees it."""

from __future__ import annotations

from echotune.telemetry.writer import split_unstorable


def test_documents_bson_cannot_hold_are_split_off_and_the_rest_kept() -> None:
    """An integer past 64 bits raised OverflowError: the whole batch failed at every delivery
    until it was dead-lettered as too_many_deliveries, its valid events stored late."""
    good = {"_id": "a", "tokensIn": 5}
    huge = {"_id": "b", "tokensIn": 2**64}
    lone_surrogate = {"_id": "c", "provider": "\ud800"}
    storable, rejected = split_unstorable([good, huge, lone_surrogate])
    assert storable == [good]
    assert sorted(rejected) == ["b", "c"]
    assert all(reason.startswith("not storable as BSON") for reason in rejected.values())
