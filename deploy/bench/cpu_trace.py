"""When does a process stop working? Its CPU time, sampled every few milliseconds.

Used to check that llama.cpp's server stops generating once its client goes away: generation
keeps a core busy, so CPU time spent after a cancel, divided by the CPU time one token costs,
is how many tokens it still generated; and the last busy moment is when it stopped. CPU time
(not wall time) does not grow while a process waits for a core, so a loaded machine slows the
measurement down but does not fake it. Read from ``/proc/<pid>/task/*/schedstat`` (ns), finer
than the 10 ms ticks of ``/proc/<pid>/stat``.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path


def cpu_ns(pid: int) -> int:
    """CPU time of the live threads of ``pid``, in ns; 0 if it is gone."""
    total = 0
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return 0
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, IndexError, ValueError):  # a thread that just ended
            continue
    return total


@dataclass
class CpuTrace:
    """CPU samples of one process: (CLOCK_MONOTONIC seconds, CPU ns), taken by :meth:`run`."""

    pid: int
    interval_s: float = 0.005
    samples: list[tuple[float, int]] = field(default_factory=list)

    def sample(self) -> None:
        self.samples.append((time.monotonic(), cpu_ns(self.pid)))

    async def run(self) -> None:
        """Sample until cancelled."""
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)

    async def until_idle(
        self, after: float, window_s: float = 0.5, share: float = 0.05, timeout_s: float = 60.0
    ) -> float:
        """Wait (sampling) until the process used under ``share`` of a core for ``window_s``,
        after time ``after``; the start of that idle window. Raises TimeoutError."""
        async with asyncio.timeout(timeout_s):
            while True:
                self.sample()
                start = self.idle_since(after, window_s, share)
                if start is not None:
                    return start
                await asyncio.sleep(self.interval_s)

    def idle_since(self, after: float, window_s: float, share: float) -> float | None:
        """The start of the first window after ``after`` over which CPU use stayed below
        ``share`` of a core, if the samples already cover one."""
        times = [t for t, _ in self.samples]
        for index in range(bisect.bisect_left(times, after), len(self.samples)):
            t0, c0 = self.samples[index]
            end = bisect.bisect_left(times, t0 + window_s, lo=index)
            if end >= len(self.samples):
                return None
            t1, c1 = self.samples[end]
            if c1 - c0 < share * (t1 - t0) * 1e9:
                return t0
        return None

    def at(self, moment: float) -> int:
        """CPU ns at ``moment`` (the last sample taken at or before it)."""
        times = [t for t, _ in self.samples]
        index = max(bisect.bisect_right(times, moment) - 1, 0)
        return self.samples[index][1]

    def per_token(self, first: float, last: float, tokens: int) -> float:
        """CPU ns per token between the arrival of the first token (``first``, so prompt
        evaluation is left out) and ``last``, over which ``tokens`` more were generated. Over
        several tokens, so that tokens arriving in one burst do not matter."""
        if tokens < 1:
            raise ValueError("no token to divide by")
        return (self.at(last) - self.at(first)) / tokens

    def busy_until(self, after: float, until: float, share: float = 0.3) -> float:
        """The end of the last interval between two samples in [``after``, ``until``] over
        which the process used more than ``share`` of a core; ``after`` if there is none."""
        last = after
        for (t0, c0), (t1, c1) in itertools.pairwise(self.samples):
            if after <= t0 and t1 <= until and c1 - c0 > share * (t1 - t0) * 1e9:
                last = t1
        return last
