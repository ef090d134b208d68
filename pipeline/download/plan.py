"""Step 1 of a download, the plan: the input cut into shards under ``pool/_input``.

The input (candidates.parquet, or a user's Parquet/CSV/TSV/JSONL) is read once, uids are computed,
duplicates dropped, and the rows are cut into shards of `samples_per_shard`. Each shard's rows are
saved as pool/_input/{shard}.parquet, then pool/_input/plan.json (last) with a fingerprint of the
input. A rerun with the same input reuses the plan; a different input is an error unless --force
(which starts the pool over).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from clipcurate.core import manifest
from clipcurate.core import registry
from clipcurate.core.console import warn
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.io import atomic_path, read_json, write_json
from clipcurate.core.stage import is_done
from clipcurate.core.uid import pair_uid
from clipcurate.core.workspace import Workspace
from clipcurate.download.options import conf_from
from clipcurate.download.pool import FOLDER

INPUT_DIR = "_input"
INPUT_SCHEMA = pa.schema([("uid", pa.string()), ("url", pa.string()), ("caption", pa.string()),
                          ("query_ids", pa.list_(pa.int32()))])


def read_input(ws: Workspace, input_path: str | os.PathLike | None, conf: dict) -> pa.Table:
    """The rows to download: uid, url, caption, query_ids (INPUT_SCHEMA), in input order."""
    if input_path is None:
        path = ws.path("candidates", "candidates.parquet")
        if "candidates" in manifest.REGISTRY:
            files = registry.require_manifest(ws, "candidates")
            path = files[0]
        elif not path.exists():
            raise MissingUpstream(f"candidates ({path})", "clipcurate queries match")
        url_col, cap_col = "url", "caption"
    else:
        path = Path(input_path)
        url_col, cap_col = conf["url_col"], conf["caption_col"]
    tbl = _read_table(path)
    cols = tbl.column_names
    for want, opt in ((url_col, "--url-col"), (cap_col, "--caption-col")):
        if want not in cols:
            raise ClipcurateError(f"{path}: no column {want!r} (columns: {', '.join(cols)}); name it with {opt}")
    urls = [None if u is None else str(u) for u in tbl.column(url_col).to_pylist()]
    caps = ["" if c is None else str(c) for c in tbl.column(cap_col).to_pylist()]
    if "uid" in cols:
        uids = [str(u) if u is not None else pair_uid(url, cap)
                for u, url, cap in zip(tbl.column("uid").to_pylist(), urls, caps)]
    else:
        uids = [pair_uid(url, cap) for url, cap in zip(urls, caps)]
    qcol = next((c for c in ("query_ids", "entry_ids") if c in cols), None)
    if qcol:
        qids = [[int(q) for q in (v or [])] if isinstance(v, (list, tuple)) else ([] if v is None else [int(v)])
                for v in tbl.column(qcol).to_pylist()]
    else:
        qids = [[] for _ in urls]
    return pa.table({"uid": uids, "url": urls, "caption": caps, "query_ids": qids}, schema=INPUT_SCHEMA)


def _read_table(path: Path) -> pa.Table:
    if not path.exists():
        raise ClipcurateError(f"input file {str(path)!r} not found")
    name = path.name.lower()
    base = name[:-3] if name.endswith(".gz") else name
    try:
        if base.endswith(".parquet"):
            return pq.read_table(path)
        if base.endswith(".csv"):
            return pacsv.read_csv(path)
        if base.endswith(".tsv"):
            return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter="\t"))
        if base.endswith((".jsonl", ".json", ".ndjson")):
            return pajson.read_json(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ClipcurateError(f"{path}: cannot read it ({str(exc).splitlines()[0][:120]})") from None
    raise ClipcurateError(f"{path}: unknown file type; use .parquet, .csv, .tsv or .jsonl (optionally .gz)")


def _fingerprint(tbl: pa.Table, samples_per_shard: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{samples_per_shard}\n".encode())
    for uid, url in zip(tbl.column("uid").to_pylist(), tbl.column("url").to_pylist()):
        h.update(f"{uid}\x1f{url}\n".encode())
    return h.hexdigest()


def shard_names(n_rows: int, samples_per_shard: int) -> list[str]:
    n = max(1, -(-n_rows // samples_per_shard))
    width = max(5, len(str(n - 1)))
    return [f"{i:0{width}d}" for i in range(n)]


def plan(ws: Workspace, input_path=None, conf: dict | None = None, force: bool = False) -> list[str]:
    """Cut the input into shards under pool/_input (reused when the input did not change)."""
    conf = conf_from(conf)
    folder = ws.path(FOLDER)
    in_dir = folder / INPUT_DIR
    tbl = read_input(ws, input_path, conf)
    # Duplicate uids (the same url + caption twice) would be two rows with one uid: keep the first.
    seen, keep = set(), []
    for i, uid in enumerate(tbl.column("uid").to_pylist()):
        if uid not in seen:
            seen.add(uid)
            keep.append(i)
    dupes = tbl.num_rows - len(keep)
    if dupes:
        warn(f"download: {dupes} duplicate input rows (same uid) skipped")
        tbl = tbl.take(keep)
    sps = int(conf["samples_per_shard"])
    fp = _fingerprint(tbl, sps)
    plan_file = in_dir / "plan.json"
    if plan_file.exists() and not force:
        old = read_json(plan_file)
        if old.get("fingerprint") == fp:
            return old["shards"]
        done = [s for s in old.get("shards", []) if is_done(folder, s)]
    else:
        done = [] if force else sorted(folder.glob("*.done"))  # e.g. shards written by write_pool_shard
    if done and not force:
        raise ClipcurateError(
            f"pool/ holds {len(done)} shards downloaded from another input (or samples_per_shard); "
            f"rerun with --force to start the pool over")
    if folder.exists():
        shutil.rmtree(folder)
    shards = shard_names(tbl.num_rows, sps)
    for i, s in enumerate(shards):
        with atomic_path(in_dir / f"{s}.parquet") as tmp:
            pq.write_table(tbl.slice(i * sps, sps), tmp)
    write_json(plan_file, {"fingerprint": fp, "shards": shards, "rows": tbl.num_rows,
                           "samples_per_shard": sps, "duplicates_skipped": dupes,
                           "input": str(input_path) if input_path else "candidates"})
    return shards

