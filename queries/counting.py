"""Unigram and bigram counting in bounded memory: count in RAM, spill to disk, merge per partition.

The full English Wikipedia has billions of tokens and hundreds of millions of distinct bigrams,
far more than fit in a Python dict. So each worker counts one range of the dump like this:

1. count words and adjacent pairs of the current pages in two dicts (``Counter.update`` — C speed);
2. when the dicts hold more than ``spill_entries`` keys, *spill*: split them into ``partitions``
   buckets by ``crc32(word) % partitions`` (for a bigram, of its first word) and append each bucket
   to its own file ``u{p}.bin`` / ``b{p}.bin`` (marshal records), then start again with empty dicts;
3. at the end of the range, spill the rest and publish the range's folder atomically (rename).

Breaks (punctuation, line breaks — see :mod:`queries.wikitext`) are counted in the hot loop
because that keeps it in C; the spill drops them and every pair that touches one.

Merging (:func:`merge_unigrams`, :func:`merge_bigrams`) reads one partition at a time across all
ranges and sums it, so peak memory is one partition's distinct keys — 1/``partitions`` of the total
— not the whole vocabulary. Bigrams seen fewer than ``bigram_min_count`` times are pruned there,
before any PMI is computed, so only the unigram counts of words seen at least that often are
needed for the PMI lookup.
"""

from __future__ import annotations

import gc
import marshal
import os
import shutil
import zlib
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Iterable, Iterator

from .dump import Range, iter_pages
from .wikitext import count_tokens, strip_markup

DEFAULT_PARTITIONS = 32
DEFAULT_SPILL_ENTRIES = 2_000_000


def partition_of(word: str, partitions: int) -> int:
    """Stable across processes and machines (Python's ``hash`` is salted per process)."""
    return zlib.crc32(word.encode("utf-8", "surrogatepass")) % partitions


class Counts:
    """In-memory unigram/bigram counts of a stream of token lists, spilled to ``folder``."""

    def __init__(self, folder: Path, partitions: int = DEFAULT_PARTITIONS,
                 spill_entries: int = DEFAULT_SPILL_ENTRIES):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.partitions = partitions
        self.spill_entries = spill_entries
        self.uni: Counter = Counter()
        self.bi: Counter = Counter()
        self.spills = 0
        self.words = 0  # word tokens (breaks excluded), the N of the PMI
        self.bigrams = 0  # word pairs without a break between them
        self._files: dict[str, object] = {}

    def add(self, toks: list[str]) -> None:
        """Count one document's tokens (words and breaks, in order)."""
        self.uni.update(toks)
        self.bi.update(pairwise(toks))
        if len(self.uni) + len(self.bi) > self.spill_entries:
            self.spill()

    def _file(self, name: str):
        fh = self._files.get(name)
        if fh is None:
            fh = self._files[name] = open(self.folder / name, "ab")
        return fh

    def spill(self) -> None:
        """Append the in-memory counts, split by partition, to the partition files; reset."""
        if not self.uni and not self.bi:
            return
        P = self.partitions
        # Words only (breaks start with a non-alphanumeric character); the partition of each word
        # is computed once and reused for the bigrams that start with it.
        part: dict[str, int] = {}
        ubuckets: list[dict] = [{} for _ in range(P)]
        for w, c in self.uni.items():
            if w[:1].isalnum():
                p = part[w] = zlib.crc32(w.encode("utf-8", "surrogatepass")) % P
                ubuckets[p][w] = c
                self.words += c
        bbuckets: list[dict] = [{} for _ in range(P)]
        for (a, b), c in self.bi.items():
            p = part.get(a)
            if p is not None and b in part:
                bbuckets[p][(a, b)] = c
                self.bigrams += c
        for p in range(P):
            if ubuckets[p]:
                marshal.dump(ubuckets[p], self._file(f"u{p:03d}.bin"))
            if bbuckets[p]:
                marshal.dump(bbuckets[p], self._file(f"b{p:03d}.bin"))
        self.uni = Counter()
        self.bi = Counter()
        self.spills += 1

    def close(self) -> None:
        self.spill()
        for fh in self._files.values():
            fh.close()
        self._files.clear()


def count_range(rng: Range, out_dir: str, partitions: int = DEFAULT_PARTITIONS,
                spill_entries: int = DEFAULT_SPILL_ENTRIES, threaded: bool = True) -> dict:
    """Count one dump range into ``out_dir`` (published atomically); return its statistics.

    Only articles count: namespace 0, not redirects. A worker process runs this for each range.
    ``threaded``: decompress in a helper thread (see :func:`queries.dump.iter_pages`); it pays only
    when a spare core can run it, else its handovers cost ~10% more CPU for nothing.
    """
    out = Path(out_dir)
    tmp = out.with_name(".tmp-" + out.name)
    shutil.rmtree(tmp, ignore_errors=True)
    counts = Counts(tmp, partitions, spill_entries)
    stats = {"pages": 0, "articles": 0, "redirects": 0, "other_namespaces": 0, "bytes": 0}
    # The counters hold millions of tuples, which the cyclic garbage collector would walk again
    # and again as they grow (~10% of the counting time); nothing here makes reference cycles.
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        for page in iter_pages(rng, stats, threaded=threaded):
            stats["pages"] += 1
            if page.ns != 0:
                stats["other_namespaces"] += 1
            elif page.redirect:
                stats["redirects"] += 1
            else:
                stats["articles"] += 1
                counts.add(count_tokens(strip_markup(page.text)))
        counts.close()
    finally:
        if gc_was_on:
            gc.enable()
    stats.pop("schema", None)
    stats.update(words=counts.words, bigrams=counts.bigrams, spills=counts.spills)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return stats


def count_range_task(task: tuple) -> tuple[str, dict]:
    """``multiprocessing`` entry point: ``(shard, Range, out_dir, partitions, spill_entries[, threaded])``."""
    shard, rng, out_dir, partitions, spill_entries, *threaded = task
    return shard, count_range(rng, out_dir, partitions, spill_entries, *threaded)


# -- merging -----------------------------------------------------------------------------------------

def _records(path: Path) -> Iterator[dict]:
    if not path.is_file():
        return
    with open(path, "rb") as fh:
        while True:
            try:
                yield marshal.load(fh)
            except EOFError:
                return


def merge_partition(dirs: Iterable[Path], name: str) -> dict:
    """Sum every record of one partition file (``u007.bin``) across all range folders."""
    total: dict = {}
    get = total.get
    for d in dirs:
        for rec in _records(Path(d) / name):
            if not total:
                total = rec
                get = total.get
                continue
            for k, c in rec.items():
                total[k] = get(k, 0) + c
    return total


def merge_unigrams(dirs: list[Path], partitions: int, keep_min: int) -> tuple[dict, int]:
    """All word counts ≥ ``keep_min`` (merged partition by partition) and the total word count."""
    kept: dict[str, int] = {}
    total = 0
    for p in range(partitions):
        part = merge_partition(dirs, f"u{p:03d}.bin")
        total += sum(part.values())
        kept.update((w, c) for w, c in part.items() if c >= keep_min)
    return kept, total


def merge_bigrams(dirs: list[Path], partitions: int, min_count: int) -> Iterator[tuple[tuple[str, str], int]]:
    """Yield every bigram seen at least ``min_count`` times, one partition in memory at a time."""
    for p in range(partitions):
        part = merge_partition(dirs, f"b{p:03d}.bin")
        for k, c in part.items():
            if c >= min_count:
                yield k, c
        del part
