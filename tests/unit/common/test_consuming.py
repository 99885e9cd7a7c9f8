"""Subscribers stopped by a lost group are started again, after the group is made again."""

from __future__ import annotations

from echotune.common.consuming import restart_stopped


class FakeSubscriber:
    def __init__(self, running: bool, log: list[str], name: str) -> None:
        self.running, self.log, self.name = running, log, name

    async def start(self) -> None:
        self.log.append(f"start {self.name}")
        self.running = True

    async def stop(self) -> None:
        self.running = False


async def test_only_stopped_subscribers_restart_after_the_group_is_recreated() -> None:
    log: list[str] = []
    subscribers = [FakeSubscriber(True, log, "new"), FakeSubscriber(False, log, "reclaim")]

    async def recreate() -> None:
        log.append("group")

    assert await restart_stopped(subscribers, recreate) == 1
    assert log == ["group", "start reclaim"]
    assert await restart_stopped(subscribers, recreate) == 0
    assert log == ["group", "start reclaim"]
