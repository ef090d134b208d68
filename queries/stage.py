"""Stage ``queries``: CLIP's query list from raw Wikipedia, then MetaCLIP matching + balancing.

Python API (the CLI in ``cli/queries.py`` only parses options and calls these)::

    from clipcurate.core.workspace import Workspace
    from clipcurate.queries import stage as queries

    ws = Workspace("./workspace")
    queries.build(ws, dumps=["enwiki-pages-articles-multistream.xml.bz2"],
                  pageviews=["pageviews-20240101-000000.gz"], wordnet="/usr/share/wordnet",
                  workers=8)                       # -> ws/queries/queries.parquet + stats.json
    queries.match(ws, "laion_subset.parquet", max_per_query=20_000, seed=0)
                                                   # -> ws/candidates/candidates.parquet + entry_counts.parquet

Folders: ``queries/`` (``queries.parquet``, ``stats.json``, ``counts/`` with the on-disk counts,
one ``<shard>.done`` per counted dump range) and ``candidates/`` (``candidates.parquet``,
``entry_counts.parquet``, ``stats.json``). See docs/queries.md for the algorithms and figures.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate.core import config
from clipcurate.core import manifest
from clipcurate.core import registry
from clipcurate.core import sql
from clipcurate.core.console import log, progress
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.io import atomic_path, clean_temp, read_json, write_json, write_text
from clipcurate.core.stage import PLAN, SUCCESS, is_done, mark_done, marker
from clipcurate.core.uid import pair_uid
from clipcurate.core.workspace import Workspace

STAGE = "queries"
QUERIES_FOLDER = "queries"
CANDIDATES_FOLDER = "candidates"

QUERIES = manifest.register(
    "queries", version=1, glob="queries/queries.parquet", stage=STAGE,
    doc="The query list (CLIP §2.2 / MetaCLIP): WordNet synset head lemmas, then Wikipedia unigrams, "
        "high-PMI bigrams and popular article titles, deduplicated and capped; row order = entry_id.",
    columns=[
        ("query", pa.string(), "the entry, matched case-sensitively as ' query ' in spaced captions"),
        ("source", pa.string(), "wordnet | unigram | bigram | title (the first source that produced it)"),
        ("count", pa.int64(), "occurrences in the Wikipedia articles (unigram, bigram; null otherwise)"),
        ("pmi", pa.float64(), "log2 PMI as NLTK BigramAssocMeasures.pmi (bigram; null otherwise)"),
        ("views", pa.int64(), "summed desktop en page views over the given hours (title; null otherwise)"),
        ("entry_id", pa.int32(), "position in the list (0-based); candidates.entry_ids refer to it"),
    ])

CANDIDATES = manifest.register(
    "candidates", version=1, glob="candidates/candidates.parquet", stage=STAGE,
    doc="Candidate (url, caption) pairs that matched at least one query and survived balancing "
        "(MetaCLIP: p = min(1, t / count) per entry); the input of `clipcurate download`.",
    columns=[
        ("uid", pa.string(), "pair_uid(url, caption): 32 hex characters"),
        ("url", pa.string(), "image URL"),
        ("caption", pa.string(), "the caption as given (matching used its spaced form)"),
        ("entry_ids", pa.list_(pa.int32()), "sorted entry_ids of every query the caption matched"),
        ("extra", pa.string(), "the other input columns of the row as a JSON object (null if none)"),
    ])

ENTRY_COUNTS = manifest.register(
    "entry_counts", version=1, glob="candidates/entry_counts.parquet", stage=STAGE,
    doc="Per query: matched pairs over the whole input before balancing, and kept pairs after.",
    columns=[
        ("entry_id", pa.int32(), "position in the query list"),
        ("query", pa.string(), "the entry"),
        ("count_before", pa.int64(), "distinct matched pairs containing the entry, whole input"),
        ("count_after", pa.int64(), "of those, pairs kept by balancing"),
    ])

from clipcurate.queries import build as _build  # noqa: E402  (the package, not this module)
from clipcurate.queries import match as _match  # noqa: E402

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

registry.register_stage("queries", QUERIES_FOLDER, "clipcurate queries build", ("queries",))
registry.register_stage("candidates", CANDIDATES_FOLDER, "clipcurate queries match", ("candidates", "entry_counts"))

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
    t0 = time.time()
    infos = _build.count_dumps(folder, dump_paths, opts, force=force)
    t1 = time.time()
    rows, stats = _build.assemble(folder, infos, opts, pv_paths, wn_dir)
    stats["seconds"] = {"counting": round(t1 - t0, 3), "assembly": round(time.time() - t1, 3)}
    manifest.write(QUERIES, rows, folder / "queries.parquet")
    write_json(folder / "stats.json", stats)
    write_text(folder / SUCCESS, "")
    log(f"queries: {stats['size']:,} queries ("
        + ", ".join(f"{s} {v['in_list']:,}" for s, v in stats["sources"].items())
        + f") → {folder / 'queries.parquet'}")
    return stats


# -- match -------------------------------------------------------------------------------------------

def load_query_list(ws: Workspace, queries_file: str | os.PathLike | None = None) -> list[str]:
    """The entries, in entry_id order: the workspace's queries.parquet, or ``queries_file``
    (a queries.parquet, a JSON list like MetaCLIP's metadata.json, or a text file, one per line)."""
    if queries_file is None:
        path = registry.require_manifest(ws, "queries")[0]
        tbl = manifest.read(QUERIES, path, ["query", "entry_id"])
        return _ordered(tbl, path)
    path = Path(queries_file)
    if not path.is_file():
        raise ClipcurateError(f"query list {str(path)!r} not found")
    if path.suffix in (".parquet", ".pq"):
        tbl = manifest.read(QUERIES, path)
        if "query" not in tbl.column_names:
            raise ClipcurateError(f"{path}: no 'query' column (columns: {', '.join(tbl.column_names)})")
        if "entry_id" in tbl.column_names:
            return _ordered(tbl.select(["query", "entry_id"]), path)
        return [str(q) for q in tbl.column("query").to_pylist()]
    text = path.read_text("utf-8")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ClipcurateError(f"{path}: not valid JSON ({exc}); expected a list of strings") from None
        if not isinstance(data, list) or not all(isinstance(x, str) for x in data):
            raise ClipcurateError(f"{path}: expected a JSON list of strings (like MetaCLIP's metadata.json)")
        return data
    return [line for line in text.split("\n") if line != ""]


def _ordered(tbl: pa.Table, path) -> list[str]:
    q = tbl.column("query").to_pylist()
    ids = tbl.column("entry_id").to_pylist()
    if ids != list(range(len(ids))):
        raise ClipcurateError(f"{path}: entry_id is not 0..n-1 in row order; rebuild it with `clipcurate queries build`")
    return q


_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl",
            ".ndjson": "jsonl", ".json": "jsonl"}


def _format(path: Path) -> str:
    if path.is_dir():
        return "parquet"
    suffixes = [s for s in path.suffixes if s not in (".gz", ".bz2", ".zst")]
    fmt = _FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        raise ClipcurateError(f"{path}: unknown candidates format {path.suffix!r}; use .parquet, .csv, .tsv or .jsonl")
    return fmt


def read_candidates(path: str | os.PathLike, url_column: str = "url", caption_column: str = "caption",
                    batch_rows: int = 65_536) -> tuple[list[str], Iterator[pa.RecordBatch]]:
    """(column names, batches) of a Parquet file/dir, CSV, TSV or JSONL; checks the two columns."""
    import pyarrow.csv as pcsv
    import pyarrow.dataset as pds
    import pyarrow.json as pjson

    path = Path(path)
    if not path.exists():
        raise ClipcurateError(f"candidates {str(path)!r} not found")
    fmt = _format(path)
    try:
        if fmt == "parquet":
            ds = pds.dataset(str(path), format="parquet")
            names = ds.schema.names
            batches = ds.to_batches(batch_size=batch_rows)
        elif fmt in ("csv", "tsv"):
            reader = pcsv.open_csv(
                str(path),
                read_options=pcsv.ReadOptions(block_size=1 << 24),
                parse_options=pcsv.ParseOptions(delimiter="," if fmt == "csv" else "\t",
                                                quote_char='"' if fmt == "csv" else False,
                                                newlines_in_values=fmt == "csv"),
                convert_options=pcsv.ConvertOptions(column_types={url_column: pa.string(),
                                                                  caption_column: pa.string()}))
            names = reader.schema.names
            batches = iter(reader)
        else:
            reader = pjson.open_json(str(path), read_options=pjson.ReadOptions(block_size=1 << 24))
            names = reader.schema.names
            batches = iter(reader)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ClipcurateError(f"{path}: cannot read as {fmt} ({str(exc).splitlines()[0]})") from None
    for col, opt in ((caption_column, "--caption-column"), (url_column, "--url-column")):
        if col not in names:
            raise ClipcurateError(f"{path}: no column {col!r} (columns: {', '.join(names)}); "
                                  f"pass {opt} NAME")

    def guarded():
        try:
            yield from batches
        except (pa.ArrowInvalid, OSError) as exc:
            raise ClipcurateError(f"{path}: cannot read as {fmt} ({str(exc).splitlines()[0]})") from None

    return names, guarded()


def _as_strings(batch: pa.RecordBatch, name: str) -> list:
    col = batch.column(batch.schema.get_field_index(name))
    if not pa.types.is_string(col.type) and not pa.types.is_large_string(col.type):
        col = col.cast(pa.string())
    return col.to_pylist()


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
    opts = dict(MATCH_DEFAULTS)
    opts.update({k: v for k, v in options.items() if v is not None})
    unknown = set(opts) - set(MATCH_DEFAULTS)
    if unknown:
        raise ClipcurateError(f"unknown match option(s) {sorted(unknown)}; known: {sorted(MATCH_DEFAULTS)}")
    if int(opts["max_per_query"]) < 1:
        raise ClipcurateError(f"--max-per-query {opts['max_per_query']!r} must be at least 1")
    if opts["engine"] not in ("pyahocorasick", "ahocorasick_rs"):
        raise ClipcurateError(f"--engine {opts['engine']!r}: use pyahocorasick or ahocorasick_rs")
    src = Path(candidates).expanduser().absolute()
    entries = load_query_list(ws, queries_file)
    names, batches = read_candidates(src, opts["url_column"], opts["caption_column"], int(opts["batch_rows"]))

    folder = ws.stage_dir(CANDIDATES_FOLDER, create=True)
    clean_temp(folder)
    st = src.stat()
    fingerprint = {"candidates": str(src), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                   "queries": _build.query_list_hash(entries), **opts}
    shard = "match"
    if not force and (folder / SUCCESS).exists() and is_done(folder, shard):
        done = read_json(marker(folder, shard))
        if done.get("fingerprint") == fingerprint:
            log("candidates: up to date (same input, query list and options); use --force to redo")
            return read_json(folder / "stats.json")
    (folder / SUCCESS).unlink(missing_ok=True)
    marker(folder, shard).unlink(missing_ok=True)
    write_json(folder / PLAN, {"stage": "candidates", "shards": [shard]})

    if opts["engine"] == "ahocorasick_rs":
        from clipcurate.core.errors import require

        require("ahocorasick_rs", "ahocorasick-rs", "--engine ahocorasick_rs")
    t0 = time.time()
    matcher = _match.Matcher(entries, opts["engine"])
    t_build = time.time() - t0
    extra_cols = [c for c in names if c not in (opts["url_column"], opts["caption_column"])]
    work = folder / ".work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()

    # Pass 1: match every caption, count matched pairs per entry over the whole input.
    counts = np.zeros(len(entries), dtype=np.int64)
    stats = {"rows": 0, "null_skipped": 0, "unmatched": 0, "duplicates": 0, "matched": 0}
    seen: set[str] = set()
    parts: list[Path] = []
    t1 = time.time()
    with progress("candidates: matching") as advance:
        for batch in batches:
            n = batch.num_rows
            stats["rows"] += n
            urls = _as_strings(batch, opts["url_column"])
            caps = _as_strings(batch, opts["caption_column"])
            extras = batch.select(extra_cols).to_pylist() if extra_cols else None
            out = {"uid": [], "url": [], "caption": [], "entry_ids": [], "extra": []}
            for i, ids in enumerate(_match_batch(matcher, caps)):
                url, cap = urls[i], caps[i]
                if url is None or cap is None:
                    stats["null_skipped"] += 1
                    continue
                if not ids:
                    stats["unmatched"] += 1
                    continue
                uid = pair_uid(url, cap)
                if uid in seen:
                    stats["duplicates"] += 1
                    continue
                seen.add(uid)
                counts[ids] += 1
                out["uid"].append(uid)
                out["url"].append(url)
                out["caption"].append(cap)
                out["entry_ids"].append(ids)
                out["extra"].append(json.dumps(extras[i], default=str, ensure_ascii=False) if extras else None)
            stats["matched"] += len(out["uid"])
            if out["uid"]:
                part = work / f"part-{len(parts):06d}.parquet"
                pq.write_table(manifest.table(CANDIDATES, out), part)
                parts.append(part)
            advance(n)
    t_match = time.time() - t1
    del seen

    # Pass 2: balance. p[e] = min(1, t / count[e]); keep a pair if any entry's draw is below p[e].
    t = int(opts["max_per_query"])
    seed = int(opts["seed"])
    p = _match.keep_probabilities(counts.tolist(), t)
    after = np.zeros(len(entries), dtype=np.int64)
    kept = 0
    with atomic_path(folder / "candidates.parquet") as tmp:
        with pq.ParquetWriter(tmp, CANDIDATES.schema, compression="zstd") as writer:
            for part in parts:
                tbl = pq.read_table(part)
                uids = tbl.column("uid").to_pylist()
                ids_list = tbl.column("entry_ids").to_pylist()
                mask = [_match.keep_pair(u, ids, p, seed) for u, ids in zip(uids, ids_list)]
                for ok, ids in zip(mask, ids_list):
                    if ok:
                        after[ids] += 1
                kept += sum(mask)
                writer.write_table(tbl.filter(pa.array(mask, type=pa.bool_())).cast(CANDIDATES.schema))
            if not parts:
                writer.write_table(CANDIDATES.schema.empty_table())
    shutil.rmtree(work, ignore_errors=True)
    manifest.write(ENTRY_COUNTS, {"entry_id": list(range(len(entries))), "query": entries,
                                  "count_before": counts, "count_after": after},
                   folder / "entry_counts.parquet")
    stats.update(kept=kept, keep_rate=(kept / stats["matched"]) if stats["matched"] else 0.0,
                 entries=len(entries), entries_matched=int((counts > 0).sum()),
                 entries_over_target=int((counts > t).sum()), max_per_query=t, seed=seed,
                 engine=opts["engine"], candidates=str(src),
                 seconds={"automaton": round(t_build, 3), "matching": round(t_match, 3),
                          "balancing": round(time.time() - t1 - t_match, 3)})
    write_json(folder / "stats.json", stats)
    mark_done(folder, shard, {"fingerprint": fingerprint, "kept": kept})
    write_text(folder / SUCCESS, "")
    log(f"candidates: {stats['rows']:,} rows, {stats['matched']:,} matched, {kept:,} kept after balancing "
        f"(t={t:,}) → {folder / 'candidates.parquet'}")
    return stats


def _match_batch(matcher, caps: list) -> list[list[int]]:
    return matcher.match_many(["" if c is None else c for c in caps])
