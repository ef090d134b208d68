"""From the search's numbers to the stage's tables: ``neighbors``, ``pairs`` and ``review_queue``.

The search works on positions: a query row (benchmark sample, benchmarks one after another) and a
global pool position (shards in name order, rows in file order). Here they become uids again:

1. ``neighbors``: every benchmark sample × its top-k (rank 1 = nearest);
2. ``pairs``: the floor pairs in a deterministic order (benchmark, index, CLIP score desc, pool
   position), with their rank when they are also in the top-k, the other signals
   (:func:`clipcurate.overlap.signals.fill_pair_signals`, which may add pairs only the detector or
   the captions propose) and the automatic decision (:func:`clipcurate.overlap.rules.decide`, then
   the degenerate check of :mod:`clipcurate.overlap.images`);
3. ``review_queue``: the band pairs and the degenerate matches, highest CLIP score first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clipcurate.core import manifest as mf
from clipcurate.core.io import write_json
from clipcurate.core.workspace import Workspace
from clipcurate.overlap.expand import expand
from clipcurate.overlap.images import bench_image_stats, degenerate_reason, pool_image_stats
from clipcurate.overlap.inputs import Bench, PoolShard, pool_uids
from clipcurate.overlap.rules import decide
from clipcurate.overlap.schema import FOLDER
from clipcurate.overlap.search import Pairs, TopK
from clipcurate.overlap.signals import fill_pair_signals
from clipcurate.review import pair_id


def uids_at(shards: list[PoolShard], offsets: np.ndarray, pos: np.ndarray, tag: str) -> np.ndarray:
    """Pool uid of each global pool position (reads only the uid columns of the shards involved)."""
    out = np.empty(len(pos), dtype=object)
    if len(pos) == 0:
        return out
    which = np.searchsorted(offsets, pos, side="right") - 1
    for si in np.unique(which):
        sel = which == si
        uids = pool_uids(shards[si], tag)
        out[sel] = uids[pos[sel] - offsets[si]]
    return out


class Queries:
    """Query row → benchmark name, index and uid (the benchmarks' rows one after another)."""

    def __init__(self, benches: list[Bench], q_off: np.ndarray):
        self.bench_of = np.searchsorted(q_off, np.arange(q_off[-1]), side="right") - 1
        self.index = np.concatenate([b.index for b in benches])
        self.uid = np.concatenate([b.uid for b in benches])
        self.names = np.array([b.name for b in benches], dtype=object)


def write_neighbors(out: Path, qs: Queries, top: TopK, shards: list[PoolShard], offsets: np.ndarray,
                    tag: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """neighbors.parquet: every benchmark sample × its top-k. Returns (query, rank, pool position)
    of the entries, for the ranks of the pairs."""
    m, k = top.scores.shape
    qq = np.repeat(np.arange(m), k)
    rank = np.tile(np.arange(1, k + 1), m)
    ok = top.pos.ravel() >= 0
    qq, rank, npos, nsc = qq[ok], rank[ok], top.pos.ravel()[ok], top.scores.ravel()[ok]
    nuid = uids_at(shards, offsets, npos, tag)
    mf.write("neighbors", {"benchmark": qs.names[qs.bench_of[qq]], "bench_index": qs.index[qq], "bench_uid": qs.uid[qq],
                           "rank": rank.astype(np.int32), "pool_uid": nuid, "score": nsc},
             out / "neighbors.parquet")
    return qq, rank, npos


def pair_rows(qs: Queries, pairs: Pairs, top_entries: tuple, shards: list[PoolShard], offsets: np.ndarray,
              tag: str) -> list[dict]:
    """The floor pairs as ``pairs`` rows (CLIP score and rank; the other signals still None), in the
    order benchmark, index, score desc, pool position."""
    qq, rank, npos = top_entries
    total_pool = int(offsets[-1])
    key_top = qq.astype(np.int64) * (total_pool + 1) + npos
    order = np.argsort(key_top)
    key_sorted, rank_sorted = key_top[order], rank[order]
    pkey = pairs.query * (total_pool + 1) + pairs.pos
    if len(key_sorted):
        at_c = np.minimum(np.searchsorted(key_sorted, pkey), len(key_sorted) - 1)
        hit = key_sorted[at_c] == pkey
    else:
        at_c, hit = np.zeros(len(pkey), np.int64), np.zeros(len(pkey), bool)
    prank = [int(rank_sorted[a]) if h else None for a, h in zip(at_c, hit)]
    # deterministic order: benchmark, index, score desc, pool position
    o = np.lexsort((pairs.pos, -pairs.score, qs.index[pairs.query], qs.bench_of[pairs.query]))
    q, pos, score = pairs.query[o], pairs.pos[o], pairs.score[o]
    prank = [prank[i] for i in o]
    puid = uids_at(shards, offsets, pos, tag)
    bname = qs.names[qs.bench_of[q]]
    bidx = qs.index[q]
    buid = qs.uid[q]
    return [{"pair_id": pair_id(puid[i], bname[i], int(bidx[i])), "pool_uid": puid[i], "benchmark": bname[i],
             "bench_index": int(bidx[i]), "bench_uid": buid[i], "score_clip": float(score[i]),
             "score_detector": None, "phash_dist": None, "dhash_dist": None, "kp_inliers": None,
             "text_sim": None, "pdq_dist": None, "kp_ncc": None, "rank": prank[i]} for i in range(len(q))]


def decide_pairs(ws: Workspace, rows: list[dict], benches: list[Bench], opts: dict, ths: dict, policy=None) -> None:
    """Set ``decision`` and ``reason`` of every row: the signals' rule (``policy``: the calibrated
    rule or the random-init CLIP cap, :mod:`clipcurate.overlap.policy`), then the degenerate check
    (benchmark side always, pool side when the tars exist); under a calibrated rule, query expansion
    (:mod:`clipcurate.overlap.expand`, ``[overlap] expand``)."""
    bstats = {b.name: bench_image_stats(ws, b.name, {r["bench_index"] for r in rows if r["benchmark"] == b.name})
              for b in benches}
    pstats = pool_image_stats(ws, {r["pool_uid"] for r in rows})
    for r in rows:
        decision, reason = decide(r, ths[r["benchmark"]], *((policy.rule, policy.no_decide) if policy else ()))
        if decision != "clean":
            deg = (degenerate_reason(bstats[r["benchmark"]].get(int(r["bench_index"])), opts, "benchmark")
                   or degenerate_reason(pstats.get(r["pool_uid"]), opts, "pool"))
            if deg:
                decision, reason = "degenerate", f"{deg}; {reason}"
        r["decision"], r["reason"] = decision, reason
    if policy is not None and policy.rule is not None and opts.get("expand", True):
        expand(ws, rows, policy.rule)


def write_outputs(ws: Workspace, opts: dict, tag: str, benches: list[Bench], shards: list[PoolShard],
                  offsets: np.ndarray, q_off: np.ndarray, top: TopK, pairs: Pairs, ths: dict, out: Path,
                  policy=None) -> dict:
    """neighbors, pairs (with every signal and the decision), review_queue and run.json, into ``out``
    (the generation being published, :func:`clipcurate.overlap.schema.publish_outputs`)."""
    folder = ws.root / FOLDER
    qs = Queries(benches, q_off)
    top_entries = write_neighbors(out, qs, top, shards, offsets, tag)
    rows = pair_rows(qs, pairs, top_entries, shards, offsets, tag)
    # the other signals (detector, hashes, keypoints, captions) and the pairs only the detector or
    # the captions propose (clipcurate.overlap.signals)
    n_search = len(rows)
    rows = fill_pair_signals(ws, tag, rows, ths)
    if len(rows) > n_search:  # added pairs: back to the order benchmark, index, CLIP score desc
        rows.sort(key=lambda r: (r["benchmark"], r["bench_index"], -(r["score_clip"] if r["score_clip"] is not None
                                                                     else -9.0), r["pool_uid"]))
    decide_pairs(ws, rows, benches, opts, ths, policy)
    mf.write("pairs", rows, out / "pairs.parquet")
    write_review_queue(out, rows)
    write_json(out / "run.json", {"model_tag": tag, "k": int(opts["k"]),
                                     "thresholds": {b: {s: list(v) for s, v in t.items()} for b, t in ths.items()},
                                     "benchmarks": [b.name for b in benches],
                                     # the CLIP low each benchmark was searched with: a refresh cannot go below it
                                     "floors": {b: float(t["clip"][1]) for b, t in ths.items()},
                                     "decided_by": policy.source if policy else "per-signal thresholds"})
    return {"pairs": str(folder / "pairs.parquet"), "neighbors": str(folder / "neighbors.parquet")}


def write_review_queue(out: Path, rows: list[dict]) -> int:
    """Band pairs and degenerate matches, highest CLIP score first (ties: benchmark, index, pool uid)."""
    band = [r for r in rows if r["decision"] in ("review", "degenerate")]
    band.sort(key=lambda r: (-(r["score_clip"] if r["score_clip"] is not None else -9), r["benchmark"],
                             r["bench_index"], r["pool_uid"]))
    cols = [c.name for c in mf.get("review_queue").columns]
    queue = [{**{c: r.get(c) for c in cols}, "position": i} for i, r in enumerate(band)]
    mf.write("review_queue", queue, out / "review_queue.parquet")
    return len(queue)
