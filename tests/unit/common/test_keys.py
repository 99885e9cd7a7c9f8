"""Key names: keys used together share a Redis Cluster slot."""

from __future__ import annotations

from redis.crc import key_slot

from echotune.common.keys import Keys


def slot(key: str) -> int:
    return key_slot(key.encode())


def test_keys_used_together_share_a_slot() -> None:
    """The telemetry stream and its dead letters are written in one transaction: on a cluster
    they must share a slot (the dead-letter stream had none in common: CROSSSLOT)."""
    keys = Keys("ns")
    assert slot(keys.telemetry_dead_letters) == slot(keys.telemetry)
    assert keys.telemetry == "ns:telemetry", "the stream keeps its name across the change"
    per_request = [keys.events("r1"), keys.meta("r1"), keys.cancel_flag("r1"), keys.reader("r1")]
    assert len({slot(k) for k in per_request}) == 1
    breaker = keys.breaker("openai")
    assert len({slot(k) for k in (breaker, f"{breaker}:ok", f"{breaker}:fail")}) == 1
