"""Caption / label text overlap: character shingles, MinHash LSH, exact Jaccard (datasketch).

Each text becomes the set of its character 4-grams after normalisation (NFKC, lower case,
punctuation → space); MinHash sketches those sets and an LSH index over the benchmark texts
returns, for each pool caption, the texts whose estimated Jaccard similarity may pass the
threshold; the exact Jaccard of the shingle sets is then the signal (``text_sim``).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable, Mapping

from clipcurate.core.console import log
from clipcurate.core.errors import ClipcurateError

SHINGLE = 4
NUM_PERM = 128
_PUNCT = re.compile(r"[\W_]+", re.UNICODE)


def normalize_text(text: str) -> str:
    """NFKC, lower case, every run of punctuation/space → one space."""
    return _PUNCT.sub(" ", unicodedata.normalize("NFKC", text or "").lower()).strip()


def shingles(text: str, k: int = SHINGLE) -> set[str]:
    """Character k-grams of the normalised text (the whole text when shorter than k; empty text → ∅).
    Characters, not words: captions are short, and a typo or plural changes one word but only a few
    of its k-grams."""
    t = normalize_text(text)
    if not t:
        return set()
    if len(t) <= k:
        return {t}
    return {t[i: i + k] for i in range(len(t) - k + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a and b else 0.0


def text_similarity(a: str, b: str) -> float:
    """Exact Jaccard similarity of the two texts' shingle sets (the ``text_sim`` signal)."""
    return jaccard(shingles(a), shingles(b))


def _minhash(sh: set[str], num_perm: int = NUM_PERM):
    from datasketch import MinHash  # datasketch: 0.6 s to import; only caption benchmarks pay it

    m = MinHash(num_perm=num_perm, seed=1)
    m.update_batch([s.encode("utf-8") for s in sorted(sh)])
    return m


class TextIndex:
    """MinHash LSH over a set of texts (e.g. a benchmark's captions): ``query(text)`` returns
    ``[(key, jaccard)]`` for the indexed texts whose exact shingle Jaccard is ≥ ``threshold``.

    The LSH bands are tuned by datasketch for ``threshold``: a pair at that Jaccard is found with
    high probability, pairs far below it almost never become candidates, and the candidates are
    verified exactly, so what comes back never falls below the threshold."""

    def __init__(self, texts: Mapping | Iterable[tuple], threshold: float = 0.7, num_perm: int = NUM_PERM):
        from datasketch import MinHashLSH  # datasketch: 0.6 s to import (see _minhash)

        if not 0 < threshold <= 1:
            raise ClipcurateError(f"text threshold {threshold} must be in (0, 1]")
        self.threshold, self.num_perm = threshold, num_perm
        # The index keeps a slightly lower threshold than asked, so that borderline pairs whose
        # MinHash estimate comes out low are still candidates; the exact check decides.
        self.lsh = MinHashLSH(threshold=max(0.05, threshold - 0.1), num_perm=num_perm)
        self.shingles: dict = {}
        items = texts.items() if isinstance(texts, Mapping) else texts
        with self.lsh.insertion_session() as session:
            for key, text in items:
                sh = shingles(text)
                if not sh or key in self.shingles:
                    continue
                self.shingles[key] = sh
                session.insert(key, _minhash(sh, num_perm))

    def __len__(self) -> int:
        return len(self.shingles)

    def query(self, text: str) -> list[tuple[object, float]]:
        sh = shingles(text)
        if not sh:
            return []
        out = []
        for key in self.lsh.query(_minhash(sh, self.num_perm)):
            j = jaccard(sh, self.shingles[key])
            if j >= self.threshold:
                out.append((key, j))
        return sorted(out, key=lambda kv: -kv[1])


def text_matches(pool: Mapping[str, str] | Iterable[tuple[str, str]], bench: Mapping | Iterable[tuple],
                 threshold: float = 0.7) -> list[tuple[str, object, float]]:
    """(pool_uid, bench_key, jaccard) for every pool caption near-identical to a benchmark text.
    The benchmark side is indexed (it is the smaller); the pool streams through it."""
    index = TextIndex(bench, threshold)
    log(f"text: {len(index)} benchmark texts indexed (MinHash LSH, Jaccard ≥ {threshold})")
    items = pool.items() if isinstance(pool, Mapping) else pool
    return [(uid, key, j) for uid, text in items for key, j in index.query(text)]
