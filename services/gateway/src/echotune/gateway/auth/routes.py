"""Browser login: trade an API key for an HttpOnly session cookie."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from echotune.gateway.auth import sessions
from echotune.gateway.auth.keys import parse_key_id
from echotune.gateway.deps import AuthDep, SettingsDep, UserIdDep
from echotune.web.errors import ApiError

router = APIRouter(prefix="/api/auth", tags=["auth"])


class Login(BaseModel):
    api_key: str = Field(min_length=1, max_length=200)


class Me(BaseModel):
    user_id: str


@router.post("/session", summary="Log in with an API key (sets the session cookie)")
async def login(body: Login, auth: AuthDep, settings: SettingsDep, response: Response) -> Me:
    user_id = await auth.keys.verify(body.api_key)
    key_id = parse_key_id(body.api_key)
    if user_id is None or key_id is None:
        raise ApiError(401, "invalid_api_key", "this API key is not valid")
    session = await auth.sessions.start(key_id, user_id, settings.session_ttl_s)
    token = sessions.issue(auth.secret, session)
    response.set_cookie(
        sessions.COOKIE,
        token,
        max_age=settings.session_ttl_s,
        httponly=True,
        samesite="strict",
        secure=settings.cookie_secure,
        path="/",
    )
    return Me(user_id=user_id)


@router.delete("/session", status_code=204, summary="Log out (ends the session server-side)")
async def logout(request: Request, auth: AuthDep, response: Response) -> Response:
    session = auth.session_of(request)
    if session is not None:
        await auth.end(session)
    response.delete_cookie(sessions.COOKIE, path="/")
    response.status_code = 204
    return response


@router.get("/me", summary="Who the caller is")
async def me(user_id: UserIdDep) -> Me:
    return Me(user_id=user_id)
