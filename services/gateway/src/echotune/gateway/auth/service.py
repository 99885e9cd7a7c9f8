"""Authentication of a request: API key in ``Authorization: Bearer``, else the session cookie."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection

from echotune.gateway.auth import sessions
from echotune.gateway.auth.keys import ANONYMOUS, ApiKeyStore
from echotune.gateway.auth.sessions import Session, SessionStore
from echotune.gateway.settings import GatewaySettings
from echotune.web.errors import ApiError

DEV_USER = "dev"
RECHECK_S = 2.0
"""How long a session found live is trusted before Redis is asked again (logout, revocation)."""
MAX_CACHED = 10_000


@dataclass
class Authenticator:
    keys: ApiKeyStore
    sessions: SessionStore
    secret: bytes
    enabled: bool
    _live_until: dict[str, float] = field(default_factory=dict)
    """Session id → monotonic time until which it is trusted without asking Redis."""

    @classmethod
    def from_settings(
        cls, keys: ApiKeyStore, store: SessionStore, settings: GatewaySettings
    ) -> Authenticator:
        configured = settings.session_secret
        secret = configured.get_secret_value().encode() if configured else secrets.token_bytes(32)
        return cls(keys, store, secret, settings.auth_enabled)

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
        session = self.session_of(connection)
        if session is not None and await self._is_live(session):
            return session.user_id
        raise _unauthorized(
            "unauthenticated",
            "send `Authorization: Bearer <api key>` or log in at /api/auth/session",
        )

    def session_of(self, connection: HTTPConnection) -> Session | None:
        """The well-signed, unexpired session the cookie names (maybe ended since)."""
        token = connection.cookies.get(sessions.COOKIE)
        return sessions.verify(self.secret, token) if token else None

    async def end(self, session: Session) -> None:
        """Log out: the session ends everywhere (other gateways within ``RECHECK_S``)."""
        self._live_until.pop(session.session_id, None)
        await self.sessions.end(session)

    async def _is_live(self, session: Session) -> bool:
        now = time.monotonic()
        if self._live_until.get(session.session_id, 0) > now:
            return True
        self._live_until.pop(session.session_id, None)
        live = await self.sessions.is_live(session) and await self.keys.is_active(session.key_id)
        if live:
            if len(self._live_until) >= MAX_CACHED:
                self._live_until.pop(next(iter(self._live_until)))
            self._live_until[session.session_id] = now + RECHECK_S
        return live


def _unauthorized(code: str, message: str) -> ApiError:
    return ApiError(401, code, message, headers={"WWW-Authenticate": 'Bearer realm="echotune"'})
