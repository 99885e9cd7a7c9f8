"""A real Prometheus server (Debian's ``prometheus``) scraping the test stack."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from deploy.local.processes import ServiceProcess
from deploy.local.servers import free_port

READY = r"Server is ready to receive web requests"


def scrape_config(targets: Mapping[str, list[str]], interval_s: float) -> dict[str, Any]:
    """One job per service name; targets as ``host:port``."""
    interval = f"{max(int(interval_s * 1000), 100)}ms"
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": hosts}]}
            for job, hosts in targets.items()
        ],
    }


class Prometheus:
    def __init__(self, url: str, http: httpx.AsyncClient) -> None:
        self.url, self.http = url, http

    async def query(self, promql: str) -> list[dict[str, Any]]:
        response = await self.http.get(f"{self.url}/api/v1/query", params={"query": promql})
        response.raise_for_status()
        body = response.json()
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def value(self, promql: str) -> float | None:
        """The single value of a query (``sum(...)``-style), ``None`` when it has none."""
        result = await self.query(promql)
        return float(result[0]["value"][1]) if result else None

    async def wait_for_value(
        self, promql: str, expected: float, timeout: float = 60.0
    ) -> float | None:
        """Poll until the query's value is ``expected`` (scrapes come every interval);
        the last value seen otherwise."""
        deadline, seen = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            seen = await self.value(promql)
            if seen == expected:
                return seen
            await asyncio.sleep(0.2)
        return seen

    async def wait(self, condition: Callable[[], Any], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not await condition():
            if time.monotonic() > deadline:
                raise TimeoutError("Prometheus never saw it")
            await asyncio.sleep(0.2)


@asynccontextmanager
async def prometheus(
    targets: Mapping[str, list[str]], interval_s: float = 0.5
) -> AsyncIterator[Prometheus]:
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("no `prometheus` on the PATH: apt-get install prometheus")
    with tempfile.TemporaryDirectory(prefix="echotune-prom-") as folder:
        config = Path(folder) / "prometheus.yml"
        config.write_text(yaml.safe_dump(scrape_config(targets, interval_s)))
        port = free_port()
        args = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={Path(folder) / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ]
        proc = ServiceProcess("prometheus", args, {})
        await proc.start(READY, timeout=60.0)
        try:
            async with httpx.AsyncClient(timeout=10.0) as http:
                yield Prometheus(f"http://127.0.0.1:{port}", http)
        finally:
            await proc.stop()
