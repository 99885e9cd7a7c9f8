"""Conversations: a user's list (most recent first) and one conversation."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from echotune.analytics import params
from echotune.analytics.conversations import (
    CONVERSATION_FIELDS,
    LIST_DEFAULT_FIELDS,
    get_conversation,
    list_conversations,
)
from echotune.analytics.deps import DatabaseDep, FieldsQuery, PageDep, SettingsDep
from echotune.analytics.responses import envelope
from echotune.analytics.schemas import ERROR_RESPONSES, Conversation, Envelope
from echotune.common.mongo import CONVERSATIONS
from echotune.web.errors import ApiError

router = APIRouter(prefix="/api/conversations", tags=["conversations"])
UserId = Annotated[str, Query(min_length=1, max_length=128, description="The owner")]
ConversationId = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
]


@router.get(
    "",
    summary="A user's conversations, most recent activity first",
    response_model=Envelope[list[Conversation]],
    response_model_exclude_unset=True,
    responses=ERROR_RESPONSES,
)
async def conversations(
    db: DatabaseDep,
    settings: SettingsDep,
    user_id: UserId,
    page: PageDep,
    fields: FieldsQuery = None,
) -> Any:
    """`fields` among user_id, summary, message_count, last_activity, turns (default all but
    turns); the id always comes."""
    chosen = params.field_list(fields, CONVERSATION_FIELDS, LIST_DEFAULT_FIELDS, always=("id",))
    items, total = await list_conversations(db, user_id, chosen, page, settings.query_timeout_ms)
    return envelope(
        items,
        filters={"user_id": user_id},
        fields=chosen or ("id",),
        page=page,
        total=total,
        source=CONVERSATIONS,
    )


@router.get(
    "/{conversation_id}",
    summary="One conversation with its latest turns",
    response_model=Envelope[Conversation],
    response_model_exclude_unset=True,
    responses={404: {"description": "No such conversation"}, **ERROR_RESPONSES},
)
async def conversation(
    db: DatabaseDep,
    settings: SettingsDep,
    conversation_id: ConversationId,
    user_id: Annotated[
        str | None, Query(min_length=1, max_length=128, description="Must be the owner")
    ] = None,
    fields: FieldsQuery = None,
) -> Any:
    """404 when it does not exist, or belongs to another user than `user_id`."""
    chosen = params.field_list(fields, CONVERSATION_FIELDS, always=("id",))
    found = await get_conversation(db, conversation_id, user_id, chosen, settings.query_timeout_ms)
    if found is None:
        raise ApiError(
            404, "conversation_not_found", "no such conversation", details={"id": conversation_id}
        )
    return envelope(found, fields=chosen or ("id",), source=CONVERSATIONS)
