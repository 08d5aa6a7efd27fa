"""dagwright: declarative AI workflows executed durably on Temporal."""

from typing import Any

__version__ = "0.1.0"
__all__ = ["tool", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported lazily: the workflow sandbox imports this package and must not pull in
    # the activity side (tool registry, entry points) with it.
    if name == "tool":
        from dagwright.activities.tools import tool

        return tool
    raise AttributeError(f"module 'dagwright' has no attribute {name!r}")
