"""Schemathesis fuzzes the gateway's OpenAPI: no 5xx, every 4xx has a JSON error body."""

from __future__ import annotations

import asyncio
import os
import re

import pytest

from deploy.local.processes import PYTHON, ROOT
from tests.support.stack import API_KEY, start_stack

# `make test` fuzzes each operation 25 times with a fixed seed; `make fuzz` 100 times (or
# FUZZ_EXAMPLES) with a new seed each run (`make fuzz` prints it; FUZZ_SEED=... replays it).
EXAMPLES_PER_OPERATION = int(os.environ.get("ECHOTUNE_FUZZ_EXAMPLES", "25"))
SEED = os.environ.get("ECHOTUNE_FUZZ_SEED", "20261126")
MIN_CASES = 10 * EXAMPLES_PER_OPERATION


async def run_schemathesis(
    url: str, *extra: str, checks: str = "not_a_server_error,json_error_body"
) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/openapi.json",
        "--checks",
        checks,
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--header",
        f"Authorization: Bearer {API_KEY}",
        "--request-timeout",
        "30",
        "--no-color",
        "--seed",
        SEED,
        *extra,
        cwd=ROOT,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "tests.support.fuzz_checks"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await proc.communicate()
    return await proc.wait(), output.decode(errors="replace")


def cases_generated(report: str) -> int:
    match = re.search(r"(\d+) (?:test cases|generated)", report)
    assert match, report[-2000:]
    return int(match.group(1))


@pytest.mark.timeout(1200)  # `make fuzz FUZZ_EXAMPLES=...` may run long
async def test_gateway_survives_fuzzing(redis_server_url: str, fake_llm: str) -> None:
    stack = await start_stack(redis_server_url, fake_llm)  # its own: the fuzzer switches providers
    try:
        code, report = await run_schemathesis(
            stack.url, "--exclude-path-regex", "^/api/(analytics|insights|conversations)"
        )
    finally:
        await stack.stop()
    print(report[-1500:])
    assert code == 0, report[-4000:]
    assert cases_generated(report) >= MIN_CASES
