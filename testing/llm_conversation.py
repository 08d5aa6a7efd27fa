"""Conversation rules that Mistral enforces after schema validation, each giving a 400.

Mistral serves a conversation only when its roles come in an order its chat template accepts
and its tool-call ids have the form its tokenizer encodes. These checks run on a request that
already passed `ChatCompletionRequest` validation. Messages are the rules' own wording as seen
in public bug reports up to 2026.
"""

from __future__ import annotations

import re

from dagwright.testing import llm_errors
from dagwright.testing.llm_schema import (
    AssistantMessage,
    ChatCompletionRequest,
    ToolMessage,
    UserMessage,
)

TOOL_CALL_ID = re.compile(r"[A-Za-z0-9]{9}")


def check_conversation(request: ChatCompletionRequest) -> None:
    """Raise `ApiError` (400) for the first conversation rule that `request` breaks."""
    messages = request.messages
    if not messages:
        # NOTE: the real API's reply to an empty list is not documented; 400 is a guess.
        raise llm_errors.bad_request("messages must contain at least one message")

    _check_tool_call_ids(request)
    _check_assistant_content(request)
    _check_role_order(request)
    _check_last_role(request)


def _check_tool_call_ids(request: ChatCompletionRequest) -> None:
    for message in request.messages:
        ids: list[str] = []
        if isinstance(message, AssistantMessage):
            ids = [call.id for call in message.tool_calls or []]
        elif isinstance(message, ToolMessage) and message.tool_call_id is not None:
            ids = [message.tool_call_id]
        for tool_call_id in ids:
            if not TOOL_CALL_ID.fullmatch(tool_call_id):
                raise llm_errors.invalid_tool_call_id(tool_call_id)


def _check_assistant_content(request: ChatCompletionRequest) -> None:
    for message in request.messages:
        if isinstance(message, AssistantMessage) and not message.content and not message.tool_calls:
            raise llm_errors.bad_request(
                "Assistant message must have either content or tool_calls, but not none."
            )


def _check_role_order(request: ChatCompletionRequest) -> None:
    previous_role = "none"
    pending_calls = 0  # tool calls of the last assistant turn that have no result yet

    for message in request.messages:
        if message.role == "tool":
            if previous_role not in ("assistant", "tool"):
                raise llm_errors.message_order(
                    f"Unexpected role 'tool' after role '{previous_role}'"
                )
            if pending_calls == 0:
                raise _count_mismatch()
            pending_calls -= 1
        else:
            if pending_calls > 0:
                raise _count_mismatch()
            if message.role == "user" and previous_role == "tool":
                raise llm_errors.message_order("Unexpected role 'user' after role 'tool'")
            if isinstance(message, AssistantMessage):
                pending_calls = len(message.tool_calls or [])
        previous_role = message.role

    # An assistant turn with calls as the last message is left to the last-role rule.
    if pending_calls > 0 and previous_role == "tool":
        raise _count_mismatch()


def _count_mismatch() -> llm_errors.ApiError:
    return llm_errors.message_order("Not the same number of function calls and responses")


def _check_last_role(request: ChatCompletionRequest) -> None:
    last = request.messages[-1]
    if isinstance(last, (UserMessage, ToolMessage)):
        return
    if isinstance(last, AssistantMessage) and last.prefix:
        return
    raise llm_errors.message_order(
        "Expected last role User or Tool (or Assistant with prefix True) for serving but got "
        f"{last.role}"
    )
