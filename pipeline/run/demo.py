"""``clipcurate demo``: the whole product, for real, on a small generated world.

1. :func:`clipcurate.run.world.build_world` writes a MediaWiki dump, page views, pool images (with
   planted App. C copies of benchmark images), candidate pairs and two benchmarks under
   ``<workspace>/world/``;
2. the demo pipeline (``pipeline/demo_pipeline.toml``, copied to ``<workspace>/pipeline.toml`` and
   identical to ``examples/demo/pipeline.toml``) runs every stage through :mod:`clipcurate.run.runner`:
   queries build → match → download (from a loopback server) → bench add → embed (tiny CLIP,
   random init) → overlap calibrate → overlap → review (automatic, marked ``auto-demo``) →
   curate → train (tiny CLIP) → eval;
3. :func:`summary` measures what happened against the world's ground truth (which pool samples are
   planted copies) and prints it. Nothing in the summary is fixed in code: it is all read back from
   the manifests the stages wrote.

A second run on the same workspace skips every finished step.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from clipcurate.review import decisions
from clipcurate.core import manifest as mf
from clipcurate.core.console import log
from clipcurate.core.io import read_json, write_text
from clipcurate.core.uid import pair_uid
from clipcurate.core.workspace import Workspace

TEMPLATE = Path(__file__).with_name("demo_pipeline.toml")
# `--size tiny` (the CI test): the same steps with less work each.
TINY_OVERRIDES = {"detector.train": {"steps": 30, "batch_size": 16}, "train": {"epochs": 2, "batch_size": 16},
                  "overlap.calibrate": {"copies": 12, "distractors": 24}, "download": {"samples_per_shard": 60},
                  "curate": {"shard_size": 60},
                  # a dozen planted copies cannot calibrate anything: fixed, strict thresholds instead
                  "overlap": {"use_calibration": False, "signal_thresholds": {
                      "detector": {"overlap": 0.999, "review": 0.99}, "phash": {"overlap": 2, "review": 6},
                      "dhash": {"overlap": 2, "review": 6}}}}
DEMO_REVIEWER = "clipcurate-demo"
DEMO_CONFIG = """# Written by `clipcurate demo` (edit freely; the demo never overwrites it).
[signals]
# SIFT on 64 px generated shapes finds the same corners on every checkerboard: two different
# benchmark images get dozens of RANSAC inliers (docs/detector.md), so keypoints would confirm
# false copies here. On real photos at full resolution leave it on.
keypoints = false
"""


def prepare(ws: Workspace, size: str = "small", seed: int = 0) -> Path:
    """Write the world and the pipeline file; returns the pipeline file's path."""
    from clipcurate.run.world import build_world

    ws.create()
    build_world(ws.path("world"), size=size, seed=seed)
    if not ws.config_file.exists():
        write_text(ws.config_file, DEMO_CONFIG)
    target = ws.path("pipeline.toml")
    text = TEMPLATE.read_text()
    if not target.exists() or target.read_text() != text:
        write_text(target, text)
    return target


def auto_review(ws: Workspace, rule: str = "agree") -> dict:
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
    them: the latest decision of each reviewer counts.
    """
    from clipcurate import overlap as ov
    from clipcurate.core.config import Config
    from clipcurate.core.errors import ClipcurateError

    if rule not in ("agree", "mutual-best", "midpoint"):
        raise ClipcurateError(f"review.auto rule {rule!r}: use agree, mutual-best or midpoint")
    qpath = ws.path("overlap", "review_queue.parquet")
    if not qpath.exists():
        return {"decided": 0, "queue": 0}
    q = pq.read_table(qpath).to_pylist()
    done = set(decisions.effective(ws))
    opts = ov.options(ws, cfg=Config.load(ws.root))
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
    if q:
        ov.refresh_splits(ws)
    from clipcurate.review.session import mark_progress

    mark_progress(ws)
    return {"queue": len(q), "decided": len(records), "rule": rule,
            "duplicates": sum(r["decision"] == "duplicate" for r in records)}


def summary(ws: Workspace) -> list[tuple[str, str]]:
    """(what, value) rows measured from the workspace's manifests and the world's ground truth."""
    rows: list[tuple[str, str]] = []
    qstats = read_json(ws.path("queries", "stats.json")) if ws.path("queries", "stats.json").exists() else {}
    if qstats:
        by = ", ".join(f"{s} {v.get('in_list', 0)}" for s, v in qstats.get("sources", {}).items())
        rows.append(("queries built", f"{qstats.get('size', 0)} ({by})"))
    cstats_p = ws.path("candidates", "stats.json")
    if cstats_p.exists():
        c = read_json(cstats_p)
        rows.append(("candidate pairs → matched → kept",
                     f"{c.get('rows', '?')} → {c.get('matched', '?')} → {c.get('kept', '?')}"))
    pool = mf.read_all("pool", ws.root, columns=["uid", "status"]) if "pool" in mf.REGISTRY else None
    ok_uids: set[str] = set()
    if pool is not None and pool.num_rows:
        status = pool.column("status").to_pylist()
        ok_uids = {u for u, s in zip(pool.column("uid").to_pylist(), status) if s == "success"}
        rows.append(("downloaded (ok / failed / refused)",
                     f"{status.count('success')} / {status.count('failed')} / {status.count('refused')}"))
    truth_p = ws.path("world", "truth.parquet")
    if truth_p.exists():
        truth = pq.read_table(truth_p).to_pylist()
        planted = {pair_uid(t["url"], t["caption"]) for t in truth}
        planted_in_pool = planted & ok_uids
        flagged: set[str] = set()
        if ws.path("overlap", "decontam.parquet").exists():
            flagged = set(pq.read_table(ws.path("overlap", "decontam.parquet")).column("pool_uid").to_pylist())
        tp = len(flagged & planted_in_pool)
        fp = len(flagged - planted_in_pool)
        rows.append(("planted copies in the pool", f"{len(planted_in_pool)} (of {len(planted)} generated)"))
        rows.append(("overlap found (decontaminated pool samples)", f"{len(flagged)}: {tp} planted, {fp} other"))
        prec = tp / len(flagged) if flagged else float("nan")
        rec = tp / len(planted_in_pool) if planted_in_pool else float("nan")
        rows.append(("detector precision / recall vs planted", f"{prec:.3f} / {rec:.3f}"))
    cal = ws.path("overlap", "calibration", "thresholds.json")
    if cal.exists():
        c = read_json(cal)
        chosen = c.get("chosen", {})
        parts = []
        from clipcurate.overlap import SIGNALS

        for sig, v in chosen.items():
            if not isinstance(v, dict):
                continue
            op = "≥" if sig not in SIGNALS or SIGNALS[sig].higher_is_better else "≤"
            if v.get("threshold") is not None:
                parts.append(f"{sig} {op} {v['threshold']:.3g}: P {v.get('precision', float('nan')):.2f} "
                             f"R {v.get('recall', float('nan')):.2f}")
            else:
                parts.append(f"{sig}: no threshold reaches the target precision")
        if parts:
            rows.append(("calibration (planted App. C copies)", "; ".join(parts)))
    if "eval" in mf.REGISTRY:
        ev = mf.read_all("eval", ws.root).to_pylist()
        for r in ev:
            def pct(v):
                return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.1f}"

            p = r.get("p_value")
            rows.append((f"eval {r['benchmark']} ({r['model_tag']})",
                         f"n {r['n']}, overlap {r['n_overlap']} ({pct(r['overlap_pct'])}%); "
                         f"acc All {pct(r['acc_all'])} / Clean {pct(r['acc_clean'])} / Overlap {pct(r['acc_overlap'])}; "
                         f"All−Clean {pct(r['all_minus_clean'])}; p {('n/a' if p is None or np.isnan(p) else f'{p:.3g}')}"))
    return rows


def run_demo(ws: Workspace, size: str = "small", seed: int = 0, force: bool = False) -> list[tuple[str, str]]:
    """Build the world (once), run the pipeline (skipping finished steps), return the summary."""
    from clipcurate.run.runner import Pipeline, run_pipeline

    if force and ws.root.exists():
        for sub in ("queries", "candidates", "pool", "benchmarks", "embed", "overlap", "review", "curate",
                    "train", "eval", "run", "world", "detector"):
            shutil.rmtree(ws.path(sub), ignore_errors=True)
    path = prepare(ws, size=size, seed=seed)
    log(f"demo world in {ws.path('world')}; pipeline {path}")
    pipeline = Pipeline.load(path)
    for kind, params in (TINY_OVERRIDES if size == "tiny" else {}).items():
        pipeline.override(kind, **params)
    run_pipeline(pipeline, ws)
    return summary(ws)
