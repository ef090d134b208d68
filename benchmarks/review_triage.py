"""Decisions needed to settle every benchmark sample: the triaged queue vs the score-ordered one.

A reviewer who always answers right (the oracle: the world's planted copies) works through the
review queue of a finished demo workspace in two orders, each from an empty decision log:

- ``score``: the queue's own order (highest CLIP score first), deciding every pair in turn;
- ``triage``: ``clipcurate review``'s default order, where pairs that can no longer change a split
  are skipped.

Each run counts the decisions until no benchmark sample is left unreviewed (no pair matters any
more), and the splits that result must be the same. Then the oracle audits 30 random automatic
overlaps and 30 random automatic cleans from the audit queue, and the script prints
`review status`'s agreement rows: the rule's precision measured against the truth. Usage::

    clipcurate demo --workspace /tmp/demo --size tiny      # once (minutes)
    python benchmarks/review_triage.py /tmp/demo

It copies the few files it needs (the overlap outputs, the benchmark samples, the world's truth)
into a scratch workspace, so the demo workspace is left as it was.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from clipcurate.core.uid import pair_uid
from clipcurate.core.workspace import Workspace
from clipcurate.review import ReviewSession, decisions, summary


def planted_pairs(ws: Path) -> set[tuple[str, str, int]]:
    """(pool uid, benchmark, index) of every planted copy: truth.parquet's url + caption give the
    pool uid, the planted file's sha256 gives the benchmark index."""
    index_of = {}
    for b in (ws / "benchmarks").iterdir():
        if (b / "samples.parquet").is_file():
            t = pq.read_table(b / "samples.parquet", columns=["index", "sha256"]).to_pylist()
            index_of.update({(b.name, r["sha256"]): r["index"] for r in t})
    out = set()
    for t in pq.read_table(ws / "world" / "truth.parquet").to_pylist():
        sha = hashlib.sha256((ws / "world" / "benchmarks" / t["benchmark"] / t["file"]).read_bytes()).hexdigest()
        out.add((pair_uid(t["url"], t["caption"]), t["benchmark"], index_of[(t["benchmark"], sha)]))
    return out


def settle(ws: Workspace, sort: str, truth: set) -> tuple[int, dict]:
    """Decide pairs in ``sort`` order with the oracle until no pair matters; (decisions, splits)."""
    decisions.log_path(ws).unlink(missing_ok=True)
    s = ReviewSession(ws, "oracle", sort=sort)
    n = 0
    while s.triage.matter and n <= len(s):
        p = s.pair()
        s.decide("duplicate" if (p["pool_uid"], p["benchmark"], int(p["bench_index"])) in truth else "not_duplicate")
        n += 1
    tri = s.triage
    split = {k: "overlap" if tri.proven_overlap(k) else "unreviewed" if tri.matter_of[k] else "settled"
             for k in tri.pairs_of}
    return n, split


def audit(ws: Workspace, truth: set, per: int) -> list[dict]:
    """The oracle audits the first ``per`` automatic overlaps and the first ``per`` automatic cleans
    of the audit queue (its order is a seeded random permutation, so each is a random sample of its
    kind); `review status`'s agreement rows."""
    decisions.log_path(ws).unlink(missing_ok=True)
    s = ReviewSession(ws, "oracle", audit=True)
    left = {"overlap": per, "clean": per}
    for i in range(len(s)):
        p = s.pair(i)
        if left[p["decision"]]:
            left[p["decision"]] -= 1
            s.goto(i)
            s.decide("duplicate" if (p["pool_uid"], p["benchmark"], int(p["bench_index"])) in truth
                     else "not_duplicate")
    return summary(ws)["audit"]


def main(src: str, per: int = 30) -> None:
    src_p = Path(src)
    truth = planted_pairs(src_p)
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / "ws").create()
        (ws.root / "overlap").mkdir()
        for f in ("review_queue.parquet", "pairs.parquet", "run.json", "neighbors.parquet"):
            shutil.copy(src_p / "overlap" / f, ws.root / "overlap" / f)
        q = pq.read_table(ws.root / "overlap" / "review_queue.parquet", columns=["benchmark", "bench_index"])
        samples = len(set(zip(q.column("benchmark").to_pylist(), q.column("bench_index").to_pylist())))
        counts, splits = {}, {}
        for sort in ("score", "triage"):
            counts[sort], splits[sort] = settle(ws, sort, truth)
        assert splits["score"] == splits["triage"], "the two orders must settle every sample the same way"
        print(f"queue: {q.num_rows} pairs of {samples} benchmark samples; planted copies: {len(truth)}")
        print(f"decisions to settle every sample: score order {counts['score']}, triage {counts['triage']} "
              f"(ratio {counts['triage'] / counts['score']:.3f})")
        for a in audit(ws, truth, per):
            print(f"audit, automatic {a['automatic']}: {a['agreed']}/{a['audited']} agree with the truth "
                  f"(rate {a['rate']}, 95% Clopper-Pearson [{a['ci_low']}, {a['ci_high']}])")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/demo_final")
