"""API keys in Redis: install, verify, revoke."""

from __future__ import annotations

import uuid

import pytest
from redis.asyncio import Redis

from echotune.common.keys import Keys
from echotune.gateway.auth.cli import parser
from echotune.gateway.auth.keys import ApiKeyStore

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
