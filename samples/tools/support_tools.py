"""Tools used by samples/support.yaml."""

from __future__ import annotations

from typing import Any, Literal

from dagwright.activities.tools import tool

CustomerTier = Literal["free", "pro", "enterprise"]

# Closing line of a reply, by support plan: the follow-up that the customer can expect.
FOLLOW_UP = {
    "free": "If this does not solve the problem, reply to this message or ask in the community forum.",
    "pro": "If this does not solve the problem, reply to this message and the support team will follow up"
    " within one business day.",
    "enterprise": "If this does not solve the problem, reply to this message and your support engineer"
    " will follow up.",
}


@tool(version="1")
def format_reply(
    answer: str,
    customer_tier: CustomerTier,
    cited_doc_ids: list[int],
    docs: list[dict[str, Any]],
) -> dict[str, Any]:
    """Build the helpdesk reply: the answer, links to the cited articles, and a follow-up line.

    Only articles that the retrieval step returned are linked, because a model may cite an id
    that it made up. `docs` are rows of the sql node, each with an `id` and usually a `title`
    and a `path`.
    """
    retrieved = {doc["id"]: doc for doc in docs if isinstance(doc, dict) and "id" in doc}
    cited = [retrieved[doc_id] for doc_id in dict.fromkeys(cited_doc_ids) if doc_id in retrieved]

    paragraphs = [answer.strip()]
    if cited:
        links = "\n".join(_link(doc) for doc in cited)
        paragraphs.append(f"Related help articles:\n{links}")
    paragraphs.append(FOLLOW_UP[customer_tier])

    return {
        "body": "\n\n".join(paragraphs),
        "cited_docs": [{"id": doc["id"], "title": doc.get("title")} for doc in cited],
        "ignored_doc_ids": [doc_id for doc_id in cited_doc_ids if doc_id not in retrieved],
    }


def _link(doc: dict[str, Any]) -> str:
    title = doc.get("title") or f"Article {doc['id']}"
    return f"- {title}: {doc['path']}" if doc.get("path") else f"- {title}"
