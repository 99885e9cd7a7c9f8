"""`make dev` as a test drives it: its own process group (as a terminal's foreground job), its
output kept, and every process it started found: by a marker in their environment, or (Redis
rewrites its environment for its process title) by a working directory under the run's TMPDIR."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Mapping
from pathlib import Path

from deploy.local.processes import PYTHON, ServiceProcess

MARK = "ECHOTUNE_DEV_TEST_MARK"
BANNER = r"echotune is running"
STARTING = r"starting echotune"


def marked_pids(mark: str, tmpdir: Path) -> set[int]:
    """Live processes whose environment carries ``MARK=mark`` or whose working directory lies
    under ``tmpdir`` (children inherit both; Redis changes into its data dir there)."""
    needle = f"{MARK}={mark}".encode()
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            cwd = os.readlink(entry / "cwd")
        except OSError:  # gone meanwhile, or a zombie
            continue
        if needle in environ.split(b"\0") or Path(cwd).is_relative_to(tmpdir):
            found.add(int(entry.name))
    return found


class DevRun:
    """One ``python -m deploy.local.dev`` (what ``make dev`` runs), in a new process group."""

    def __init__(self, env: Mapping[str, str], tmpdir: Path) -> None:
        self.mark, self.tmpdir = uuid.uuid4().hex, tmpdir
        env = {**env, MARK: self.mark, "TMPDIR": str(tmpdir)}
        self.proc = ServiceProcess("dev", [PYTHON, "-m", "deploy.local.dev"], env)

    async def start(self) -> None:
        """Start it without waiting for anything."""
        await self.proc.spawn()

    def processes(self) -> set[int]:
        """Every live process this run started, itself included."""
        return marked_pids(self.mark, self.tmpdir)

    async def wait_for_processes(self, count: int, timeout: float = 60.0) -> None:
        """Until at least ``count`` of its processes live (start-up is under way that far).
        Nothing announces a fork: polls /proc every 10 ms, bounded by ``timeout``."""
        async with asyncio.timeout(timeout):
            while len(self.processes()) < count:  # noqa: ASYNC110 - no event to await
                await asyncio.sleep(0.01)

    def interrupt(self) -> None:
        """Ctrl-C: SIGINT to the whole foreground process group, as a terminal sends it."""
        os.killpg(self.proc.pid, signal.SIGINT)

    async def exit_code(self, timeout: float = 90.0) -> int:
        assert self.proc.proc is not None
        async with asyncio.timeout(timeout):
            return await self.proc.proc.wait()

    async def wait_all_gone(self, timeout: float = 30.0) -> set[int]:
        """The processes still alive after ``timeout`` (polled every 50 ms): none is the goal."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := self.processes()) and loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        return left

    def kill_all(self) -> None:
        """Clean up after a failed test: SIGKILL whatever this run left behind."""
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def output(self) -> str:
        return self.proc.output()


__all__ = ["BANNER", "STARTING", "DevRun", "marked_pids"]
