"""Request bodies for the Mistral API (``kind = "mistral"``).

Mistral's chat completions and embeddings schemas set ``additionalProperties: false`` at every
level, so any field outside them gets a 422. The bodies below therefore list each field they
send, and leave out every field that has no value.
"""

from __future__ import annotations

from typing import Any

from dagwright.activities.llm.client import ChatRequest, ProviderClient


class MistralClient(ProviderClient):
    """Calls ``POST /chat/completions`` and ``POST /embeddings`` of the Mistral API."""

    def chat_body(self, request: ChatRequest) -> dict[str, Any]:
        """Build the chat completions body; the seed goes out as ``random_seed``."""
        body: dict[str, Any] = {
            "model": request.model,
            # Only role and content: Mistral rejects "name" on user and assistant messages.
            "messages": [
                {"role": message["role"], "content": message["content"]}
                for message in request.messages
            ],
        }
        optional = {
            "temperature": request.temperature,
            "top_p": request.top_p,
            "max_tokens": request.max_tokens,
            "random_seed": request.random_seed,
            "stop": request.stop,
            "response_format": self._response_format(request),
        }
        body.update({key: value for key, value in optional.items() if value is not None})
        return body

    def embed_body(self, model: str, inputs: list[str]) -> dict[str, Any]:
        """Build the embeddings body; the wire name is ``input``, not the SDK's ``inputs``."""
        return {"model": model, "input": inputs}
