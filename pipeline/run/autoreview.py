"""The demo's stand-in for a reviewer: the pipeline step ``review.auto`` decides the review band
automatically, by rules over the copy signals, and logs each decision as ``auto-demo`` so that
people can tell it from theirs (and override it in ``clipcurate review``)."""

from __future__ import annotations

import pyarrow.parquet as pq

from clipcurate.core.config import Config
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.workspace import Workspace
from clipcurate import overlap as ov
from clipcurate.review import decisions
from clipcurate.review import mark_progress

DEMO_REVIEWER = "clipcurate-demo"


def auto_review(ws: Workspace, rule: str = "agree", *, cfg: Config) -> dict:
    """Decide every undecided pair of the review queue automatically (demo only).

    Rule ``agree`` (default, conservative): a band pair is a duplicate only when every image signal
    it has — detector, pHash, dHash — is at least in its review band (detector at or above its
    review threshold, Hamming distances at or below theirs); one dissenting signal rejects it.
    On the demo's 64 px images this rejects most of the band (measured: docs/walkthrough.md).

    Rule ``mutual-best``: a band pair is a duplicate when its copy-detector score is in
    the detector's review band or above, and the two samples are each other's best match by that
    score — the pool sample matches no other benchmark sample better, and the benchmark sample
    no other pool sample. A copy has one original; a look-alike matches many things about as well.
    Pairs without a detector score fall back to rule ``midpoint``: a duplicate when the CLIP score is
    at or above the middle of the benchmark's CLIP band ((low + high) / 2).

    Each decision is logged like a human one but with ``source = "auto-demo"`` and reviewer
    ``clipcurate-demo``, so `review status` and the ``decisions`` view show them as automatic. A
    person can open the real TUI on the same workspace (``clipcurate -w WS review``) and override
    them: the latest decision of each reviewer counts. ``cfg`` is the run's configuration ([overlap]
    thresholds). The result's ``unreviewed`` counts the benchmark samples still unreviewed after
    the splits are refreshed (0 once every band pair is decided).
    """
    if rule not in ("agree", "mutual-best", "midpoint"):
        raise ClipcurateError(f"review.auto rule {rule!r}: use agree, mutual-best or midpoint")
    qpath = ws.path("overlap", "review_queue.parquet")
    if not qpath.exists():
        return {"decided": 0, "queue": 0}
    q = pq.read_table(qpath).to_pylist()
    done = set(decisions.effective(ws))
    opts = ov.options(ws, cfg=cfg)
    best_pool: dict = {}  # pool uid -> (score, benchmark, index) of its best benchmark match
    best_bench: dict = {}  # (benchmark, index) -> (score, pool uid) of its best pool match
    if rule == "mutual-best":
        pairs = pq.read_table(ws.path("overlap", "pairs.parquet"),
                              columns=["pool_uid", "benchmark", "bench_index", "score_detector"]).to_pylist()
        for r in pairs:
            s = r["score_detector"]
            if s is None:
                continue
            key = (r["benchmark"], r["bench_index"])
            if s > best_pool.get(r["pool_uid"], (-2.0,))[0]:
                best_pool[r["pool_uid"]] = (s, *key)
            if s > best_bench.get(key, (-2.0,))[0]:
                best_bench[key] = (s, r["pool_uid"])
    records = []
    for r in q:
        if r["pair_id"] in done:
            continue
        th = ov.thresholds_for(opts, r["benchmark"])
        det = r.get("score_detector")
        if rule == "agree" and det is not None:
            checks = [det >= th["detector"][1]]
            for name, col in (("phash", "phash_dist"), ("dhash", "dhash_dist")):
                if r.get(col) is not None:
                    checks.append(r[col] <= th[name][1])
            dup = all(checks)
        elif rule == "mutual-best" and det is not None:
            key = (r["benchmark"], r["bench_index"])
            mutual = best_pool.get(r["pool_uid"], (None,))[1:] == key and \
                best_bench.get(key, (None, None))[1] == r["pool_uid"]
            dup = mutual and det >= th["detector"][1]
        else:
            high, low = th["clip"]
            dup = (r["score_clip"] or 0) >= (low + high) / 2
        records.append({"pair_id": r["pair_id"], "pool_uid": r["pool_uid"], "benchmark": r["benchmark"],
                        "bench_index": int(r["bench_index"]), "decision": "duplicate" if dup else "not_duplicate",
                        "reviewer": DEMO_REVIEWER, "source": "auto-demo", "seconds": 0.0})
    decisions.append(ws, records)
    unreviewed = None
    if q:
        per = ov.refresh_splits(ws, opts)
        # every queued band pair is decided now, so no sample should be left unreviewed; say so if one is
        unreviewed = sum(r["n_unreviewed"] for r in per)
    mark_progress(ws)
    return {"queue": len(q), "decided": len(records), "rule": rule,
            "duplicates": sum(r["decision"] == "duplicate" for r in records), "unreviewed": unreviewed}
