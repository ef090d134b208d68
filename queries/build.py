"""Build CLIP's query list: count Wikipedia, then assemble wordnet → unigram → bigram → title.

:class:`QueryList` is the stage (clipcurate.core.stage): its shards are dump ranges, and the
runner writes ``queries/_plan.json``, one ``queries/<shard>.done`` per counted range and, last,
``queries/_SUCCESS``. The work is split in two:

1. **counting** (resumable, parallel): every dump is cut into ranges (:func:`queries.dump.plan_ranges`
   — groups of bz2 streams for a multistream dump, else the whole file); each range is a shard
   counted by :func:`queries.counting.count_range` into ``queries/counts/<shard>/`` and then marked
   done (``queries/<shard>.done``, written last). ``workers`` processes take ranges from a queue, so
   both the streams of one multistream dump and several dump files run in parallel. A rerun skips
   the shards already done; changing the inputs or any counting option starts over.
2. **assembly** (:func:`assemble`, in :meth:`QueryList.finish`): merge the counts partition by
   partition, apply the thresholds, read page views and WordNet, and write ``queries.parquet`` +
   ``stats.json`` — before ``_SUCCESS``, so a kill during assembly leaves no finished-looking folder.

PMI is NLTK's ``BigramAssocMeasures.pmi`` as ``BigramCollocationFinder`` feeds it:
``pmi = log2(n_ii * N) - log2(n_i * n_j)`` with ``n_ii`` the bigram's count, ``n_i``/``n_j`` its
words' counts and ``N`` the total number of word tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import multiprocessing
import os
import shutil
import sys
import time
from pathlib import Path

from clipcurate.core import manifest
from clipcurate.core.console import log
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.io import clean_temp, read_json, write_json
from clipcurate.core.stage import SUCCESS, Stage, done_info, is_done

from clipcurate.queries import counting
from clipcurate.queries import dump
from clipcurate.queries.manifests import QUERIES
from clipcurate.queries import pageviews
from clipcurate.queries import wordnet

SOURCES = ("wordnet", "unigram", "bigram", "title")

DEFAULTS = {
    "unigram_min_count": 100,
    "bigram_min_pmi": 30.0,
    "bigram_min_count": 2,
    "title_min_views": 70,
    "title_min_hour_views": 50,
    "size": 500_000,
    "workers": 1,
    "partitions": counting.DEFAULT_PARTITIONS,
    "spill_entries": counting.DEFAULT_SPILL_ENTRIES,
    "chunk_mb": 32.0,
    "wordnet": "auto",
}

DOCS = {
    "unigram_min_count": "keep words seen at least this many times (MetaCLIP: 100)",
    "bigram_min_pmi": "keep bigrams with PMI (log2, NLTK) at least this (MetaCLIP: 30)",
    "bigram_min_count": "prune bigrams seen fewer times before PMI (bounds memory)",
    "title_min_views": "keep titles with at least this many summed views (MetaCLIP: 70)",
    "title_min_hour_views": "count only page-view rows with at least this many views (MetaCLIP: 50)",
    "size": "cap on the list length (CLIP: 500,000)",
    "workers": "counting processes (over multistream ranges and dump files), then merging processes (over partitions)",
    "partitions": "hash partitions of the on-disk counts (memory of a merge = 1/partitions)",
    "spill_entries": "spill in-memory counts to disk past this many distinct keys per worker",
    "chunk_mb": "compressed MB of multistream bz2 per counting shard",
    "wordnet": "WordNet 3.0 dict dir, 'auto' (/usr/share/wordnet, nltk_data) or 'none'",
}


def pmi(n_ii: float, n_i: float, n_j: float, n_all: float) -> float:
    """NLTK's ``BigramAssocMeasures.pmi(n_ii, (n_ix, n_xi), n_xxx)``."""
    return math.log2(n_ii * n_all) - math.log2(n_i * n_j)


def _fingerprint(dumps: list[Path], opts: dict) -> dict:
    files = []
    for p in dumps:
        st = p.stat()
        idx = dump.index_path(p)
        files.append({"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                      "index": None if idx is None else str(idx)})
    return {"dumps": files, "partitions": opts["partitions"], "spill_entries": opts["spill_entries"],
            "chunk_mb": opts["chunk_mb"], "counter": 2}  # 2: one spill file per range


def _shard_name(i: int, rng: dump.Range) -> str:
    return f"d{i:03d}-{rng.start:013d}"


class QueryList(Stage):
    """Stage ``queries``: count every dump range (the shards), then assemble the list (:meth:`finish`).

    Use :func:`build_list`; it starts over when the inputs or a counting option changed (or on
    ``force``), forks the counting processes and runs the stage. :attr:`stats` holds the result.
    """

    name = "queries"
    description = "queries: counting"

    def __init__(self, folder: Path, dumps: list[Path], opts: dict, pageview_files: list[Path] = (),
                 wordnet_dir: Path | None = None, assemble_list: bool = True):
        super().__init__(folder)  # --force is start_over()'s business: the runner never forces
        self.dumps, self.opts = dumps, opts
        self.pageview_files, self.wordnet_dir = list(pageview_files), wordnet_dir
        self.assemble_list = assemble_list
        self.counts_dir = self.folder / "counts"
        self.t0 = time.time()
        self.ranges: dict[str, tuple[int, dump.Range]] = {}
        self.infos: dict[str, dict] = {}
        self.stats: dict = {}
        self.threaded = 2 <= (os.cpu_count() or 1)  # set again by counting_processes()
        self._pool = None
        self._pending: dict | None = None

    # -- before the runner ------------------------------------------------------------------------
    def start_over(self, force: bool = False) -> None:
        """Forget earlier counts when ``force`` or when the inputs or counting options changed
        (``counts/_inputs.json`` records them); then plan the ranges."""
        self.folder.mkdir(parents=True, exist_ok=True)
        clean_temp(self.folder)
        fp = _fingerprint(self.dumps, self.opts)
        fp_file = self.counts_dir / "_inputs.json"
        if force or not fp_file.is_file() or read_json(fp_file) != fp:
            if self.counts_dir.exists():
                log("queries: inputs or counting options changed, counting from scratch")
            shutil.rmtree(self.counts_dir, ignore_errors=True)
            for m in self.folder.glob("*.done"):  # invalidation only: the runner writes markers
                m.unlink()
            (self.folder / SUCCESS).unlink(missing_ok=True)
            self.counts_dir.mkdir(parents=True)
            write_json(fp_file, fp)
        for d in self.counts_dir.glob(".tmp-*"):
            shutil.rmtree(d, ignore_errors=True)
        chunk_bytes = max(1, int(self.opts["chunk_mb"] * 1e6))
        self.ranges = {}
        for i, p in enumerate(self.dumps):
            for rng in dump.plan_ranges(p, chunk_bytes):
                self.ranges[_shard_name(i, rng)] = (i, rng)

    @contextlib.contextmanager
    def counting_processes(self):
        """Fork ``workers`` counting processes (fewer when fewer ranges are left) for the run."""
        todo = [s for s in self.ranges if not is_done(self.folder, s)]
        workers = max(1, min(int(self.opts["workers"]), len(todo) or 1))
        # Each worker decompresses in a helper thread only if there is a core to spare for it.
        self.threaded = 2 * workers <= (os.cpu_count() or 1)
        if workers > 1 and todo:
            # Forked, not spawned: a spawned worker imports this package (and the CLI's modules)
            # again, ~0.1-0.2 s of CPU each. The pool is forked here, before the runner starts its
            # progress display and that display's refresh thread, so no lock of that thread's is
            # copied into a worker.
            ctx = multiprocessing.get_context("fork" if sys.platform == "linux" else "spawn")
            self._pool = ctx.Pool(workers)
        try:
            yield self
        finally:
            self._stop_processes()

    def _stop_processes(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    # -- the stage --------------------------------------------------------------------------------
    def shards(self) -> list[str]:
        return list(self.ranges)

    def _task(self, shard: str) -> tuple:
        rng = self.ranges[shard][1]
        return (shard, rng, str(self.counts_dir / shard), self.opts["partitions"], self.opts["spill_entries"],
                self.threaded)

    def run_shard(self, shard: str) -> dict:
        """Count one range into ``counts/<shard>/``; its statistics go into the marker.

        With several processes, the first call hands every range not yet done to the pool, and
        each call then waits for its own range: the runner marks ranges in plan order, while the
        processes count ahead of it.
        """
        if self._pool is None:
            return counting.count_range_task(self._task(shard))[1]
        if self._pending is None:
            self._pending = {s: self._pool.apply_async(counting.count_range_task, (self._task(s),))
                             for s in self.ranges if not is_done(self.folder, s)}
        counted = self._pending.pop(shard, None)
        if counted is None:  # not handed out above (the runner asked for an unexpected range)
            return counting.count_range_task(self._task(shard))[1]
        return counted.get()[1]

    def finish(self, result) -> None:
        """Every range is counted: check the counts, then assemble and write the list."""
        self._stop_processes()
        counting.release_counters()  # the in-process counter's tables (workers == 1)
        t1 = time.time()
        self.infos = self._counted()
        if not self.assemble_list:
            return
        rows, stats = assemble(self.folder, self.infos, self.opts, self.pageview_files, self.wordnet_dir)
        stats["seconds"] = {"counting": round(t1 - self.t0, 3), "assembly": round(time.time() - t1, 3)}
        manifest.write(QUERIES, rows, self.folder / "queries.parquet")
        write_json(self.folder / "stats.json", stats)
        self.stats = stats

    def _counted(self) -> dict[str, dict]:
        """Each range's statistics (from its marker) plus its dump; one line per oddity."""
        shards = self.ranges
        infos = {s: done_info(self.folder, s) for s in shards}
        for i, p in enumerate(self.dumps):
            articles = sum(infos[s].get("articles", 0) for s in shards if shards[s][0] == i)
            if articles == 0:
                raise ClipcurateError(f"{p}: no articles (namespace 0, not redirects) in this dump; "
                                      f"is it an empty or non-article dump?")
        slow = [s for s in shards if infos[s].get("fallback")]
        if slow:  # the C scanner left these ranges to expat: same counts, slower (queries/_fastcount.c)
            log(f"queries: {len(slow)} of {len(shards)} counting shards were read with expat instead of the "
                f"C page scanner ({infos[slow[0]]['fallback']}); the counts are the same, only slower")
        elif any(infos[s].get("counter") == "python" for s in shards):
            log("queries: counted with the pure-Python path (the C counter is not built or "
                "CLIPCURATE_PURE_PYTHON is set); same counts, slower")
        return {s: {**infos[s], "dump": str(shards[s][1].path)} for s in shards}


def build_list(folder: Path, dumps: list[Path], opts: dict, pageview_files: list[Path] = (),
               wordnet_dir: Path | None = None, force: bool = False) -> dict:
    """Count (resumable) and assemble ``folder/queries.parquet`` + ``stats.json``; return the stats."""
    stage = QueryList(folder, dumps, opts, pageview_files, wordnet_dir)
    stage.start_over(force)
    with stage.counting_processes():
        stage.run()
    return stage.stats


def count_dumps(folder: Path, dumps: list[Path], opts: dict, force: bool = False) -> dict[str, dict]:
    """Only the counting half (what benchmarks/queries_parse.py times): every range counted and
    marked, no list assembled; return each shard's statistics."""
    stage = QueryList(folder, dumps, opts, assemble_list=False)
    stage.start_over(force)
    with stage.counting_processes():
        stage.run()
    return stage.infos


def assemble(folder: Path, shard_infos: dict[str, dict], opts: dict, pageview_files: list[Path],
             wordnet_dir: Path | None) -> tuple[list[dict], dict]:
    """Merge counts, apply thresholds, read views and WordNet; return (rows, stats)."""
    counts_dir = folder / "counts"
    dirs = [counts_dir / s for s in shard_infos]
    P = opts["partitions"]
    stats: dict = {"inputs": {}, "thresholds": {k: opts[k] for k in (
        "unigram_min_count", "bigram_min_pmi", "bigram_min_count", "title_min_views",
        "title_min_hour_views", "size")}}
    totals = {}
    for info in shard_infos.values():
        for k in ("pages", "articles", "redirects", "other_namespaces", "bytes", "words", "bigrams", "spills"):
            totals[k] = totals.get(k, 0) + int(info.get(k, 0))
    stats["corpus"] = totals
    stats["inputs"]["dumps"] = sorted({info["dump"] for info in shard_infos.values()})

    candidates: dict[str, list[dict]] = {s: [] for s in SOURCES}

    # WordNet first: synset head lemmas in NLTK order.
    if wordnet_dir is not None:
        stats["inputs"]["wordnet"] = str(wordnet_dir)
        candidates["wordnet"] = [{"query": q, "source": "wordnet"} for q in wordnet.head_lemmas(wordnet_dir)]

    # Unigrams: merge all partitions, keep what the unigram threshold or the PMI lookup needs.
    keep_min = min(opts["unigram_min_count"], opts["bigram_min_count"])
    workers = max(1, int(opts["workers"]))
    uni, n_words = counting.merge_unigrams(dirs, P, max(1, keep_min), workers)
    stats["corpus"]["distinct_words_kept_for_merge"] = len(uni)
    ucands = [(w, c) for w, c in uni.items() if c >= opts["unigram_min_count"]]
    ucands.sort(key=lambda wc: (-wc[1], wc[0]))
    candidates["unigram"] = [{"query": w, "source": "unigram", "count": c} for w, c in ucands]

    # Bigrams: prune by count, then NLTK's PMI against the word counts.
    found, n_pruned = counting.bigram_candidates(
        dirs, P, max(1, opts["bigram_min_count"]), lambda a, b, c: pmi(c, uni[a], uni[b], n_words),
        opts["bigram_min_pmi"], workers)
    bcands = [(f"{a} {b}", c, score) for a, b, c, score in found]
    bcands.sort(key=lambda t: (-t[2], -t[1], t[0]))
    stats["corpus"]["bigrams_after_min_count"] = n_pruned
    candidates["bigram"] = [{"query": q, "source": "bigram", "count": c, "pmi": s} for q, c, s in bcands]
    uni = None  # the word table can be large: free it before the titles

    # Titles from page views.
    if pageview_files:
        pv_stats: dict = {}
        stats["inputs"]["pageviews"] = [str(p) for p in pageview_files]
        titles = pageviews.popular_titles(pageview_files, opts["title_min_views"], opts["title_min_hour_views"],
                                          stats=pv_stats)
        stats["pageviews"] = pv_stats
        candidates["title"] = [{"query": t, "source": "title", "views": v} for t, v in titles]

    # Assemble: wordnet → unigram → bigram → title, first occurrence wins, capped.
    rows: list[dict] = []
    seen: set[str] = set()
    per_source = {}
    for src in SOURCES:
        cands = candidates[src]
        added = empty = 0
        for r in cands:
            q = r["query"]
            if not q.strip():
                empty += 1
                continue
            if q in seen:
                continue
            seen.add(q)
            rows.append(r)
            added += 1
        per_source[src] = {"candidates": len(cands), "after_dedup": added, "empty_skipped": empty}
    capped = rows[: opts["size"]]
    for src in SOURCES:
        per_source[src]["in_list"] = sum(1 for r in capped if r["source"] == src)
    for i, r in enumerate(capped):
        r["entry_id"] = i
    stats["sources"] = per_source
    stats["size"] = len(capped)
    stats["deduplicated_total"] = len(rows)
    return capped, stats


def resolve_wordnet(value) -> Path | None:
    """``auto`` → the first dict dir found (None if none), ``none`` → None, else a checked path."""
    if value is None or str(value).lower() == "auto" or str(value) == "":
        found = wordnet.find_dict_dir()
        if found is None:
            log("queries: no WordNet dict dir found (/usr/share/wordnet, nltk_data): no wordnet entries; "
                "install wordnet-base or pass --wordnet DIR")
        return found
    if str(value).lower() == "none":
        return None
    return wordnet.check_dict_dir(value)


def query_list_hash(queries: list[str]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for q in queries:
        h.update(q.encode("utf-8", "surrogatepass") + b"\n")
    return h.hexdigest()
