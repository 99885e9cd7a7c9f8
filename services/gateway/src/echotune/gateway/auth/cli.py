"""``echotune-apikey``: create, list and revoke API keys (in the Redis the gateway uses)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from urllib.parse import parse_qsl, urlencode, urlsplit

from redis.asyncio import Redis
from redis.exceptions import RedisClusterException, RedisError

from echotune.common.redis import create_redis
from echotune.gateway.auth.keys import ApiKeyStore, checked_user_id, public
from echotune.gateway.auth.sessions import SessionStore
from echotune.gateway.settings import GatewaySettings


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="echotune-apikey", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key and print it once")
    create.add_argument(
        "--user", required=True, type=checked_user_id, help="the user id the key acts as"
    )
    create.add_argument("--name", default="", help="a label, e.g. the device")
    revoke = commands.add_parser(
        "revoke", help="revoke a key by its id and end the browser sessions issued from it"
    )
    revoke.add_argument("key_id")
    commands.add_parser("list", help="list keys (never their secrets)")
    return root


async def run(args: argparse.Namespace, settings: GatewaySettings) -> int:
    redis = create_redis(settings.redis_url, max_connections=2)
    try:
        return await _command(args, settings, redis)
    except (RedisError, RedisClusterException, OSError) as exc:
        reason = " ".join(str(exc).split())
        print(
            f"echotune-apikey: cannot use Redis at {_shown(settings.redis_url)} ({reason}); set "
            "ECHOTUNE_REDIS_URL to the gateway's Redis (make dev prints the command)",
            file=sys.stderr,
        )
        return 2
    finally:
        await redis.aclose()


def _shown(url: str) -> str:
    """``url`` without its password (in its user info or, as redis-py also takes it, its
    query)."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@")
    query = [
        (name, "***" if name == "password" else value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return parts._replace(netloc=netloc, query=urlencode(query, safe="*")).geturl()


async def _command(args: argparse.Namespace, settings: GatewaySettings, redis: Redis) -> int:
    store = ApiKeyStore(redis, settings.keys)
    if args.command == "create":
        record, plaintext = await store.create(args.user, args.name)
        print(json.dumps({**public(record), "api_key": plaintext}))
    elif args.command == "revoke":
        if not await store.revoke(args.key_id):
            print(f"no key {args.key_id}", file=sys.stderr)
            return 1
        ended = await SessionStore(redis, settings.keys).end_all(args.key_id)
        print(json.dumps({"key_id": args.key_id, "revoked": True, "sessions_ended": ended}))
    else:
        for record in await store.list():
            print(json.dumps(public(record)))
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(asyncio.run(run(parser().parse_args(argv), GatewaySettings())))
