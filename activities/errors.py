"""Failure classification for dagwright activities.

Every activity failure that dagwright raises on purpose is a Temporal ``ApplicationError`` with a
stable ``type`` string. Users can list these strings in a node's ``retry.non_retryable`` to stop
retries that would otherwise happen. Errors marked permanent below are never retried, regardless
of the retry policy, because another attempt with the same input cannot succeed.

HTTP nodes (``dagwright.http``):

- ``HttpClientError`` (permanent): a 4xx status other than 408 and 429.
- ``HttpStatusError`` (permanent): any other status outside ``expect_status`` that no other type
  covers (1xx, 3xx, a 2xx that is not listed, too many redirects).
- ``HttpServerError`` (retryable): a 5xx status. A ``Retry-After`` header sets the next delay.
- ``HttpRateLimited`` (retryable): status 429. A ``Retry-After`` header sets the next delay.
- ``HttpTimeout`` (retryable): the request timed out on the client side, or the server answered
  408 Request Timeout.
- ``HttpConnectionError`` (retryable): the connection was refused, reset or closed before a
  complete response arrived, or the host name did not resolve.
- ``HttpRequestInvalid`` (permanent): the request cannot be sent as written (invalid URL, method,
  header or query value, or more than one of ``json``/``body``/``form``).
- ``HttpResponseInvalid`` (permanent): the body is not valid JSON although JSON was expected, or
  its content encoding cannot be decoded.
- ``HttpResponseTooLarge`` (permanent): the body is larger than ``max_response_bytes``.

Python tool nodes (``dagwright.python``):

- ``ToolNotFound`` (permanent): no tool with that name is registered on the worker.
- ``ToolArgumentsInvalid`` (permanent): the arguments do not match the tool's signature.
- ``ToolError`` (retryable): the tool raised an exception. Tools can raise the helpers of this
  module themselves to choose another type or to make a failure permanent.
- ``ToolResultInvalid`` (permanent): the tool returned a value that is not JSON-serializable.

Secrets (any activity):

- ``SecretNotFound`` (permanent): a referenced secret is not configured on the worker.
- ``SecretsFileInvalid`` (permanent): the secrets file cannot be read or is not a JSON object of
  strings.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.exceptions import ApplicationError

HTTP_CLIENT_ERROR = "HttpClientError"
HTTP_STATUS_ERROR = "HttpStatusError"
HTTP_SERVER_ERROR = "HttpServerError"
HTTP_RATE_LIMITED = "HttpRateLimited"
HTTP_TIMEOUT = "HttpTimeout"
HTTP_CONNECTION_ERROR = "HttpConnectionError"
HTTP_REQUEST_INVALID = "HttpRequestInvalid"
HTTP_RESPONSE_INVALID = "HttpResponseInvalid"
HTTP_RESPONSE_TOO_LARGE = "HttpResponseTooLarge"

TOOL_NOT_FOUND = "ToolNotFound"
TOOL_ARGUMENTS_INVALID = "ToolArgumentsInvalid"
TOOL_ERROR = "ToolError"
TOOL_RESULT_INVALID = "ToolResultInvalid"

SECRET_NOT_FOUND = "SecretNotFound"
SECRETS_FILE_INVALID = "SecretsFileInvalid"


def permanent(message: str, *, type: str, details: Any = None) -> ApplicationError:
    """Build a non-retryable error: Temporal fails the activity without another attempt.

    ``details`` must be JSON-serializable because Temporal records it in the workflow history.
    """
    extra = () if details is None else (details,)
    return ApplicationError(message, *extra, type=type, non_retryable=True)


def retryable(
    message: str, *, type: str, retry_after: timedelta | None = None
) -> ApplicationError:
    """Build a retryable error; ``retry_after`` replaces the policy's backoff for one retry."""
    return ApplicationError(message, type=type, next_retry_delay=retry_after)
