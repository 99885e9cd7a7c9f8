"""Child processes of the local stack and the tests: started, awaited by log lines, stopped."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

from echotune.web.protocol import HTTP

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


class ServiceProcess:
    """A child process whose combined output is kept and can be awaited line by line."""

    def __init__(self, name: str, args: list[str], env: Mapping[str, str]) -> None:
        self.name, self.args = name, args
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.lines: list[str] = []
        self.echo = bool(os.environ.get("ECHOTUNE_ECHO_LOGS"))
        self._new_line = asyncio.Condition()
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self.url = ""
        """Where its HTTP server listens, once started by :func:`start_service`."""

    async def spawn(self) -> None:
        """Start the process; its output is read (and kept) from now on."""
        self.proc = await asyncio.create_subprocess_exec(
            *self.args,
            cwd=ROOT,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self._reader = asyncio.create_task(self._read())

    async def start(self, ready: str, timeout: float = 30.0) -> re.Match[str]:
        """Start the process and wait until a line matches the ``ready`` pattern.

        Whatever interrupts the wait (time-out, exit, cancellation by Ctrl-C) stops the process:
        a half-started child is never left behind."""
        await self.spawn()
        try:
            return await self.wait_for_line(ready, timeout)
        except TimeoutError as exc:
            await self.stop()
            log = "\n".join(self.lines[-40:])
            raise RuntimeError(f"{self.name} did not start:\n{log}") from exc
        except BaseException:
            await self.stop()
            raise

    async def _read(self) -> None:
        assert self.proc
        assert self.proc.stdout
        async for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            if self.echo:
                print(f"[{self.name}] {line}", file=sys.stderr, flush=True)
            async with self._new_line:
                self.lines.append(line)
                self._new_line.notify_all()
        async with self._new_line:
            self._new_line.notify_all()

    async def wait_for_line(
        self, pattern: str, timeout: float = 10.0, start: int = 0
    ) -> re.Match[str]:
        """The first line from index ``start`` on that matches ``pattern``, awaited if needed."""
        regex = re.compile(pattern)
        async with asyncio.timeout(timeout), self._new_line:
            index = start
            while True:
                while index < len(self.lines):
                    if match := regex.search(self.lines[index]):
                        return match
                    index += 1
                if self._reader is not None and self._reader.done():
                    raise RuntimeError(f"{self.name} exited:\n" + "\n".join(self.lines[-40:]))
                await self._new_line.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        """Send ``sig`` and wait for the exit; SIGKILL the group if it does not come."""
        if self.proc is None or self.proc.returncode is not None:
            return self.proc.returncode if self.proc else None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        try:
            async with asyncio.timeout(timeout):
                code = await self.proc.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            code = await self.proc.wait()
        if self._reader:
            await asyncio.gather(self._reader, return_exceptions=True)
        return code

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.returncode is None:
            os.killpg(self.proc.pid, signal.SIGKILL)

    def output(self) -> str:
        return "\n".join(self.lines)


UVICORN_READY = r"Uvicorn running on (http://[\d.]+:\d+)"
FASTSTREAM_READY = r"FastStream app started successfully"


async def start_service(
    name: str, runner: str, app: str, env: Mapping[str, str], host: str, port: int
) -> tuple[ServiceProcess, str]:
    """Run ``app`` (an app factory) with ``uvicorn`` or ``faststream run``; the process and URL.

    Port 0 picks a free port; the URL is read from the server's "running on" log line.
    """
    command = ["uvicorn", app] if runner == "uvicorn" else ["faststream", "run", app]
    args = [*command, "--factory", "--host", host, "--port", str(port)]
    if runner == "uvicorn":
        # Idle keep-alive connections outlive any client's or proxy's (75 s > 60 s): the server
        # closing one just as a client reuses it would fail that request.
        args += ["--no-access-log", "--timeout-keep-alive", "75", "--http", HTTP]
    proc = ServiceProcess(name, [PYTHON, "-m", *args], env)
    match = await proc.start(UVICORN_READY)
    if runner == "faststream":
        await proc.wait_for_line(FASTSTREAM_READY, timeout=10.0)
    proc.url = match.group(1)
    return proc, proc.url


async def start_gateway(
    env: Mapping[str, str], name: str = "gateway", host: str = "127.0.0.1", port: int = 0
) -> tuple[ServiceProcess, str]:
    return await start_service(name, "uvicorn", "echotune.gateway.app:create_app", env, host, port)


async def start_analytics(
    env: Mapping[str, str], name: str = "analytics", host: str = "127.0.0.1", port: int = 0
) -> tuple[ServiceProcess, str]:
    return await start_service(
        name, "uvicorn", "echotune.analytics.app:create_app", env, host, port
    )


async def start_worker(env: Mapping[str, str], name: str = "worker") -> ServiceProcess:
    """An LLM worker; its health endpoint listens on a free port."""
    app = "echotune.worker.app:create_app"
    proc, _ = await start_service(name, "faststream", app, env, "127.0.0.1", 0)
    return proc


async def start_telemetry(
    env: Mapping[str, str], name: str = "telemetry", host: str = "127.0.0.1", port: int = 0
) -> tuple[ServiceProcess, str]:
    """The telemetry writer; its URL serves ``/metrics`` and ``/healthz``."""
    app = "echotune.telemetry.app:create_app"
    return await start_service(name, "faststream", app, env, host, port)


async def start_fake_llm(*args: str, name: str = "fake-llm") -> tuple[ServiceProcess, str]:
    """The fake LLM upstream (``echotune.fake_llm``, dev only) on a free port; its root URL."""
    proc = ServiceProcess(name, [PYTHON, "-m", "echotune.fake_llm", "--port", "0", *args], {})
    match = await proc.start(r"FAKE_LLM_READY port=(\d+)")
    return proc, f"http://127.0.0.1:{match.group(1)}"
