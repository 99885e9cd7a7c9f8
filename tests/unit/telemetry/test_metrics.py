"""The telemetry service's metrics: every series an operator alerts on exists from the start."""

from __future__ import annotations

from prometheus_client import generate_latest

from echotune.telemetry.decode import DEAD_LETTER_KINDS
from echotune.telemetry.metrics import Metrics


def test_each_dead_letter_kind_is_a_series_at_zero_before_any_letter() -> None:
    """A series that appears with its first letter hides that letter from ``rate()``."""
    metrics = Metrics("telemetry", "group", "dead-letters")
    text = generate_latest(metrics.registry).decode()
    for kind in DEAD_LETTER_KINDS:
        assert f'echotune_telemetry_dead_letters_total{{kind="{kind}"}} 0.0\n' in text
    assert DEAD_LETTER_KINDS  # the loop above checked something
