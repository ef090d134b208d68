"""Unigram and bigram counting in bounded memory: count in RAM, spill to disk, merge per partition.

The full English Wikipedia has billions of tokens and hundreds of millions of distinct bigrams,
far more than fit in a Python dict. So each worker counts one range of the dump like this:

1. count words and adjacent pairs of the current pages in two dicts (``Counter.update`` — C speed);
2. when the dicts hold more than ``spill_entries`` keys, *spill*: split them into ``partitions``
   buckets by ``crc32(word) % partitions`` (for a bigram, of its first word) and append each bucket,
   one marshal record, to the range's ``spill.bin``, noting where it went under the bucket's name
   (``u007.bin`` for words of partition 7, ``b007.bin`` for pairs); then start again with empty dicts;
3. at the end of the range, spill the rest, write that index (``spill.idx``) and publish the range's
   folder atomically (rename).

One file per range, not one per partition: creating a file costs ~0.6 ms on some file systems
(64 of them were a fifth of a range's counting time on this project's test box), and a full dump
would leave tens of thousands of them.

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
import io
import marshal
import multiprocessing
import os
import shutil
import zlib
from collections import Counter
from itertools import pairwise
from pathlib import Path
from typing import Iterable, Iterator

from clipcurate.core.errors import ClipcurateError

from clipcurate.queries import fastcount
from clipcurate.queries.dump import HeaderUnsupported, Range, body_chunks, iter_pages
from clipcurate.queries.wikitext import count_tokens, strip_markup

DEFAULT_PARTITIONS = 32
DEFAULT_SPILL_ENTRIES = 2_000_000
SPILL_FILE = "spill.bin"   # a range's spilled records, all partitions, one after the other
SPILL_INDEX = "spill.idx"  # marshal: {"u007.bin": [(offset, length), ...], "b007.bin": [...], ...}


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
        self._fh = None
        self._pos = 0
        self._index: dict[str, list[tuple[int, int]]] = {}

    def add(self, toks: list[str]) -> None:
        """Count one document's tokens (words and breaks, in order)."""
        self.uni.update(toks)
        self.bi.update(pairwise(toks))
        if len(self.uni) + len(self.bi) > self.spill_entries:
            self.spill()

    def add_page(self, wikitext: str) -> None:
        """Count one article's wikitext: strip markup, tokenize, count."""
        self.add(count_tokens(strip_markup(wikitext)))

    def _append(self, name: str, record: bytes) -> None:
        """Append one marshal record of partition file ``name`` (``u007.bin``) to the spill file."""
        if self._fh is None:
            self._fh = open(self.folder / SPILL_FILE, "wb", buffering=1 << 20)  # noqa: SIM115 - closed in close()
        self._fh.write(record)
        self._index.setdefault(name, []).append((self._pos, len(record)))
        self._pos += len(record)

    def spill(self) -> None:
        """Append the in-memory counts, split by partition, to the spill file; reset."""
        if not self.uni and not self.bi:
            return
        # Words only (breaks start with a non-alphanumeric character), and pairs of two words.
        words = {w: c for w, c in self.uni.items() if w[:1].isalnum()}
        pairs = {k: c for k, c in self.bi.items() if k[0] in words and k[1] in words}
        self.words += sum(words.values())
        self.bigrams += sum(pairs.values())
        self._write(words, pairs)
        self.uni = Counter()
        self.bi = Counter()
        self.spills += 1

    def _write(self, words: dict, pairs: dict) -> None:
        """Append words and word pairs, one record per partition and kind, to the spill file."""
        P = self.partitions
        # The partition of each word is computed once and reused for the pairs that start with it.
        part: dict[str, int] = {}
        ubuckets: list[dict] = [{} for _ in range(P)]
        for w, c in words.items():
            p = part[w] = zlib.crc32(w.encode("utf-8", "surrogatepass")) % P
            ubuckets[p][w] = c
        bbuckets: list[dict] = [{} for _ in range(P)]
        for k, c in pairs.items():
            bbuckets[part[k[0]]][k] = c
        for p in range(P):
            if ubuckets[p]:
                self._append(f"u{p:03d}.bin", marshal.dumps(ubuckets[p]))
            if bbuckets[p]:
                self._append(f"b{p:03d}.bin", marshal.dumps(bbuckets[p]))

    def close(self) -> None:
        """Spill the rest; close the spill file and write its index (the folder is then complete)."""
        self.spill()
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        (self.folder / SPILL_INDEX).write_bytes(marshal.dumps(self._index))


#: C counters of finished ranges, kept for the next range of this process (see FastCounts.close)
_idle_counters: list = []


def release_counters() -> None:
    """Free the C counters kept for reuse (their tables can be tens of MB)."""
    _idle_counters.clear()


class FastCounts(Counts):
    """:class:`Counts` with the per-page work in C (:mod:`queries.fastcount`): strip, tokenize and
    count happen in one call without the GIL, in hash tables of words and word-id pairs; breaks are
    never stored. Spilling writes the same partition records as the Python path (marshal records of
    the same dicts, made in C without a Python object per entry), so the merged counts are identical
    (tests/test_queries_fast.py)."""

    def __init__(self, folder: Path, partitions: int = DEFAULT_PARTITIONS,
                 spill_entries: int = DEFAULT_SPILL_ENTRIES):
        super().__init__(folder, partitions, spill_entries)
        self._c = _idle_counters.pop() if _idle_counters else fastcount.new_counts()
        self._c.clear()

    def add(self, toks: list[str]) -> None:
        raise TypeError("FastCounts counts pages: use add_page(wikitext)")

    def add_page(self, wikitext: str) -> None:
        if self._c.add(wikitext) > self.spill_entries:
            self.spill()

    def feed(self, xml: bytes) -> None:
        """Count the articles of the complete ``<page>``s in ``xml`` (dump bytes after the header;
        a page cut at the end waits for the next call). Raises ``fastcount.Unsupported`` for XML
        only expat should read."""
        # the C side stops after the page that crosses the spill threshold; spill, then go on
        while self._c.feed(xml, self.spill_entries) > self.spill_entries:
            self.spill()
            xml = b""

    def finish(self, root_end: bool) -> dict:
        """Page statistics, once nothing but whitespace (and ``</mediawiki>``) is left."""
        return self._c.finish(root_end)

    def close(self) -> None:
        super().close()
        # Hand the C counter on to the next range this process counts: its tables keep the size
        # the last one grew them to (see ``Counts.clear`` in _fastcount.c), ~5% of a range's time
        # on a large vocabulary. A counter left behind by an error is simply not reused.
        if self._c is not None:
            self._c.clear()
            _idle_counters.append(self._c)
            self._c = None

    def spill(self) -> None:
        if not self._c.distinct:
            return
        # the partition files' records, written in C (marshal format, no Python objects per entry)
        words, pairs, n_words, n_pairs = self._c.spill(self.partitions)
        for p in range(self.partitions):
            if words[p]:
                self._append(f"u{p:03d}.bin", words[p])
            if pairs[p]:
                self._append(f"b{p:03d}.bin", pairs[p])
        self.words += n_words
        self.bigrams += n_pairs
        self.spills += 1


def count_range(rng: Range, out_dir: str, partitions: int = DEFAULT_PARTITIONS,
                spill_entries: int = DEFAULT_SPILL_ENTRIES, threaded: bool = True,
                fast: bool | None = None) -> dict:
    """Count one dump range into ``out_dir`` (published atomically); return its statistics.

    Only articles count: namespace 0, not redirects. A worker process runs this for each range.
    ``threaded``: decompress in a helper thread (see :func:`queries.dump.iter_pages`); it pays only
    when a spare core can run it, else its handovers cost ~10% more CPU for nothing.
    ``fast`` (default: when the C extension is built): read pages and count them in C
    (:mod:`queries.fastcount`); a range whose XML the C scanner does not take (see
    ``_fastcount.c``) is counted again from scratch with expat (and the C counter), and
    ``fallback`` in the statistics says why. ``fast=False``: the pure-Python reference (expat,
    :mod:`queries.wikitext`, ``Counter``). All paths give the same counts.
    """
    out = Path(out_dir)
    tmp = out.with_name(".tmp-" + out.name)
    if fast is None or not fastcount.BUILT:
        fast = fast is None and fastcount.AVAILABLE
    # The counters hold millions of tuples, which the cyclic garbage collector would walk again
    # and again as they grow (~10% of the counting time); nothing here makes reference cycles.
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        stats = None
        why = None
        if fast:
            shutil.rmtree(tmp, ignore_errors=True)
            try:
                stats = _count_fast(rng, tmp, partitions, spill_entries, threaded)
            except (fastcount.Unsupported, HeaderUnsupported) as exc:
                why = str(exc)
        if stats is None:
            shutil.rmtree(tmp, ignore_errors=True)
            counts = FastCounts if fast else Counts
            stats = _count_python(rng, counts(tmp, partitions, spill_entries), threaded)
            if why:
                stats["fallback"] = why
    finally:
        if gc_was_on:
            gc.enable()
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return stats


def _count_python(rng: Range, counts: Counts, threaded: bool) -> dict:
    """Pages from expat, each counted by ``counts`` (:class:`Counts`: the reference, or :class:`FastCounts`)."""
    stats = {"pages": 0, "articles": 0, "redirects": 0, "other_namespaces": 0, "bytes": 0}
    for page in iter_pages(rng, stats, threaded=threaded):
        stats["pages"] += 1
        if page.ns != 0:
            stats["other_namespaces"] += 1
        elif page.redirect:
            stats["redirects"] += 1
        else:
            stats["articles"] += 1
            counts.add_page(page.text)
    counts.close()
    stats.pop("schema", None)
    stats.update(words=counts.words, bigrams=counts.bigrams, spills=counts.spills,
                 reader="expat", counter="c" if isinstance(counts, FastCounts) else "python")
    return stats


def _count_fast(rng: Range, tmp: Path, partitions: int, spill_entries: int, threaded: bool) -> dict:
    """Pages read and counted in C, straight from the decompressed bytes (header checked by expat)."""
    counts = FastCounts(tmp, partitions, spill_entries)
    stats = {"bytes": 0}
    for chunk in body_chunks(rng, stats, threaded=threaded):
        counts.feed(chunk)
    stats.update(counts.finish(root_end=not rng.multistream))
    counts.close()
    stats.update(words=counts.words, bigrams=counts.bigrams, spills=counts.spills, reader="c", counter="c")
    return stats


def count_range_task(task: tuple) -> tuple[str, dict]:
    """``multiprocessing`` entry point: ``(shard, Range, out_dir, partitions, spill_entries[, threaded])``."""
    shard, rng, out_dir, partitions, spill_entries, *threaded = task
    return shard, count_range(rng, out_dir, partitions, spill_entries, *threaded)


# -- merging -----------------------------------------------------------------------------------------

def partition_bytes(folder: Path, name: str) -> bytes:
    """The marshal records of partition file ``name`` (``u007.bin``) of one range folder, in the
    order they were spilled. (Folders of an older layout, one file per partition, are read too.)"""
    folder = Path(folder)
    try:
        index = marshal.loads((folder / SPILL_INDEX).read_bytes())
    except FileNotFoundError:
        f = folder / name
        return f.read_bytes() if f.is_file() else b""
    except (ValueError, EOFError, TypeError) as exc:
        raise _damaged(folder, f"{SPILL_INDEX}: {exc}") from None
    parts = index.get(name) if isinstance(index, dict) else None
    if not parts:
        return b""
    out = []
    try:
        with open(folder / SPILL_FILE, "rb") as fh:
            for off, n in parts:
                fh.seek(off)
                out.append(fh.read(n))
                if len(out[-1]) != n:
                    raise _damaged(folder, f"{SPILL_FILE} ends before byte {off + n}")
    except OSError as exc:
        raise _damaged(folder, f"{SPILL_FILE}: {exc.strerror or exc}") from None
    return b"".join(out)


def _damaged(folder: Path, what: str) -> ClipcurateError:
    return ClipcurateError(f"damaged counting output {folder} ({what}); rerun `clipcurate queries "
                           f"build` with --force to count again")


def _records(folder: Path, name: str) -> Iterator[dict]:
    data = io.BytesIO(partition_bytes(folder, name))
    while True:
        try:
            yield marshal.load(data)
        except EOFError:
            return


def merge_partition(dirs: Iterable[Path], name: str) -> dict:
    """Sum every record of one partition file (``u007.bin``) across all range folders."""
    total: dict = {}
    get = total.get
    for d in dirs:
        for rec in _records(d, name):
            if not total:
                total = rec
                get = total.get
                continue
            for k, c in rec.items():
                total[k] = get(k, 0) + c
    return total


def merge_unigrams(dirs: list[Path], partitions: int, keep_min: int, workers: int = 1) -> tuple[dict, int]:
    """All word counts ≥ ``keep_min`` (merged partition by partition) and the total word count.

    ``workers`` > 1: the partitions are merged in that many processes (see :func:`_partition_map`).
    """
    kept: dict[str, int] = {}
    total = 0
    tasks = [(dirs, p, keep_min) for p in range(partitions)]
    for part_total, part_kept in _partition_map(_merge_unigram_partition, tasks, workers):
        total += part_total
        kept.update(part_kept)
    return kept, total


def merge_partition_min(dirs: Iterable[Path], name: str, min_count: int) -> tuple[dict, int]:
    """One partition's entries seen at least ``min_count`` times, and the sum of all its counts.

    Files written by the C counter are merged in C (``fastcount.merge_records``): only the kept
    entries become Python objects. Anything else (the pure-Python path's records) is merged
    by :func:`merge_partition`; both give the same result (tests/test_queries_fast.py).
    """
    dirs = list(dirs)
    if fastcount.AVAILABLE:
        try:
            return fastcount.merge_records(b"".join(partition_bytes(d, name) for d in dirs), min_count)
        except fastcount.Unsupported:
            pass
    part = merge_partition(dirs, name)
    return {k: c for k, c in part.items() if c >= min_count}, sum(part.values())


def _merge_unigram_partition(task: tuple) -> tuple[int, dict]:
    dirs, p, keep_min = task
    kept, total = merge_partition_min(dirs, f"u{p:03d}.bin", keep_min)
    return total, kept


def bigram_candidates(dirs: list[Path], partitions: int, min_count: int, score, min_score: float,
                      workers: int = 1) -> tuple[list[tuple[str, str, int, float]], int]:
    """Every bigram seen at least ``min_count`` times whose ``score(a, b, count)`` is at least
    ``min_score``, as ``(a, b, count, score)``, and how many bigrams passed ``min_count``.

    The merge, the pruning and the scoring of a partition happen where it is merged: in this
    process, or with ``workers`` > 1 in forked processes that inherit ``score`` (and whatever it
    reads, e.g. the unigram table) without copying it; only the few candidates come back.
    """
    global _SCORE
    _SCORE = score
    try:
        found: list = []
        passed = 0
        tasks = [(dirs, p, min_count, min_score) for p in range(partitions)]
        for part_found, part_passed in _partition_map(_score_bigram_partition, tasks, workers):
            found += part_found
            passed += part_passed
        return found, passed
    finally:
        _SCORE = None


_SCORE = None  # the scoring function of the running bigram_candidates (inherited by forked workers)


def _score_bigram_partition(task: tuple) -> tuple[list, int]:
    dirs, p, min_count, min_score = task
    kept, _ = merge_partition_min(dirs, f"b{p:03d}.bin", min_count)
    found = []
    for (a, b), c in kept.items():
        sc = _SCORE(a, b, c)
        if sc >= min_score:
            found.append((a, b, c, sc))
    return found, len(kept)


def _partition_map(fn, tasks: list, workers: int):
    """``map(fn, tasks)``, in order; with ``workers`` > 1 over a pool of forked processes (fork,
    not spawn: the children share the parent's tables instead of receiving copies; the counting
    threads have all ended by now). Falls back to one process where fork does not exist."""
    if workers <= 1 or len(tasks) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        yield from map(fn, tasks)
        return
    with multiprocessing.get_context("fork").Pool(min(workers, len(tasks))) as pool:
        yield from pool.imap(fn, tasks)


def merge_bigrams(dirs: list[Path], partitions: int, min_count: int) -> Iterator[tuple[tuple[str, str], int]]:
    """Yield every bigram seen at least ``min_count`` times, one partition in memory at a time."""
    for p in range(partitions):
        part = merge_partition(dirs, f"b{p:03d}.bin")
        for k, c in part.items():
            if c >= min_count:
                yield k, c
        del part
