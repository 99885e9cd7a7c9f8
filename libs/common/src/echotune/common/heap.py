"""The garbage collector of a long-running service: the start-up heap is never scanned again.

CPython's full collections walk every tracked object. A service's start-up leaves hundreds
of thousands of them alive for good (FastAPI, pydantic, redis-py, OpenTelemetry), and each
relayed token allocates containers that trigger collections: the gateway spent ~15 % of its
CPU in ``gc_collect_main`` at 100 streams (py-spy --native). Freezing the start-up heap moves
it to the permanent generation; cycles made later are still collected.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000
"""Allocations between young collections (CPython's 700 suits short scripts)."""


_settled = False


def settle() -> None:
    """Call once start-up is done: collect, freeze what is alive, collect young less often.

    Once per process (a test process starts many apps: only the first heap is frozen)."""
    global _settled
    if _settled:
        return
    _settled = True
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
