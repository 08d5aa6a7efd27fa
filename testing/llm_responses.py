"""Response bodies of the LLM stand-in and its token counting.

Token counts are deliberately simple so that tests can compute them by hand: a text of n
characters is ceil(n / 4) tokens. A prompt is the sum over its messages of the tokens of each
message's text (the text of string content, of text and thinking chunks, and of tool-call
names and arguments). Other chunks (images, documents, audio) and tool definitions count 0.
Completion tokens apply the same count to the returned assistant message.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from dagwright.testing.llm_script import Reply, ScriptedToolCall

CHARS_PER_TOKEN = 4


def count_tokens(text: str) -> int:
    """Return the stand-in's token count for `text`: ceil(characters / 4)."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def content_text(content: Any) -> str:
    """Return the text of a message's `content`: a string, None or a list of chunks."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for chunk in content if isinstance(content, list) else []:
        if not isinstance(chunk, dict):
            continue
        if chunk.get("type") == "text" and isinstance(chunk.get("text"), str):
            parts.append(chunk["text"])
        elif chunk.get("type") == "thinking":
            parts.append(content_text(chunk.get("thinking")))
    return "".join(parts)


def message_text(message: dict[str, Any]) -> str:
    """Return the text of one request message, including its tool calls."""
    text = content_text(message.get("content"))
    for call in message.get("tool_calls") or []:
        if not isinstance(call, dict) or not isinstance(call.get("function"), dict):
            continue
        function = call["function"]
        arguments = function.get("arguments", "")
        if not isinstance(arguments, str):
            arguments = json.dumps(arguments)
        text += str(function.get("name", "")) + arguments
    return text


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Return the prompt token count: the sum of each message's own count."""
    return sum(count_tokens(message_text(message)) for message in messages)


def usage(prompt: int, completion: int) -> dict[str, int]:
    """Build a `usage` object."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def tool_call_id(name: str, position: int) -> str:
    """Return a 9-character alphanumeric id, the only form Mistral accepts, derived from `name`."""
    digest = hashlib.sha256(f"{name}:{position}".encode()).hexdigest()
    return digest[:9]


def _tool_call(call: ScriptedToolCall, position: int) -> dict[str, Any]:
    arguments = call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)
    return {
        "id": call.id or tool_call_id(call.name, position),
        "type": "function",
        "function": {"name": call.name, "arguments": arguments},
        "index": position,
    }


def assistant_message(reply: Reply, max_tokens: int | None) -> tuple[dict[str, Any], str, int]:
    """Build the assistant message for `reply`, its finish reason and its completion tokens.

    A reply longer than `max_tokens` is cut to `max_tokens * 4` characters and finishes with
    "length", as a real model stops at the limit.
    """
    text = reply.content_text()
    finish_reason = reply.finish_reason or ("tool_calls" if reply.tool_calls else "stop")
    if max_tokens is not None and count_tokens(text) > max_tokens:
        text = text[: max_tokens * CHARS_PER_TOKEN]
        finish_reason = "length"

    content: str | list[dict[str, Any]] = text
    if reply.chunks or reply.thinking is not None:
        content = []
        if reply.thinking is not None:
            content.append(
                {"type": "thinking", "thinking": [{"type": "text", "text": reply.thinking}]}
            )
        content.append({"type": "text", "text": text})

    calls = [_tool_call(call, i) for i, call in enumerate(reply.tool_calls or [])]
    message = {
        "role": "assistant",
        "content": content,
        "tool_calls": calls or None,
        "prefix": False,
    }
    return message, finish_reason, count_tokens(message_text(message))


def chat_completion(
    completion_id: str,
    created: int,
    model: str,
    message: dict[str, Any],
    finish_reason: str,
    usage_body: dict[str, int],
) -> dict[str, Any]:
    """Build a non-streaming chat completion body."""
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
        "usage": usage_body,
    }


def embedding_list(
    response_id: str, model: str, vectors: list[Any], usage_body: dict[str, int]
) -> dict[str, Any]:
    """Build an embeddings body; each vector is a list of floats or a base64 string."""
    data = [
        {"object": "embedding", "embedding": vector, "index": i} for i, vector in enumerate(vectors)
    ]
    return {"id": response_id, "object": "list", "model": model, "data": data, "usage": usage_body}
