"""Deterministic embedding vectors for the LLM stand-in.

Each text becomes a unit vector by feature hashing: every lower-cased word and every character
trigram adds +1 or -1 to one coordinate picked by a BLAKE2b hash. The same text always gives
the same vector on any machine, because BLAKE2b is stable where Python's own `hash` is salted
per process. Texts that share words get a higher cosine similarity than unrelated texts, so
similarity-based steps in a workflow behave sensibly.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct

_WORD = re.compile(r"\w+")


def _features(text: str) -> list[str]:
    lowered = text.lower()
    words = [f"w:{word}" for word in _WORD.findall(lowered)]
    # Padding gives even the empty text two trigrams, so no vector is all zeros.
    padded = f"  {lowered}  "
    trigrams = [f"t:{padded[i : i + 3]}" for i in range(len(padded) - 2)]
    return words + trigrams


def embed(text: str, dimension: int) -> list[float]:
    """Return the unit-length vector of `dimension` floats for `text`."""
    vector = [0.0] * dimension
    for feature in _features(text):
        digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
        position = int.from_bytes(digest[:4], "little") % dimension
        # Words weigh more than trigrams, so shared words dominate the similarity.
        weight = 2.0 if feature.startswith("w:") else 1.0
        vector[position] += weight if digest[4] & 1 else -weight

    norm = math.sqrt(sum(value * value for value in vector)) or 1.0
    return [round(value / norm, 6) for value in vector]


def encode_base64(vector: list[float]) -> str:
    """Return `vector` as little-endian float32 bytes in base64 (`encoding_format: base64`)."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
