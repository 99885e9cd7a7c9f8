"""API keys in Redis: install, verify, revoke."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from deploy.local.servers import free_port
from echotune.common.keys import Keys
from echotune.gateway.auth.cli import parser, run
from echotune.gateway.auth.keys import ApiKeyStore
from echotune.gateway.settings import GatewaySettings

DEV_KEY = "et_devkey01_s3cret-value"


async def test_a_revoked_dev_key_stays_revoked_when_a_gateway_starts_again(redis: Redis) -> None:
    """Every gateway start installs the dev key: it overwrote the record, revocation included."""
    store = ApiKeyStore(redis, Keys(f"t{uuid.uuid4().hex[:10]}"))
    await store.install(DEV_KEY, "dev", "dev key")
    created = (await store.get("devkey01")).created  # type: ignore[union-attr]
    assert await store.revoke("devkey01")
    await store.install(DEV_KEY, "dev", "dev key")  # the next start
    assert await store.verify(DEV_KEY) is None
    record = await store.get("devkey01")
    assert record is not None
    assert (record.revoked, record.created) == (True, created)


async def test_a_key_installed_with_a_new_secret_replaces_the_old_one(redis: Redis) -> None:
    store = ApiKeyStore(redis, Keys(f"t{uuid.uuid4().hex[:10]}"))
    await store.install(DEV_KEY, "dev", "dev key")
    await store.install("et_devkey01_another-secret", "dev", "dev key")
    assert await store.verify(DEV_KEY) is None
    assert await store.verify("et_devkey01_another-secret") == "dev"


@pytest.mark.parametrize("user", ["", "   ", "u" * 129, "anonymous"])
def test_a_key_for_no_user_is_refused(user: str) -> None:
    """``echotune-apikey create --user ""`` made a working key whose user the analytics routes
    refuse (a 422 about a ``user_id`` the caller never sent); one for ``anonymous`` could set
    the provider for everyone and act as any user on the OpenAI door."""
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(["create", "--user", user])
    assert exited.value.code == 2


async def test_the_store_refuses_a_key_for_no_user(redis: Redis) -> None:
    store = ApiKeyStore(redis, Keys(f"t{uuid.uuid4().hex[:10]}"))
    with pytest.raises(ValueError, match="user id"):
        await store.install(DEV_KEY, "", "dev key")


async def test_the_cli_says_in_one_line_that_redis_is_unreachable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """It died with a 60-line ``ConnectionError`` traceback when its ``ECHOTUNE_REDIS_URL``
    was not ``make dev``'s Redis (new-user review)."""
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    code = await run(parser().parse_args(["list"]), GatewaySettings(redis_url=url))
    assert code == 2
    said = capsys.readouterr().err.strip()
    assert said.startswith(f"echotune-apikey: cannot use Redis at {url}"), said
    assert "ECHOTUNE_REDIS_URL" in said
    assert "\n" not in said
    port = free_port()
    for secret in (
        f"redis://:s3cret@127.0.0.1:{port}/0",
        f"redis://127.0.0.1:{port}/0?password=s3cret",
    ):
        assert await run(parser().parse_args(["list"]), GatewaySettings(redis_url=secret)) == 2
        assert "s3cret" not in capsys.readouterr().err, secret


async def test_the_cli_says_in_one_line_that_a_url_is_not_redis(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A URL naming an HTTP server (the gateway's port, by mistake) was a 58-line traceback
    (``InvalidResponse``), not a ``ConnectionError`` (review)."""

    async def http_only(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n<html>")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(http_only, "127.0.0.1", 0)
    url = f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    async with server:
        code = await run(parser().parse_args(["list"]), GatewaySettings(redis_url=url))
    assert code == 2
    said = capsys.readouterr().err.strip()
    assert said.startswith(f"echotune-apikey: cannot use Redis at {url}"), said
    assert "\n" not in said
