"""Tools used by samples/hello.yaml."""

from dagwright.activities.tools import tool


@tool(version="1")
def greet(name: str, excited: bool = False) -> str:
    """Build a greeting for `name`."""
    return f"Hello, {name}{'!' if excited else '.'}"


@tool(version="1")
def count_letters(text: str) -> dict:
    """Count the letters and words of a text."""
    return {"letters": sum(character.isalpha() for character in text), "words": len(text.split())}
