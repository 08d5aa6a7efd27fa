"""pytest fixtures that dagwright ships for testing workflows (registered as a pytest11 plugin).

The plugin is active in every pytest session of an environment where dagwright is installed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from dagwright.testing.llm_server import LlmStandIn


@pytest.fixture
def llm_stand_in() -> Iterator[LlmStandIn]:
    """A running LLM stand-in with no rules, on a free port of 127.0.0.1, for one test.

    Each test gets its own server, so the rules and recorded requests of one test cannot
    affect another.
    The fixture is synchronous but the server runs in its own thread, so async tests can
    call it with any HTTP client from inside their event loop.
    """
    with LlmStandIn() as stand_in:
        yield stand_in
