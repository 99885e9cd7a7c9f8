"""The Gemini ``streamGenerateContent`` body of a ProviderRequest: contents, tools, JSON output.

OpenAI concepts map as: assistant ``tool_calls`` → ``functionCall`` parts of a ``model`` turn,
``tool`` messages → ``functionResponse`` parts (named after the call they answer), ``tools`` →
``functionDeclarations`` (``parametersJsonSchema``), ``tool_choice`` auto/required/none/named
→ ``functionCallingConfig`` AUTO/ANY/NONE/ANY+allowedFunctionNames, ``response_format`` →
``responseMimeType`` (+ ``responseJsonSchema``), ``logprobs``/``top_logprobs`` →
``responseLogprobs``/``logprobs``, ``seed``, penalties and ``top_p`` → ``generationConfig``.

Gemini (3 and later) wants the ``thoughtSignature`` of a function call back with it in the
history; the parser appends it to the tool call id (after :data:`SIGNATURE_MARK`), so a client
that sends the id back sends the signature back. A model turn whose first call has none (it came
from another provider, or the client made it) gets Google's documented
:data:`SKIP_SIGNATURE` sentinel.
"""

from __future__ import annotations

import json
from typing import Any

from echotune.common.completion import CompletionFeatures, NamedToolChoice
from echotune.common.messages import ChatMessage, Role
from echotune.worker.providers.base import ProviderRequest

SIGNATURE_MARK = "__ts__"
SKIP_SIGNATURE = "skip_thought_signature_validator"
MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}


def generate_body(request: ProviderRequest) -> dict[str, Any]:
    """The JSON body of ``streamGenerateContent`` for ``request``."""
    system, contents = system_and_contents(request.messages)
    body: dict[str, Any] = {"contents": contents}
    if system:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    config: dict[str, Any] = {}
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.max_tokens is not None:
        config["maxOutputTokens"] = request.max_tokens
    if request.stop:
        config["stopSequences"] = list(request.stop)
    if request.features is not None:
        config.update(generation_fields(request.features))
        body.update(tool_fields(request.features))
    if config:
        body["generationConfig"] = config
    return body


def system_and_contents(messages: list[ChatMessage]) -> tuple[str | None, list[dict[str, Any]]]:
    """System text (joined) and the contents, consecutive same-role turns merged."""
    system = [m.content for m in messages if m.role is Role.SYSTEM]
    names = {call.id: call.function.name for m in messages for call in m.tool_calls or []}
    turns: list[tuple[str, list[dict[str, Any]]]] = []
    for message in messages:
        if message.role is Role.SYSTEM:
            continue
        role = "model" if message.role is Role.ASSISTANT else "user"
        parts = _parts(message, names)
        if turns and turns[-1][0] == role:
            turns[-1][1].extend(parts)
        else:
            turns.append((role, parts))
    contents = [{"role": role, "parts": _signed(_joined(parts))} for role, parts in turns]
    return ("\n\n".join(system) if system else None), contents


def _parts(message: ChatMessage, names: dict[str, str]) -> list[dict[str, Any]]:
    if message.role is Role.TOOL:
        call_id = message.tool_call_id or ""
        response = {"name": names.get(call_id, ""), "response": _response(message.content)}
        return [{"functionResponse": response}]
    parts: list[dict[str, Any]] = []
    if message.content or not message.tool_calls:
        parts.append({"text": message.content})
    for call in message.tool_calls or []:
        args = json.loads(call.function.arguments or "{}")
        part: dict[str, Any] = {"functionCall": {"name": call.function.name, "args": args}}
        _, mark, signature = call.id.partition(SIGNATURE_MARK)
        if mark and signature:
            part["thoughtSignature"] = signature
        parts.append(part)
    return parts


def _response(content: str) -> dict[str, Any]:
    """A tool result as a Struct: a JSON object as is, anything else as ``output``."""
    try:
        value = json.loads(content)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"output": content}


def _signed(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The first function call of a turn carries a signature (the sentinel if it had none)."""
    first = next((part for part in parts if "functionCall" in part), None)
    if first is not None:
        first.setdefault("thoughtSignature", SKIP_SIGNATURE)
    return parts


def _joined(parts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive text parts joined by a blank line (as single messages always were)."""
    joined: list[dict[str, Any]] = []
    for part in parts:
        if joined and set(part) == {"text"} and set(joined[-1]) == {"text"}:
            joined[-1] = {"text": f"{joined[-1]['text']}\n\n{part['text']}"}
        else:
            joined.append(part)
    return joined


def generation_fields(features: CompletionFeatures) -> dict[str, Any]:
    """``generationConfig`` fields for JSON output, logprobs, seed, penalties and top_p."""
    config: dict[str, Any] = {}
    if features.wants_json:
        config["responseMimeType"] = "application/json"
        schema = features.response_format.schema_or_none if features.response_format else None
        if schema is not None:
            config["responseJsonSchema"] = schema
    if features.logprobs:
        config["responseLogprobs"] = True
        if features.top_logprobs:
            config["logprobs"] = features.top_logprobs
    simple = {
        "seed": features.seed,
        "presencePenalty": features.presence_penalty,
        "frequencyPenalty": features.frequency_penalty,
        "topP": features.top_p,
    }
    config.update({key: value for key, value in simple.items() if value is not None})
    return config


def tool_fields(features: CompletionFeatures) -> dict[str, Any]:
    """``tools`` and ``toolConfig``."""
    fields: dict[str, Any] = {}
    if features.tools:
        declarations = []
        for tool in features.tools:
            declaration: dict[str, Any] = {"name": tool.function.name}
            if tool.function.description:
                declaration["description"] = tool.function.description
            if tool.function.parameters:
                declaration["parametersJsonSchema"] = tool.function.parameters
            declarations.append(declaration)
        fields["tools"] = [{"functionDeclarations": declarations}]
    choice = features.tool_choice
    if isinstance(choice, NamedToolChoice):
        config = {"mode": "ANY", "allowedFunctionNames": [choice.function.name]}
        fields["toolConfig"] = {"functionCallingConfig": config}
    elif choice is not None:
        fields["toolConfig"] = {"functionCallingConfig": {"mode": MODES[choice]}}
    return fields
