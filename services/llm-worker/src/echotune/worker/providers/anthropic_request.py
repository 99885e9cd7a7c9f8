"""The Anthropic Messages request body of a ProviderRequest: turns, tools, JSON output.

OpenAI concepts map as: assistant ``tool_calls`` → ``tool_use`` blocks, ``tool`` messages →
``tool_result`` blocks of a user turn, ``tool_choice`` auto/required/none/named → auto/any/
none/tool, ``parallel_tool_calls: false`` → ``disable_parallel_tool_use``, ``user`` →
``metadata.user_id``. JSON output is a forced call of one tool (:data:`JSON_TOOL`) whose input
schema is the requested one; the parser turns that call's input back into answer text.
"""

from __future__ import annotations

import json
import re
from typing import Any

from echotune.common.completion import CompletionFeatures, NamedToolChoice, ToolSpec
from echotune.common.messages import ChatMessage, Role
from echotune.worker.providers.base import ProviderRequest

DEFAULT_MAX_TOKENS = 1024
JSON_TOOL = "json_answer"
JSON_TOOL_DESCRIPTION = "Give your whole answer as the input of this tool."
ANY_OBJECT: dict[str, Any] = {"type": "object"}
NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}}
TOOL_CHOICES = {"auto": "auto", "required": "any", "none": "none"}
_ID_UNSAFE = re.compile(r"[^a-zA-Z0-9_-]")


def tool_id(value: str) -> str:
    """A tool call id as Anthropic accepts it (``^[a-zA-Z0-9_-]+$``), stable for equal input."""
    return _ID_UNSAFE.sub("_", value)


def messages_body(request: ProviderRequest) -> dict[str, Any]:
    """The JSON body of ``POST /v1/messages`` for ``request``."""
    system, turns = system_and_turns(request.messages)
    body: dict[str, Any] = {
        "model": request.model,
        "messages": turns,
        "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        "stream": True,
    }
    if system:
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = min(request.temperature, 1.0)
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if request.features is not None:
        body.update(feature_fields(request.features))
    return body


def system_and_turns(messages: list[ChatMessage]) -> tuple[str | None, list[dict[str, Any]]]:
    """System text (joined) and alternating user/assistant turns, same-role turns merged."""
    system = [m.content for m in messages if m.role is Role.SYSTEM]
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for message in messages:
        if message.role is Role.SYSTEM:
            continue
        role = "assistant" if message.role is Role.ASSISTANT else "user"
        blocks = _blocks(message)
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(blocks)
        else:
            turns.append((role, blocks))
    return ("\n\n".join(system) if system else None), [_turn(r, b) for r, b in turns]


def _blocks(message: ChatMessage) -> list[dict[str, Any]]:
    if message.role is Role.TOOL:
        tool_use_id = tool_id(message.tool_call_id or "")
        return [{"type": "tool_result", "tool_use_id": tool_use_id, "content": message.content}]
    blocks: list[dict[str, Any]] = []
    if message.content or not message.tool_calls:
        blocks.append({"type": "text", "text": message.content})
    for call in message.tool_calls or []:
        blocks.append(
            {
                "type": "tool_use",
                "id": tool_id(call.id),
                "name": call.function.name,
                "input": json.loads(call.function.arguments or "{}"),
            }
        )
    return blocks


def _turn(role: str, blocks: list[dict[str, Any]]) -> dict[str, Any]:
    """A turn; text-only turns keep the plain-string content (texts joined by a blank line)."""
    if all(block["type"] == "text" for block in blocks):
        return {"role": role, "content": "\n\n".join(block["text"] for block in blocks)}
    return {"role": role, "content": blocks}


def feature_fields(features: CompletionFeatures) -> dict[str, Any]:
    """Body fields for the request's tools, tool choice, JSON output, top_p and user."""
    fields: dict[str, Any] = {}
    if features.tools:
        fields["tools"] = [_tool(tool) for tool in features.tools]
    choice = _tool_choice(features)
    if features.wants_json:
        schema = features.response_format.schema_or_none if features.response_format else None
        json_tool = {
            "name": JSON_TOOL,
            "description": JSON_TOOL_DESCRIPTION,
            "input_schema": schema or ANY_OBJECT,
        }
        fields["tools"] = [json_tool]
        choice = {"type": "tool", "name": JSON_TOOL}
    if choice is not None:
        fields["tool_choice"] = choice
    if features.top_p is not None:
        fields["top_p"] = features.top_p
    if features.user is not None:
        fields["metadata"] = {"user_id": features.user}
    return fields


def _tool(tool: ToolSpec) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": tool.function.name}
    if tool.function.description:
        spec["description"] = tool.function.description
    spec["input_schema"] = tool.function.parameters or NO_ARGUMENTS
    return spec


def _tool_choice(features: CompletionFeatures) -> dict[str, Any] | None:
    wanted = features.tool_choice
    if wanted is None and features.parallel_tool_calls is not False:
        return None
    if isinstance(wanted, NamedToolChoice):
        choice: dict[str, Any] = {"type": "tool", "name": wanted.function.name}
    else:
        choice = {"type": TOOL_CHOICES[wanted or "auto"]}
    if features.parallel_tool_calls is False and choice["type"] != "none":
        choice["disable_parallel_tool_use"] = True
    return choice
