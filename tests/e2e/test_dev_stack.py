"""`make dev` stops everything it started on Ctrl-C, at any moment, and starts again cleanly."""

from __future__ import annotations

import asyncio
import json
from asyncio.subprocess import PIPE
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deploy.local import local_model
from deploy.local.processes import ROOT
from deploy.local.servers import free_port
from tests.support.devstack import BANNER, STARTING, DevRun
from tests.support.sse import read_stream

# dev, Redis, SecantusDB, analytics, gateway, worker, telemetry: Ctrl-C once the n-th exists
# (1: once `make dev` says it is starting, before it started anything)
STAGES = [1, 2, 3, 4, 5, 6, 7]


@pytest.fixture(scope="module")
def dev_env() -> dict[str, str]:
    """Fixed ports for every run: a process left over from one run would block the next."""
    return {
        "ECHOTUNE_DEV_PORT": str(free_port()),
        "ECHOTUNE_DEV_ANALYTICS_PORT": str(free_port()),
        "ECHOTUNE_DEV_TELEMETRY_PORT": str(free_port()),
        "ECHOTUNE_LOCAL_MODEL": "0",
        # whatever the shell says, this stack starts its own servers and makes its own key
        "ECHOTUNE_REDIS_URL": "",
        "ECHOTUNE_MONGODB_URL": "",
        "ECHOTUNE_DEV_API_KEY": "",
    }


@pytest.fixture
def runs() -> Iterator[list[DevRun]]:
    started: list[DevRun] = []
    yield started
    for run in started:
        run.kill_all()


async def interrupted(run: DevRun) -> str:
    """Ctrl-C, then Ctrl-C again once it is stopping (``uv run`` forwards SIGINT a second time,
    and people press it twice); it must exit with nothing left behind and no traceback."""
    run.interrupt()
    await run.proc.wait_for_line(r"stopping", timeout=60)
    run.interrupt()
    code = await run.exit_code()
    left = await run.wait_all_gone()
    output = run.output()
    assert not left, f"still running after Ctrl-C: {sorted(left)}\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    assert code in (0, 130), f"exit code {code}\n{output[-3000:]}"
    assert "stopped" in [line.strip() for line in output.splitlines()], output[-3000:]
    return output


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.timeout(240)
async def test_ctrl_c_during_start_up_stops_everything(
    stage: int, dev_env: dict[str, str], runs: list[DevRun], tmp_path: Path
) -> None:
    run = DevRun(dev_env, tmp_path)
    runs.append(run)
    await run.start()
    if stage == 1:
        await run.proc.wait_for_line(STARTING, timeout=60)
    else:
        await run.wait_for_processes(stage)
    await interrupted(run)


@pytest.mark.timeout(300)
async def test_ctrl_c_after_start_up_then_a_second_run_starts(
    dev_env: dict[str, str], runs: list[DevRun], tmp_path: Path
) -> None:
    for n in range(2):
        (tmp_path / str(n)).mkdir()
        run = DevRun(dev_env, tmp_path / str(n))
        runs.append(run)
        await run.start()
        await run.proc.wait_for_line(BANNER, timeout=90)
        assert len(run.processes()) == 7, run.output()
        # the worker's metrics are on a free port: the banner says which (new-user review)
        worker = await run.proc.wait_for_line(r"worker\s+(http://\S+)/metrics", timeout=5)
        async with httpx.AsyncClient(timeout=10) as http:
            metrics = await http.get(f"{worker.group(1)}/metrics")
        assert "echotune_worker_job_slots" in metrics.text
        # nor did it name the analytics service (operator review)
        analytics = await run.proc.wait_for_line(r"analytics\s+(http://\S+)", timeout=5)
        async with httpx.AsyncClient(timeout=10) as http:
            schema = (await http.get(f"{analytics.group(1)}/openapi.json")).json()
        assert schema["info"]["title"] == "echotune analytics"
        if n == 0:
            await a_key_made_as_the_banner_says_works(run)
        await interrupted(run)


async def a_key_made_as_the_banner_says_works(run: DevRun) -> None:
    """README's ``echotune-apikey create`` went to another Redis than ``make dev``'s (a random
    port) and failed (new-user review): the banner prints the command with its Redis."""
    command = await run.proc.wait_for_line(r"more keys\s+(.+)$", timeout=5)
    gateway = await run.proc.wait_for_line(r"gateway\s+(http://\S+)", timeout=5)
    made = await asyncio.create_subprocess_exec(
        "bash", "-c", command.group(1), cwd=ROOT, stdout=PIPE, stderr=PIPE
    )
    out, err = await asyncio.wait_for(made.communicate(), timeout=60)
    assert made.returncode == 0, err.decode()
    key = json.loads(out)["api_key"]
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.get(
            f"{gateway.group(1)}/api/providers", headers={"Authorization": f"Bearer {key}"}
        )
    assert answer.status_code == 200, answer.text


async def test_a_malformed_dev_api_key_is_one_clear_line(
    dev_env: dict[str, str], runs: list[DevRun], tmp_path: Path
) -> None:
    run = DevRun({**dev_env, "ECHOTUNE_DEV_API_KEY": "my-key"}, tmp_path)
    runs.append(run)
    await run.start()
    code = await run.exit_code()
    lines = [line for line in run.output().splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1, lines
    assert "ECHOTUNE_DEV_API_KEY" in lines[0]
    assert "et_<id>_<secret>" in lines[0]
    assert not await run.wait_all_gone(timeout=1)


@pytest.mark.local_model
@pytest.mark.timeout(400)
async def test_dev_local_answers_with_the_local_model_and_stops_it(
    dev_env: dict[str, str], runs: list[DevRun], tmp_path: Path
) -> None:
    """What `make dev-local` runs: the stack answers with generated text, offline, from the
    local model, and Ctrl-C stops the model server too."""
    key = "et_devlocal_S3cretForTheLocalModelTest0123456789"
    run = DevRun({**dev_env, "ECHOTUNE_LOCAL_MODEL": "1", "ECHOTUNE_DEV_API_KEY": key}, tmp_path)
    runs.append(run)
    await run.start()
    gateway = (await run.proc.wait_for_line(r"gateway\s+(http://\S+)", timeout=240)).group(1)
    await run.proc.wait_for_line(BANNER, timeout=60)
    assert len(run.processes()) == 8, run.output()  # the seven of `make dev` and the model
    async with httpx.AsyncClient(timeout=120, headers={"Authorization": f"Bearer {key}"}) as http:
        result = await read_stream(
            http,
            "GET",
            f"{gateway}/api/chat/stream",
            params={"message": "Recommend three albums for a rainy evening", "use_context": "0"},
        )
    assert result.last.event == "done", result.last.data
    assert result.last.json["provider"] == local_model.PROVIDER
    assert len(result.text.split()) >= 5, result.text
    await interrupted(run)
