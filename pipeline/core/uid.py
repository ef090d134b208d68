"""Stable 128-bit sample ids.

A uid is the first 16 bytes of BLAKE2b over the sample's identifying fields joined by the unit
separator (0x1f), as 32 lowercase hex characters. The same fields give the same uid on every
machine and in every run, so reruns, shards and executors agree.
"""

from __future__ import annotations

import hashlib

SEP = "\x1f"


def make_uid(*parts: object) -> str:
    """``make_uid("http://x/a.jpg", "a cat")`` → 32 hex chars, stable forever."""
    h = hashlib.blake2b(digest_size=16)
    h.update(SEP.join("" if p is None else str(p) for p in parts).encode("utf-8"))
    return h.hexdigest()


def pair_uid(url: str, caption: str) -> str:
    """The uid of a (url, caption) candidate pair: the same pair always gets the same uid."""
    return make_uid("pair", url, caption)


def is_uid(value: str) -> bool:
    return isinstance(value, str) and len(value) == 32 and all(c in "0123456789abcdef" for c in value)
