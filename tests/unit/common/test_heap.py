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
        assert gc.get_freeze_count() > 1000
        assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD
        # Not the count again: a frozen object that dies leaves it (seen in CI: 2 fewer).
        frozen_again: list[object] = []
        monkeypatch.setattr(gc, "freeze", lambda: frozen_again.append(None))
        heap.settle()
        assert frozen_again == []
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)
