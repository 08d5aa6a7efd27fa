"""Model catalogue of the LLM stand-in: which model names it accepts and their context windows.

Names and context windows follow Mistral's public model cards as of 2026-08-13. Models that
Mistral has retired are left out on purpose, so a workflow that still names one gets the same
"Invalid model" error that the real API returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

ModelKind = Literal["chat", "embedding"]

# Mistral's `/v1/models` reports 32768 when a model card gives no context length, so models
# that users add by name get the same default.
DEFAULT_CONTEXT_LENGTH = 32_768


@dataclass(frozen=True)
class ModelCard:
    """One model the stand-in serves: its id, aliases, kind and context window in tokens."""

    id: str
    kind: ModelKind
    context_length: int
    aliases: tuple[str, ...] = ()
    embedding_dimension: int = 0


_K256 = 262_144
_K128 = 131_072
_K8 = 8_192

MISTRAL_MODELS: tuple[ModelCard, ...] = (
    ModelCard("mistral-large-2512", "chat", _K256, ("mistral-large-latest",)),
    ModelCard("mistral-medium-3-5", "chat", _K256, ("mistral-medium-latest", "mistral-medium-3")),
    ModelCard("mistral-small-2603", "chat", _K256, ("mistral-small-latest",)),
    ModelCard("codestral-2508", "chat", _K128, ("codestral-latest",)),
    ModelCard("ministral-14b-2512", "chat", _K256, ("ministral-14b-latest",)),
    ModelCard("ministral-8b-2512", "chat", _K256, ("ministral-8b-latest",)),
    ModelCard("ministral-3b-2512", "chat", _K256, ("ministral-3b-latest",)),
    ModelCard("mistral-embed-2312", "embedding", _K8, ("mistral-embed",), 1024),
    ModelCard("codestral-embed-2505", "embedding", _K8, ("codestral-embed",), 1536),
)

# A fixed creation time for every model card, so `/v1/models` output never changes between runs.
MODEL_CREATED = 1_700_000_000


class ModelCatalogue:
    """The models one stand-in accepts, looked up by id or alias."""

    def __init__(self, extra_models: list[str] | None = None) -> None:
        self._cards: dict[str, ModelCard] = {}
        for card in MISTRAL_MODELS:
            self._add(card)
        for name in extra_models or []:
            self.add_chat_model(name)

    def _add(self, card: ModelCard) -> None:
        self._cards[card.id] = card
        for alias in card.aliases:
            self._cards[alias] = card

    def add_chat_model(self, name: str, context_length: int = DEFAULT_CONTEXT_LENGTH) -> None:
        """Accept `name` as a chat model (for fine-tuned or self-hosted model names)."""
        self._add(ModelCard(name, "chat", context_length))

    def get(self, name: str) -> ModelCard | None:
        """Return the card for a model id or alias, or None when the name is unknown."""
        return self._cards.get(name)

    def cards(self) -> list[ModelCard]:
        """Return each model once, in catalogue order."""
        unique: dict[str, ModelCard] = {}
        for card in self._cards.values():
            unique.setdefault(card.id, card)
        return list(unique.values())


def model_entry(card: ModelCard) -> dict[str, Any]:
    """Build one entry of the `GET /v1/models` list in Mistral's shape."""
    is_chat = card.kind == "chat"
    return {
        "id": card.id,
        "object": "model",
        "created": MODEL_CREATED,
        "owned_by": "mistralai",
        "capabilities": {
            "completion_chat": is_chat,
            "function_calling": is_chat,
            "completion_fim": card.id.startswith("codestral") and is_chat,
            "fine_tuning": False,
            "vision": False,
            "ocr": False,
            "classification": False,
            "moderation": False,
            "audio": False,
            "audio_transcription": False,
        },
        "name": card.id,
        "description": f"dagwright stand-in for {card.id}",
        "max_context_length": card.context_length,
        "aliases": list(card.aliases),
        "deprecation": None,
        "deprecation_replacement_model": None,
        # NOTE: 0.3 is a placeholder; real per-model defaults differ and are not tracked here.
        "default_model_temperature": 0.3 if is_chat else None,
        "type": "base",
    }
