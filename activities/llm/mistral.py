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
        return self._common_chat_body(request, seed_field="random_seed")

    def embed_body(self, model: str, inputs: list[str]) -> dict[str, Any]:
        """Build the embeddings body; the wire name is ``input``, not the SDK's ``inputs``."""
        return {"model": model, "input": inputs}
