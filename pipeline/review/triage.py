"""What a review decision can still change: the triaged queue and the audit queue.

A benchmark sample is settled once one of its pairs is a duplicate (a human said so, or the rule
said overlap and no human rejected it) or once no pair of it is left undecided in the review band.
Until then it is *unreviewed* (``overlap/splits.parquet``), and only its undecided band pairs can
change its split: those are the **pairs that matter**. A duplicate vote on any of them settles the
sample (its other pairs stop mattering); a not-duplicate vote settles it only when it was the last.

So the triage order (``sort = "triage"``) is:

1. the pairs that matter, one benchmark sample's pairs together, the samples ordered by their most
   uncertain pair and each sample's pairs most uncertain first. *Uncertain* is the rule's deciding
   score — the copy detector's when it scored the pair, else CLIP's — measured against its overlap
   threshold in units of the review band: ``margin = (overlap - value) / (overlap - review)``, 0 at
   the overlap threshold, 1 at the review one. The pair nearest the overlap threshold is the one most
   likely to be a duplicate, i.e. to settle its sample with one vote;
2. then every other pair (degenerate matches, pairs of settled samples), in the queue's order.

:class:`Triage` keeps, per sample, how many pairs still matter, and updates only the samples whose
pairs got a verdict, so the count costs nothing per key press. The overlap stage's own inputs are
read as files (``overlap/pairs.parquet`` for the automatic decisions, ``overlap/run.json`` for the
thresholds): the review stage never imports overlap.

The **audit queue** holds the pairs the rule decided by itself (``overlap`` and ``clean`` in
``pairs.parquet``, and the nearest pool sample of every benchmark sample without any pair — the
rule's clean verdict as CLIP's App. C inspected it), in a seeded random order, so that the first *n* audited pairs are a random sample
of the automatic decisions and their agreement rate estimates the rule's precision.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from clipcurate.core import manifest as mf
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.workspace import Workspace
from clipcurate.review import decisions

PAIRS_FILE = "overlap/pairs.parquet"
RUN_FILE = "overlap/run.json"
AUTO = ("overlap", "clean")  # the decisions an audit reviews
# the deciding signals' default (overlap, review) thresholds, used when overlap/run.json has none
DEFAULT_THRESHOLDS = {"clip": (0.95, 0.85), "detector": (0.9, 0.7)}
AUDIT_SEED = 0


def _read_pairs(ws: Workspace, columns: list[str]) -> pa.Table | None:
    path = ws.root / PAIRS_FILE
    if not path.is_file():
        return None
    if "pairs" in mf.REGISTRY:
        return mf.read("pairs", path, columns=columns)
    return pq.read_table(path, columns=columns)  # the overlap stage is not installed: the agreed columns


def thresholds(ws: Workspace) -> dict[str, dict[str, tuple[float, float]]]:
    """benchmark → signal → (overlap, review) thresholds the pairs were decided with (run.json)."""
    path = ws.root / RUN_FILE
    if not path.is_file():
        return {}
    try:
        th = json.loads(path.read_text()).get("thresholds") or {}
    except ValueError:
        return {}
    return {b: {s: (float(v[0]), float(v[1])) for s, v in sigs.items()} for b, sigs in th.items()}


def automatic_decisions(ws: Workspace) -> dict[str, str]:
    """pair_id → the rule's decision (overlap / review / clean / degenerate); empty without pairs."""
    t = _read_pairs(ws, ["pair_id", "decision"])
    if t is None:
        return {}
    return dict(zip(t.column("pair_id").to_pylist(), t.column("decision").to_pylist()))


def audited_decisions(ws: Workspace) -> dict[str, str]:
    """pair_id → the rule's decision for every pair the audit queue can show: pairs.parquet's, and
    ``clean`` for the nearest pool sample of each benchmark sample without a pair."""
    auto = automatic_decisions(ws)
    if auto:
        near = _nearest_clean(ws, None, set(auto))
        auto.update(dict.fromkeys(near.column("pair_id").to_pylist(), "clean"))
    return auto


def margins(rows: pa.Table, th: dict) -> np.ndarray:
    """Per row: the deciding score's distance below its overlap threshold, in review-band units."""
    det = rows.column("score_detector")
    clip = rows.column("score_clip").fill_null(-1.0).to_numpy(zero_copy_only=False).astype(np.float64)
    has_det = ~det.is_null().to_numpy(zero_copy_only=False)
    detv = det.fill_null(0.0).to_numpy(zero_copy_only=False).astype(np.float64)
    bench = rows.column("benchmark").to_pylist()
    out = np.empty(rows.num_rows)
    for i, b in enumerate(bench):
        sig = "detector" if has_det[i] else "clip"
        hi, lo = th.get(b, {}).get(sig, DEFAULT_THRESHOLDS[sig])
        v = detv[i] if has_det[i] else clip[i]
        out[i] = (hi - v) / (hi - lo) if hi != lo else hi - v
    return out


class Triage:
    """Per benchmark sample: its queued band pairs, its automatic overlap pairs, the verdicts so far;
    which pairs still matter, and how many."""

    def __init__(self, table: pa.Table, auto: dict[str, str], th: dict):
        self.pair_ids: list[str] = table.column("pair_id").to_pylist()
        keys = list(zip(table.column("benchmark").to_pylist(), table.column("bench_index").to_pylist()))
        self.sample_of = dict(zip(self.pair_ids, keys))
        # without pairs.parquet every queued pair counts as a band pair
        self.band = {pid for pid in self.pair_ids if auto.get(pid, "review") == "review"}
        self.pairs_of: dict[tuple, list[str]] = defaultdict(list)
        for pid, key in zip(self.pair_ids, keys):
            self.pairs_of[key].append(pid)
        self.auto_overlap: dict[tuple, list[str]] = defaultdict(list)
        self.margin = margins(table, th)
        self.verdict: dict[str, str] = {}
        self.matter_of: dict[tuple, int] = {}
        self.matter = 0
        for key in self.pairs_of:
            self._recount(key)

    def add_auto_overlap(self, ws: Workspace) -> None:
        """The rule's overlap pairs of the queued samples (they settle a sample unless rejected)."""
        t = _read_pairs(ws, ["pair_id", "benchmark", "bench_index", "decision"])
        if t is None:
            return
        t = t.filter(pc.equal(t.column("decision"), "overlap"))
        for pid, b, i in zip(*(t.column(c).to_pylist() for c in ("pair_id", "benchmark", "bench_index"))):
            if (b, i) in self.pairs_of:
                self.auto_overlap[(b, i)].append(pid)
                self.sample_of[pid] = (b, i)
        for key in list(self.auto_overlap):
            self._recount(key)

    def proven_overlap(self, key: tuple) -> bool:
        """A confirmed duplicate, or an automatic overlap no one rejected."""
        return any(self.verdict.get(p) == "duplicate" for p in self.pairs_of.get(key, ())) or \
            any(self.verdict.get(p, "duplicate") == "duplicate" for p in self.auto_overlap.get(key, ()))

    def _recount(self, key: tuple) -> None:
        n = 0 if self.proven_overlap(key) else sum(
            1 for p in self.pairs_of[key] if p in self.band and p not in self.verdict)
        self.matter += n - self.matter_of.get(key, 0)
        self.matter_of[key] = n

    def set_verdict(self, pid: str, verdict: str | None) -> None:
        """Record a pair's verdict (None: no verdict any more, e.g. after an undo)."""
        if verdict is None:
            self.verdict.pop(pid, None)
        else:
            self.verdict[pid] = verdict
        key = self.sample_of.get(pid)
        if key is not None and key in self.pairs_of:
            self._recount(key)

    def matters(self, pid: str) -> bool:
        """Whether a vote on this pair can still change its sample's split."""
        key = self.sample_of.get(pid)
        return (pid in self.band and pid not in self.verdict and key is not None
                and self.matter_of.get(key, 0) > 0)

    def order(self, rows: np.ndarray, position: np.ndarray) -> np.ndarray:
        """``rows`` (queue row numbers) in triage order: the pairs that matter grouped by sample, the
        samples by their smallest margin, each sample's pairs by margin; then the rest by position."""
        ids, rl = self.pair_ids, rows.tolist()
        live = [self.matters(ids[r]) for r in rl]
        first: dict[tuple, float] = {}
        for r, m in zip(rl, live):
            if m:
                key = self.sample_of[ids[r]]
                first[key] = min(first.get(key, np.inf), self.margin[r])
        rank = {key: i for i, key in enumerate(sorted(first, key=lambda k: (first[k], k)))}
        group = np.array([rank[self.sample_of[ids[r]]] if m else len(rank) for r, m in zip(rl, live)],
                         dtype=np.int64)
        m = np.where(group < len(rank), self.margin[rows], 0.0)
        return rows[np.lexsort((position[rows], m, group))]


def pairs_that_matter(ws: Workspace, table: pa.Table, eff: dict[str, dict]) -> int:
    """How many queued pairs can still change a benchmark sample's split, given the verdicts."""
    tri = Triage(table, automatic_decisions(ws), thresholds(ws))
    tri.add_auto_overlap(ws)
    for pid, e in eff.items():
        tri.set_verdict(pid, e["verdict"])
    return tri.matter


def audit_table(ws: Workspace, columns: list[str]) -> pa.Table:
    """The rule's own decisions (overlap and clean pairs) as a queue in a seeded random order, with
    their ``decision`` and ``reason``; ``position`` is the place in that order."""
    path = ws.root / PAIRS_FILE
    if not path.is_file():
        raise MissingUpstream(f"overlap pairs ({path})", "clipcurate overlap")
    keep = [c for c in columns if c != "position"]
    t = _read_pairs(ws, [*keep, "decision", "reason"])
    missing = [c for c in keep if c not in t.column_names]
    if missing:
        raise ClipcurateError(f"{path}: columns {missing} missing; rerun `clipcurate overlap --force`")
    t = t.filter(pc.is_in(t.column("decision"), pa.array(AUTO)))
    t = pa.concat_tables([t, _nearest_clean(ws, t.schema, set(_read_pairs(ws, ["pair_id"]).column(0).to_pylist()))])
    order = np.random.default_rng(AUDIT_SEED).permutation(t.num_rows)
    t = t.take(pa.array(order, pa.int64()))
    return t.append_column("position", pa.array(np.arange(t.num_rows), pa.int64())).select(
        [*columns, "decision", "reason"])


def _nearest_clean(ws: Workspace, schema: pa.Schema | None, in_pairs: set[str]) -> pa.Table:
    """The nearest pool sample of every benchmark sample that has no pair at all: the rule's
    *clean* decision as CLIP's App. C inspected it (a nearest neighbour below the review threshold)."""
    path = ws.root / "overlap" / "neighbors.parquet"
    rows = []
    if path.is_file():
        nb = pq.read_table(path, columns=["benchmark", "bench_index", "bench_uid", "rank", "pool_uid", "score"])
        nb = nb.filter(pc.equal(nb.column("rank"), 1))
        for r in nb.to_pylist():
            pid = decisions.pair_id(r["pool_uid"], r["benchmark"], int(r["bench_index"]))
            if pid in in_pairs:
                continue
            rows.append({"pair_id": pid, "pool_uid": r["pool_uid"], "benchmark": r["benchmark"],
                         "bench_index": r["bench_index"], "bench_uid": r["bench_uid"], "score_clip": r["score"],
                         "rank": 1, "decision": "clean",
                         "reason": f"nearest pool sample, clip {r['score']:.3f}: below the review band"})
    if schema is None:  # the pair ids only
        return pa.table({"pair_id": pa.array([r["pair_id"] for r in rows], pa.string())})
    return pa.Table.from_pylist(rows, schema=schema)


def agreement(records_eff: dict[str, dict], auto: dict[str, str]) -> list[dict]:
    """Per automatic decision (overlap, clean): how many of its pairs a person audited and how many
    they agreed with, with the 95 % Clopper-Pearson interval of the agreement rate — for ``overlap``
    that is the rule's measured precision. Only human verdicts count (not the demo's reviewer)."""
    from scipy.stats import binomtest  # scipy.stats: 0.9 s to import; only `review status` pays it

    rows = []
    for decision, agree_with in (("overlap", "duplicate"), ("clean", "not_duplicate")):
        audited = [e for pid, e in records_eff.items()
                   if auto.get(pid) == decision and "human" in e["source"].split("+")]
        k, n = sum(e["verdict"] == agree_with for e in audited), len(audited)
        row = {"automatic": decision, "audited": n, "agreed": k, "rate": round(k / n, 4) if n else None,
               "ci_low": None, "ci_high": None}
        if n:
            ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
            row["ci_low"], row["ci_high"] = round(float(ci.low), 4), round(float(ci.high), 4)
        rows.append(row)
    return rows


def pairs_path(ws: Workspace) -> Path:
    return ws.root / PAIRS_FILE
