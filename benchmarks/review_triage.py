"""Reviewer actions needed to settle every benchmark sample: score order, triage, the sample view.

A reviewer who always answers right (the oracle: the world's planted copies) works through the
review queue of a finished demo workspace three ways, each from an empty decision log:

- ``score``: the queue's own order (highest CLIP score first), one pair at a time, deciding every
  pair in turn (one key per pair);
- ``triage``: ``clipcurate review``'s default order, one pair at a time, where pairs that can no
  longer change a split are skipped;
- ``triage + sample view``: the same order, one benchmark sample at a time (``v``): when the truth
  says no candidate shown is a copy, one ``x`` rejects them all; otherwise the oracle moves the
  highlight to the copy (``j``, counted as keys) and marks it (``y``).

Each run counts the actions (verdict keys), the keys including the sample view's highlight moves,
and the pair verdicts written to the log, until no benchmark sample is left unreviewed (no pair
matters any more); the splits that result must be the same. Then the oracle audits 30 random automatic
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


def is_copy(p: dict, truth: set) -> bool:
    return (p["pool_uid"], p["benchmark"], int(p["bench_index"])) in truth


def settle(ws: Workspace, sort: str, truth: set, by_sample: bool = False) -> tuple[dict, dict]:
    """Decide with the oracle in ``sort`` order (``by_sample``: the sample view) until no pair
    matters; ({actions, keys, verdicts}, splits)."""
    decisions.log_path(ws).unlink(missing_ok=True)
    s = ReviewSession(ws, "oracle", sort=sort)
    actions = keys = 0
    while s.triage.matter and actions <= len(s):
        if by_sample:
            shown = s.group()
            copy = [i for i in shown if is_copy(s.pair(i), truth)]
            if copy:
                keys += abs(shown.index(copy[0]) - (shown.index(s.pos) if s.pos in shown else 0))
                s.goto(copy[0])
                s.decide("duplicate")
            else:
                s.reject_group()
        else:
            s.decide("duplicate" if is_copy(s.pair(), truth) else "not_duplicate")
        actions += 1
        keys += 1
    keys += by_sample  # the `v` that opens the sample view
    verdicts = len(decisions.effective(ws))
    tri = s.triage
    split = {k: "overlap" if tri.proven_overlap(k) else "unreviewed" if tri.matter_of[k] else "settled"
             for k in tri.pairs_of}
    return {"actions": actions, "keys": keys, "verdicts": verdicts}, split


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
        for name, sort, by_sample in (("score order, one pair at a time", "score", False),
                                      ("triage, one pair at a time", "triage", False),
                                      ("triage + sample view", "triage", True)):
            counts[name], splits[name] = settle(ws, sort, truth, by_sample)
        assert len({repr(sorted(v.items())) for v in splits.values()}) == 1, \
            "every way must settle every sample the same way"
        print(f"queue: {q.num_rows} pairs of {samples} benchmark samples; planted copies: {len(truth)}")
        base = counts["score order, one pair at a time"]["actions"]
        print("to settle every sample:")
        for name, c in counts.items():
            print(f"  {name:<32} {c['actions']:>6} actions (ratio {c['actions'] / base:.3f} of score order), "
                  f"{c['keys']:>6} keys, {c['verdicts']:>6} pair verdicts")
        for a in audit(ws, truth, per):
            print(f"audit, automatic {a['automatic']}: {a['agreed']}/{a['audited']} agree with the truth "
                  f"(rate {a['rate']}, 95% Clopper-Pearson [{a['ci_low']}, {a['ci_high']}])")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/demo_final")
