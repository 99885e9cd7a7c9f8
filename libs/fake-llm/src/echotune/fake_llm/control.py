"""Client of the fake upstream's control API: script its replies, read what it saw."""

from __future__ import annotations

from typing import Any

import httpx


class FakeUpstream:
    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client, self.url = client, url

    async def script(self, key: str, *steps: dict[str, Any]) -> None:
        """The replies to the requests whose X-Request-Id is ``key``, one step per attempt."""
        response = await self.client.put(
            f"{self.url}/_control/scripts/{key}", json={"attempts": list(steps)}
        )
        response.raise_for_status()

    async def outage(self, model: str, for_s: float, step: dict[str, Any] | None = None) -> None:
        """Answer every request for ``model`` with ``step`` (default: a 503) for ``for_s``."""
        payload = {"step": step or {"status": 503}, "for_s": for_s}
        response = await self.client.put(f"{self.url}/_control/outages/{model}", json=payload)
        response.raise_for_status()

    async def all_requests(self) -> dict[str, list[dict[str, Any]]]:
        """Every key's recorded attempts."""
        response = await self.client.get(f"{self.url}/_control/requests")
        response.raise_for_status()
        records: dict[str, list[dict[str, Any]]] = response.json()
        return records

    async def requests(
        self, key: str, *, count: int = 1, until: str = "ended", wait_s: float = 10.0
    ) -> list[dict[str, Any]]:
        """The attempts seen for ``key``, once ``count`` of them exist and have ended (or
        ``until="started"``: exist), or as they are after ``wait_s``."""
        response = await self.client.get(
            f"{self.url}/_control/requests/{key}",
            params={"wait": wait_s, "count": count, "until": until},
        )
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()
        return records
