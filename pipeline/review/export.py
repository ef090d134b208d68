"""`clipcurate review export`: one row per decided pair, to Parquet or CSV."""

from __future__ import annotations

import csv
import os

import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate.core.errors import ClipcurateError
from clipcurate.core.io import atomic_path
from clipcurate.core.workspace import Workspace
from clipcurate.review import decisions
from clipcurate.review.session import load_queue, queue_path


def _queue_or_none(ws: Workspace):
    return load_queue(ws) if queue_path(ws).is_file() else None


EXPORT_COLUMNS = [
    ("pair_id", pa.string()), ("pool_uid", pa.string()), ("benchmark", pa.string()), ("bench_index", pa.int64()),
    ("verdict", pa.string()), ("votes_duplicate", pa.int32()), ("votes_not_duplicate", pa.int32()),
    ("reviewers", pa.string()), ("source", pa.string()), ("disagreement", pa.bool_()), ("flagged", pa.bool_()),
    ("seconds", pa.float64()), ("last_ts", pa.float64()), ("position", pa.int64()), ("score_clip", pa.float32()),
    ("score_detector", pa.float32()), ("phash_dist", pa.int32()), ("text_sim", pa.float32()),
]


def export_table(ws: Workspace) -> pa.Table:
    """One row per decided pair: the verdict, its votes and sources, joined with the queue's scores."""
    records, _ = decisions.load(ws)
    eff = decisions.effective(records)
    st = decisions.stacks(records)
    queue = _queue_or_none(ws)
    qrow = {pid: i for i, pid in enumerate(queue.pair_ids)} if queue is not None else {}
    rows = []
    for pid in sorted(eff, key=lambda p: (qrow.get(p, 1 << 62), p)):
        e = eff[pid]
        votes = [decisions.vote(s) for (p, _), s in st.items() if p == pid]
        votes = [v for v in votes if v is not None]
        q = queue.row(qrow[pid]) if pid in qrow else {}
        rows.append({
            "pair_id": pid, "pool_uid": e["pool_uid"], "benchmark": e["benchmark"],
            "bench_index": e["bench_index"], "verdict": e["verdict"],
            "votes_duplicate": e["votes"].get("duplicate", 0), "votes_not_duplicate": e["votes"].get("not_duplicate", 0),
            "reviewers": ",".join(sorted(v.get("reviewer") or "unknown" for v in votes)), "source": e["source"],
            "disagreement": len(e["votes"]) > 1,
            "flagged": any(r["decision"] == "flag" for (p, _), s in st.items() if p == pid for r in s),
            "seconds": sum(float(v.get("seconds") or 0) for v in votes),
            "last_ts": max(float(v.get("ts") or 0) for v in votes),
            "position": q.get("position"), "score_clip": q.get("score_clip"), "score_detector": q.get("score_detector"),
            "phash_dist": q.get("phash_dist"), "text_sim": q.get("text_sim"),
        })
    schema = pa.schema([pa.field(n, t) for n, t in EXPORT_COLUMNS])
    return pa.Table.from_pylist(rows, schema=schema)


def export(ws: Workspace, output: str | os.PathLike, fmt: str = "parquet") -> int:
    """Write the decided pairs to Parquet or CSV (atomically); returns the number of rows."""
    if fmt not in ("parquet", "csv"):
        raise ClipcurateError(f"export format {fmt!r}: use parquet or csv")
    tbl = export_table(ws)
    with atomic_path(output) as tmp:
        if fmt == "parquet":
            pq.write_table(tbl, tmp, compression="zstd")
        else:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh, lineterminator="\n")
                w.writerow(tbl.column_names)
                for r in tbl.to_pylist():
                    w.writerow(["" if v is None else v for v in r.values()])
    return tbl.num_rows
