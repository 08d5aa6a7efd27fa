"""Failure types of the ``dagwright.llm`` and ``dagwright.embed`` activities.

Each failure is a Temporal ``ApplicationError`` with one of the stable ``type`` strings below.
Permanent failures are never retried: the workflow moves on to the node's next ``fallback``
variant, if any, or fails the node.

- ``LlmAuthError`` (permanent): the provider rejected the API key (401), the key lacks access
  to the model (403), or no key is configured for a provider that needs one.
- ``LlmInvalidRequest`` (permanent): the provider rejected the request as invalid (400, 422 and
  other 4xx statuses not listed here), or the node's input cannot be sent as written.
- ``LlmContextLength`` (permanent): the prompt plus ``max_tokens`` does not fit in the model's
  context window. A fallback to a model with a larger window may succeed.
- ``LlmModelNotFound`` (permanent): the provider does not know the model.
- ``LlmProviderNotConfigured`` (permanent): the node names a provider the worker does not have.
- ``LlmOutputInvalid`` (permanent): with ``output_schema``, no answer was valid JSON matching the
  schema after ``repair_attempts`` repair turns, or the answer was cut off by ``max_tokens``.
- ``LlmRateLimited`` (retryable): status 429. The next attempt waits for ``Retry-After`` when
  the server sends it, otherwise for an exponential backoff with jitter.
- ``LlmCapacity`` (retryable): the provider is overloaded (503, or a body that reports exceeded
  capacity). Retried like ``LlmRateLimited``.
- ``LlmServerError`` (retryable): another 5xx status, or the model stopped with
  ``finish_reason: error``. A ``Retry-After`` header sets the next delay.
- ``LlmTimeout`` (retryable): no complete response within the timeout, or status 408.
- ``LlmConnectionError`` (retryable): the connection was refused, reset or closed early.
- ``LlmResponseInvalid`` (retryable): a success status with a body that is not a chat or
  embeddings response (not JSON, or no ``choices``/``data``). Proxies in front of a provider
  produce these transiently.
"""

from __future__ import annotations

LLM_AUTH_ERROR = "LlmAuthError"
LLM_INVALID_REQUEST = "LlmInvalidRequest"
LLM_CONTEXT_LENGTH = "LlmContextLength"
LLM_MODEL_NOT_FOUND = "LlmModelNotFound"
LLM_PROVIDER_NOT_CONFIGURED = "LlmProviderNotConfigured"
LLM_OUTPUT_INVALID = "LlmOutputInvalid"
LLM_RATE_LIMITED = "LlmRateLimited"
LLM_CAPACITY = "LlmCapacity"
LLM_SERVER_ERROR = "LlmServerError"
LLM_TIMEOUT = "LlmTimeout"
LLM_CONNECTION_ERROR = "LlmConnectionError"
LLM_RESPONSE_INVALID = "LlmResponseInvalid"
