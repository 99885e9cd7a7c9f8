"""The start-up heap is frozen once per process, and young collections come less often."""

from __future__ import annotations

import gc

import pytest

from echotune.common import heap


def test_settle_freezes_the_heap_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_settled", False)
    threshold = gc.get_threshold()
    try:
        heap.settle()
        frozen = gc.get_freeze_count()
        assert frozen > 1000
        assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD
        heap.settle()
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
