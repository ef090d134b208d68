"""MetaCLIP substring matching (Aho-Corasick) and balancing.

**Matching** — MetaCLIP's exact semantics (``substr_matching`` in facebookresearch/MetaCLIP):

1. the caption is padded with one space on each side;
2. each of ``, . ; : ? ! ` `` gets a space on each side; tab, newline and carriage return become
   spaces (:func:`spacing`);
3. entry ``e`` matches when ``" " + e + " "`` is a substring of that text — the entry itself is
   *not* re-spaced, case matters, overlapping and nested entries all count, each entry at most
   once per caption. The result is the sorted list of matching entry ids.

:func:`naive_match` is that definition written as a loop over all entries (the reference).
:class:`Matcher` puts every ``" " + e + " "`` into one Aho-Corasick automaton (pyahocorasick, or
ahocorasick_rs) and walks the spaced caption once, collecting every key that ends at each position
— overlapping keys included — so it returns exactly what the loop returns, in time proportional to
the caption instead of to the list. Two list positions holding the same string both match, as in
the loop.

**Balancing** — with ``count[e]`` the number of matched pairs containing entry ``e`` over the whole
input and ``t`` the per-entry target (CLIP: 20,000), entry ``e`` is kept with probability
``p[e] = min(1, t / count[e])``, and a pair is kept when *any* of its entries draws
``u < p[e]``. The draw is ``u(seed, uid, e)`` = the first 8 bytes of BLAKE2b over
``"{seed}\\x1f{uid}\\x1f{e}"`` read as an unsigned integer, divided by 2**64: it depends only on
the seed, the pair's uid and the entry id — not on row order, batching or sharding — so the same
seed always gives the same output.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Sequence

import ahocorasick

PUNCTS = (",", ".", ";", ":", "?", "!", "`")
SPACES = ("\t", "\n", "\r")

_WRAP = tuple((p, f" {p} ") for p in PUNCTS)


def spacing_reference(text: str) -> str:
    """MetaCLIP's ``spacing`` exactly as published (a chain of ``str.replace``)."""
    spaced = f" {text} "
    for p in PUNCTS:
        spaced = spaced.replace(p, f" {p} ")
    for c in SPACES:
        spaced = spaced.replace(c, " ")
    return spaced


def spacing(text: str) -> str:
    """Same result as :func:`spacing_reference`; a replace is skipped when its character is absent
    (a ``in`` scan is cheaper than a ``replace`` copy; ``str.translate`` measured 4x slower)."""
    for p, wrapped in _WRAP:
        if p in text:
            text = text.replace(p, wrapped)
    for c in SPACES:
        if c in text:
            text = text.replace(c, " ")
    return f" {text} "


def naive_match(caption: str, entries: Sequence[str]) -> list[int]:
    """The reference: loop over every entry (what MetaCLIP's unoptimised code does)."""
    text = spacing_reference(caption)
    return [i for i, e in enumerate(entries) if f" {e} " in text]


class Matcher:
    """All entries in one Aho-Corasick automaton; :meth:`match` gives :func:`naive_match`'s result."""

    def __init__(self, entries: Sequence[str], engine: str = "pyahocorasick"):
        self.engine = engine
        self.n = len(entries)
        first: dict[str, int] = {}
        self.dups: dict[int, list[int]] = {}  # first id of a repeated string -> all its ids
        for i, e in enumerate(entries):
            key = f" {e} "
            j = first.setdefault(key, i)
            if j != i:
                self.dups.setdefault(j, [j]).append(i)
        self._keys = list(first)
        self._ids = list(first.values())
        if engine == "pyahocorasick":
            a = ahocorasick.Automaton(ahocorasick.STORE_INTS)
            for key, i in first.items():
                a.add_word(key, i)
            a.make_automaton()
            self._iter = a.iter
        elif engine == "ahocorasick_rs":
            import ahocorasick_rs  # an optional extra (--engine ahocorasick_rs), not installed by default

            self._rs = ahocorasick_rs.AhoCorasick(self._keys, matchkind=ahocorasick_rs.MatchKind.Standard)
        else:
            raise ValueError(f"unknown engine {engine!r}")

    def match_spaced(self, text: str) -> list[int]:
        """Entry ids whose spaced form occurs in the already spaced ``text``."""
        if self.n == 0:
            return []
        if self.engine == "pyahocorasick":
            found = {i for _, i in self._iter(text)}
        else:
            ids = self._ids
            found = {ids[k] for k, _, _ in self._rs.find_matches_as_indexes(text, overlapping=True)}
        if self.dups and found:
            for j in [j for j in found if j in self.dups]:
                found.update(self.dups[j])
        return sorted(found)

    def match(self, caption: str) -> list[int]:
        return self.match_spaced(spacing(caption))

    def match_many(self, captions: Sequence[str]) -> list[list[int]]:
        """``[match(c) for c in captions]``. (A variant that walked the automaton once over a
        NUL-joined chunk of captions measured no faster: the automaton walk is the cost.)"""
        walk = self._iter if self.engine == "pyahocorasick" else None
        if walk is None or self.dups or self.n == 0:
            return [self.match_spaced(spacing(c)) for c in captions]
        return [sorted({i for _, i in walk(spacing(c))}) for c in captions]


# -- balancing -----------------------------------------------------------------------------------

_U64 = struct.Struct(">Q")
_SCALE = 1.0 / 2.0**64


def draw(seed: int, uid: str, entry_id: int) -> float:
    """The pair's uniform draw in [0, 1) for one entry (see the module docstring)."""
    h = hashlib.blake2b(f"{seed}\x1f{uid}\x1f{entry_id}".encode(), digest_size=8).digest()
    return _U64.unpack(h)[0] * _SCALE


def keep_probabilities(counts: Sequence[int], t: int) -> list[float]:
    """``p[e] = min(1, t / count[e])`` (1 for entries nobody matched)."""
    return [1.0 if c <= t else t / c for c in counts]


def keep_pair(uid: str, entry_ids: Sequence[int], p: Sequence[float], seed: int) -> bool:
    """True when any matched entry's draw falls below its keep probability."""
    for e in entry_ids:
        pe = p[e]
        if pe >= 1.0 or draw(seed, uid, e) < pe:
            return True
    return False
