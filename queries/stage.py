"""Stage ``queries``: CLIP's query list from raw Wikipedia, then MetaCLIP matching + balancing.

Python API (the CLI in ``cli/queries.py`` only parses options and calls these; the package
exports them as ``clipcurate.queries.build_queries`` and ``match_candidates``)::

    from clipcurate.core.workspace import Workspace
    from clipcurate.queries import build_queries, match_candidates

    ws = Workspace("./workspace")
    build_queries(ws, dumps=["enwiki-pages-articles-multistream.xml.bz2"],
                  pageviews=["pageviews-20240101-000000.gz"], wordnet="/usr/share/wordnet",
                  workers=8)                       # -> ws/queries/queries.parquet + stats.json
    match_candidates(ws, "laion_subset.parquet", max_per_query=20_000, seed=0)
                                                   # -> ws/candidates/candidates.parquet + entry_counts.parquet

Folders: ``queries/`` (``queries.parquet``, ``stats.json``, ``counts/`` with the on-disk counts,
one ``<shard>.done`` per counted dump range) and ``candidates/`` (``candidates.parquet``,
``entry_counts.parquet``, ``stats.json``). See docs/queries.md for the algorithms and figures.

This module declares the stage (config sections, status entries, SQL reports; the manifests are in
:mod:`clipcurate.queries.manifests`) and checks the options; the work is done by two stages on the
one runner of clipcurate.core.stage: :class:`clipcurate.queries.build.QueryList` (one shard per
dump range) and :class:`clipcurate.queries.candidates.Candidates` (one shard).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Sequence

from clipcurate.core import config
from clipcurate.core import sql
from clipcurate.core.console import log
from clipcurate.core.errors import ClipcurateError, require
from clipcurate.core.io import clean_temp, read_json
from clipcurate.core.stage import SUCCESS, check_upstream, done_info, is_done
from clipcurate.core.workspace import Workspace
from clipcurate.queries import build as _build
from clipcurate.queries import candidates as _candidates
from clipcurate.queries import match as _match
from clipcurate.queries.candidates import load_query_list, read_candidates  # noqa: F401  (public API)
from clipcurate.queries.manifests import CANDIDATES_FOLDER, QUERIES, QUERIES_FOLDER  # noqa: F401  (QUERIES: tests read it here)

config.section("queries", _build.DEFAULTS, _build.DOCS)
MATCH_DEFAULTS = {
    "max_per_query": 20_000,
    "seed": 0,
    "url_column": "url",
    "caption_column": "caption",
    "engine": "pyahocorasick",
    "batch_rows": 65_536,
}
config.section("match", MATCH_DEFAULTS, {
    "max_per_query": "t: at most about this many pairs per query after balancing (CLIP: 20,000)",
    "seed": "seed of the balancing draws (same seed, same output)",
    "url_column": "name of the URL column in the candidates file",
    "caption_column": "name of the caption column in the candidates file",
    "engine": "pyahocorasick or ahocorasick_rs",
    "batch_rows": "rows read per batch",
})


sql.report("queries_by_source", "How many queries each source contributed",
           "select source, count(*) as queries from queries group by 1 order by min(entry_id)", ("queries",))
sql.report("top_entries", "Queries with the most matched pairs, before and after balancing",
           "select entry_id, query, count_before, count_after from entry_counts "
           "order by count_before desc limit 50", ("entry_counts",))


# -- build -------------------------------------------------------------------------------------------

def build(ws: Workspace, dumps: Sequence[str | os.PathLike], pageviews: Sequence[str | os.PathLike] = (),
          wordnet: str | os.PathLike | None = "auto", force: bool = False, **options) -> dict:
    """Build ``queries/queries.parquet`` and ``queries/stats.json``; return the stats.

    ``dumps``: pages-articles dumps (.xml, .xml.bz2, multistream .xml.bz2 with its
    ``-index.txt.bz2`` next to it). ``pageviews``: hourly ``pageviews-*.gz`` files (titles source).
    ``wordnet``: a WordNet 3.0 dict dir, ``"auto"`` or ``"none"``. ``options``: any key of the
    ``[queries]`` config section (``unigram_min_count``, ``bigram_min_pmi``, ``bigram_min_count``,
    ``title_min_views``, ``title_min_hour_views``, ``size``, ``workers``, ``partitions``,
    ``spill_entries``, ``chunk_mb``); missing ones come from ``config.SECTIONS["queries"]``.
    Counting is resumable (per dump range); ``force=True`` counts again from scratch.
    """
    opts = dict(_build.DEFAULTS)
    opts.update({k: v for k, v in options.items() if v is not None})
    unknown = set(opts) - set(_build.DEFAULTS)
    if unknown:
        raise ClipcurateError(f"unknown queries option(s) {sorted(unknown)}; known: {sorted(_build.DEFAULTS)}")
    if wordnet is not None and wordnet != "auto":
        opts["wordnet"] = str(wordnet)
    for key in ("size", "workers", "partitions", "spill_entries"):
        if int(opts[key]) < 1:
            raise ClipcurateError(f"--{key.replace('_', '-')} {opts[key]!r} must be at least 1")
    if not dumps:
        raise ClipcurateError("no dump given: pass one or more pages-articles .xml.bz2 files")
    dump_paths = [Path(d).expanduser().absolute() for d in dumps]
    for p in dump_paths:
        if not p.is_file():
            raise ClipcurateError(f"dump {str(p)!r} not found")
    pv_paths = [Path(p).expanduser().absolute() for p in pageviews]
    for p in pv_paths:
        if not p.is_file():
            raise ClipcurateError(f"page-view file {str(p)!r} not found")
    wn_dir = _build.resolve_wordnet(opts["wordnet"])  # before the long counting: fail early

    ws.create()
    folder = ws.stage_dir(QUERIES_FOLDER, create=True)
    stats = _build.build_list(folder, dump_paths, opts, pv_paths, wn_dir, force=force)
    log(f"queries: {stats['size']:,} queries ("
        + ", ".join(f"{s} {v['in_list']:,}" for s, v in stats["sources"].items())
        + f") → {folder / 'queries.parquet'}")
    return stats


# -- match -------------------------------------------------------------------------------------------

def _match_options(options: dict) -> dict:
    opts = dict(MATCH_DEFAULTS)
    opts.update({k: v for k, v in options.items() if v is not None})
    unknown = set(opts) - set(MATCH_DEFAULTS)
    if unknown:
        raise ClipcurateError(f"unknown match option(s) {sorted(unknown)}; known: {sorted(MATCH_DEFAULTS)}")
    if int(opts["max_per_query"]) < 1:
        raise ClipcurateError(f"--max-per-query {opts['max_per_query']!r} must be at least 1")
    if opts["engine"] not in ("pyahocorasick", "ahocorasick_rs"):
        raise ClipcurateError(f"--engine {opts['engine']!r}: use pyahocorasick or ahocorasick_rs")
    return opts


def match(ws: Workspace, candidates: str | os.PathLike, queries_file: str | os.PathLike | None = None,
          force: bool = False, **options) -> dict:
    """Match candidate pairs against the query list and balance them; return the stats.

    ``candidates``: Parquet file or folder, CSV, TSV or JSONL with a URL and a caption column.
    ``queries_file``: defaults to the workspace's ``queries/queries.parquet``. ``options``: keys of
    the ``[match]`` config section (``max_per_query``, ``seed``, ``url_column``,
    ``caption_column``, ``engine``, ``batch_rows``). Writes ``candidates/candidates.parquet``,
    ``candidates/entry_counts.parquet`` and ``candidates/stats.json``. A rerun with the same inputs
    and options is skipped; ``force=True`` redoes it.
    """
    opts = _match_options(options)
    src = Path(candidates).expanduser().absolute()
    reads = ("queries",) if queries_file is None else ()
    check_upstream(ws.root, reads, "candidates")  # the query list is complete (not a killed build)
    entries = load_query_list(ws, queries_file)
    names, batches = read_candidates(src, opts["url_column"], opts["caption_column"], int(opts["batch_rows"]))

    folder = ws.stage_dir(CANDIDATES_FOLDER, create=True)
    clean_temp(folder)
    st = src.stat()
    fingerprint = {"candidates": str(src), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                   "queries": _build.query_list_hash(entries), **opts}
    if not force and (folder / SUCCESS).exists() and is_done(folder, _candidates.SHARD):
        if done_info(folder, _candidates.SHARD).get("fingerprint") == fingerprint:
            log("candidates: up to date (same input, query list and options); use --force to redo")
            return read_json(folder / "stats.json")

    if opts["engine"] == "ahocorasick_rs":
        require("ahocorasick_rs", "ahocorasick-rs", "--engine ahocorasick_rs")
    t0 = time.time()
    matcher = _match.Matcher(entries, opts["engine"])
    t_build = time.time() - t0
    extra_cols = [c for c in names if c not in (opts["url_column"], opts["caption_column"])]
    work = folder / ".work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()

    # Pass 1: match every caption, count matched pairs per entry over the whole input.
    t1 = time.time()
    matched = _candidates.match_pairs(matcher, batches, opts, extra_cols, work)
    times = {"t1": t1, "automaton": t_build, "matching": time.time() - t1}
    # Pass 2: balance and write, as the stage's one shard (the runner writes the marker last).
    stage = _candidates.Candidates(folder, entries, matched, opts, fingerprint, str(src), times)
    stage.reads = reads
    stage.run()
    stats, t, kept = stage.stats, int(opts["max_per_query"]), stage.stats["kept"]
    log(f"candidates: {stats['rows']:,} rows, {stats['matched']:,} matched, {kept:,} kept after balancing "
        f"(t={t:,}) → {folder / 'candidates.parquet'}")
    return stats
