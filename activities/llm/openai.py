"""Request bodies for OpenAI-compatible servers (``kind = "openai"``).

This covers OpenAI itself and local servers such as vLLM, Ollama and llama.cpp. They ignore or
reject unknown fields in different ways, so the bodies send only fields that all of them accept.
"""

from __future__ import annotations

from typing import Any

from dagwright.activities.llm.client import ChatRequest, ProviderClient


class OpenAIClient(ProviderClient):
    """Calls ``POST /chat/completions`` and ``POST /embeddings`` of an OpenAI-compatible server."""

    def chat_body(self, request: ChatRequest) -> dict[str, Any]:
        """Build the chat completions body; the node's ``random_seed`` goes out as ``seed``."""
        # NOTE: OpenAI's reasoning models want max_completion_tokens instead of max_tokens, but
        # vLLM, Ollama and llama.cpp read max_tokens, so max_tokens is what goes out.
        return self._common_chat_body(request, seed_field="seed")

    def embed_body(self, model: str, inputs: list[str]) -> dict[str, Any]:
        """Build the embeddings body, asking for float vectors rather than base64 text."""
        return {"model": model, "input": inputs, "encoding_format": "float"}
