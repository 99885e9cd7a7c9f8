"""Authentication of a request: API key in ``Authorization: Bearer``, else the session cookie."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from echotune.gateway.auth import sessions
from echotune.gateway.auth.keys import ApiKeyStore
from echotune.gateway.errors import ApiError
from echotune.gateway.settings import GatewaySettings

ANONYMOUS = "anonymous"
DEV_USER = "dev"


@dataclass
class Authenticator:
    keys: ApiKeyStore
    secret: bytes
    enabled: bool

    @classmethod
    def from_settings(cls, keys: ApiKeyStore, settings: GatewaySettings) -> Authenticator:
        configured = settings.session_secret
        secret = configured.get_secret_value().encode() if configured else secrets.token_bytes(32)
        return cls(keys, secret, settings.auth_enabled)

    async def user_of(self, connection: HTTPConnection) -> str:
        """The caller's user id, or a 401 that says how to authenticate."""
        if not self.enabled:
            return ANONYMOUS
        header = connection.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() == "bearer" and credential.strip():
            user_id = await self.keys.verify(credential.strip())
            if user_id is None:
                raise _unauthorized("invalid_api_key", "this API key is not valid or was revoked")
            return user_id
        token = connection.cookies.get(sessions.COOKIE)
        if token and (user_id := sessions.verify(self.secret, token)):
            return user_id
        raise _unauthorized(
            "unauthenticated",
            "send `Authorization: Bearer <api key>` or log in at /api/auth/session",
        )


def _unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, headers={"WWW-Authenticate": 'Bearer realm="echotune"'})
