"""Stage ``candidates`` (``clipcurate queries match``): match candidate pairs, then balance them.

Reads a candidates file (Parquet file or folder, CSV, TSV or JSONL with a URL and a caption column)
and the query list, and writes ``candidates/candidates.parquet`` [candidates],
``candidates/entry_counts.parquet`` [entry_counts] and ``candidates/stats.json``. The algorithms
(MetaCLIP's substring matching, the balancing draw) are in :mod:`clipcurate.queries.match`.

1. **Pass 1 — match** (:func:`match_pairs`): every caption against the Aho-Corasick automaton;
   the matched, de-duplicated pairs go to scratch parts in ``candidates/.work/`` and ``count[e]``
   (matched pairs per entry over the whole input) is summed. It runs before the stage runner:
   it writes only scratch files, and it draws its own progress bar (rows), which must not sit
   inside the runner's (rich < 14.1 shows one live display at a time).
2. **Pass 2 — balance and write** (:class:`Candidates`, one shard named ``match``): keep a pair when
   any of its entries draws ``u < min(1, t / count[e])``, write the outputs, then the runner writes
   the marker (holding the inputs' fingerprint, so an unchanged rerun is skipped) and ``_SUCCESS``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from clipcurate.core import manifest
from clipcurate.core import registry
from clipcurate.core.console import progress
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.io import atomic_path, write_json
from clipcurate.core.stage import Stage
from clipcurate.core.uid import pair_uid
from clipcurate.core.workspace import Workspace
from clipcurate.queries import match as matching
from clipcurate.queries.manifests import CANDIDATES, ENTRY_COUNTS, QUERIES

SHARD = "match"  # the stage's one shard: candidates/match.done


# -- the query list ----------------------------------------------------------------------------------

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


# -- the candidates file -----------------------------------------------------------------------------

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


def _open_batches(path: Path, fmt: str, url_column: str, caption_column: str,
                  batch_rows: int) -> tuple[list[str], Iterator[pa.RecordBatch]]:
    if fmt == "parquet":
        # pyarrow.dataset: 0.2-0.8 s to import here (2 cores); every stage module is imported by
        # `clipcurate status`, so it is imported only when a Parquet candidates file is read.
        import pyarrow.dataset as pds

        ds = pds.dataset(str(path), format="parquet")
        return ds.schema.names, ds.to_batches(batch_size=batch_rows)
    if fmt in ("csv", "tsv"):
        reader = pcsv.open_csv(
            str(path),
            read_options=pcsv.ReadOptions(block_size=1 << 24),
            parse_options=pcsv.ParseOptions(delimiter="," if fmt == "csv" else "\t",
                                            quote_char='"' if fmt == "csv" else False,
                                            newlines_in_values=fmt == "csv"),
            convert_options=pcsv.ConvertOptions(column_types={url_column: pa.string(),
                                                              caption_column: pa.string()}))
        return reader.schema.names, iter(reader)
    reader = pjson.open_json(str(path), read_options=pjson.ReadOptions(block_size=1 << 24))
    return reader.schema.names, iter(reader)


def read_candidates(path: str | os.PathLike, url_column: str = "url", caption_column: str = "caption",
                    batch_rows: int = 65_536) -> tuple[list[str], Iterator[pa.RecordBatch]]:
    """(column names, batches) of a Parquet file/dir, CSV, TSV or JSONL; checks the two columns."""
    path = Path(path)
    if not path.exists():
        raise ClipcurateError(f"candidates {str(path)!r} not found")
    fmt = _format(path)
    try:
        names, batches = _open_batches(path, fmt, url_column, caption_column, batch_rows)
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


# -- pass 1: match -----------------------------------------------------------------------------------

def match_pairs(matcher: matching.Matcher, batches, opts: dict, extra_cols: list[str],
                work: Path) -> tuple[np.ndarray, dict, list[Path]]:
    """Match every caption, keep each matched (url, caption) pair once, and count matched pairs
    per entry over the whole input; return (counts, stats, the scratch parts written to ``work``)."""
    counts = np.zeros(matcher.n, dtype=np.int64)
    stats = {"rows": 0, "null_skipped": 0, "unmatched": 0, "duplicates": 0, "matched": 0}
    seen: set[str] = set()
    parts: list[Path] = []
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
    return counts, stats, parts


def _match_batch(matcher, caps: list) -> list[list[int]]:
    return matcher.match_many(["" if c is None else c for c in caps])


# -- pass 2: balance and write (the stage) -----------------------------------------------------------

class Candidates(Stage):
    """Pass 2 as the stage's one shard: balance the matched pairs of pass 1 and write the outputs.

    ``matched`` is what :func:`match_pairs` returned; ``fingerprint`` goes into the shard's marker;
    ``source`` (the candidates file) and ``times`` (``t1``: when pass 1 started, ``automaton`` and
    ``matching``: seconds) into ``stats.json``.
    """

    name = "candidates"
    description = "candidates: balancing"

    def __init__(self, folder: Path, entries: list[str], matched: tuple, opts: dict, fingerprint: dict,
                 source: str, times: dict):
        super().__init__(folder, force=True)  # made only when the output is not up to date
        self.entries, self.opts, self.fingerprint = entries, opts, fingerprint
        self.source, self.times = source, times
        self.counts, self.stats, self.parts = matched

    def shards(self) -> list[str]:
        return [SHARD]

    def run_shard(self, shard: str) -> dict:
        """p[e] = min(1, t / count[e]); keep a pair if any entry's draw is below p[e]."""
        t = int(self.opts["max_per_query"])
        seed = int(self.opts["seed"])
        counts, stats, entries = self.counts, self.stats, self.entries
        p = matching.keep_probabilities(counts.tolist(), t)
        after = np.zeros(len(entries), dtype=np.int64)
        kept = 0
        with atomic_path(self.folder / "candidates.parquet") as tmp:
            with pq.ParquetWriter(tmp, CANDIDATES.schema, compression="zstd") as writer:
                for part in self.parts:
                    tbl = pq.read_table(part)
                    uids = tbl.column("uid").to_pylist()
                    ids_list = tbl.column("entry_ids").to_pylist()
                    mask = [matching.keep_pair(u, ids, p, seed) for u, ids in zip(uids, ids_list)]
                    for ok, ids in zip(mask, ids_list):
                        if ok:
                            after[ids] += 1
                    kept += sum(mask)
                    writer.write_table(tbl.filter(pa.array(mask, type=pa.bool_())).cast(CANDIDATES.schema))
                if not self.parts:
                    writer.write_table(CANDIDATES.schema.empty_table())
        shutil.rmtree(self.folder / ".work", ignore_errors=True)
        manifest.write(ENTRY_COUNTS, {"entry_id": list(range(len(entries))), "query": entries,
                                      "count_before": counts, "count_after": after},
                       self.folder / "entry_counts.parquet")
        tm = self.times
        stats.update(kept=kept, keep_rate=(kept / stats["matched"]) if stats["matched"] else 0.0,
                     entries=len(entries), entries_matched=int((counts > 0).sum()),
                     entries_over_target=int((counts > t).sum()), max_per_query=t, seed=seed,
                     engine=self.opts["engine"], candidates=self.source,
                     seconds={"automaton": round(tm["automaton"], 3), "matching": round(tm["matching"], 3),
                              "balancing": round(time.time() - tm["t1"] - tm["matching"], 3)})
        write_json(self.folder / "stats.json", stats)
        return {"fingerprint": self.fingerprint, "kept": kept}
