"""``clipcurate demo``: the whole product, for real, on a small generated world.

1. :func:`pipeline.world.build_world` writes a MediaWiki dump, page views, pool images (with
   planted App. C copies of benchmark images), candidate pairs and two benchmarks under
   ``<workspace>/world/``;
2. the demo pipeline (``pipeline/demo_pipeline.toml``, copied to ``<workspace>/pipeline.toml`` and
   identical to ``examples/demo/pipeline.toml``) runs every stage through :mod:`pipeline.run`:
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

from . import decisions
from . import manifest as mf
from .console import log
from .io import read_json, write_text
from .uid import pair_uid
from .workspace import Workspace

TEMPLATE = Path(__file__).with_name("demo_pipeline.toml")
DEMO_REVIEWER = "clipcurate-demo"


def prepare(ws: Workspace, size: str = "small", seed: int = 0) -> Path:
    """Write the world and the pipeline file; returns the pipeline file's path."""
    from .world import build_world

    ws.create()
    build_world(ws.path("world"), size=size, seed=seed)
    target = ws.path("pipeline.toml")
    text = TEMPLATE.read_text()
    if not target.exists() or target.read_text() != text:
        write_text(target, text)
    return target


def auto_review(ws: Workspace, rule: str = "midpoint") -> dict:
    """Decide every undecided pair of the review queue automatically (demo only).

    Rule ``midpoint``: a band pair is a duplicate when its CLIP score is at or above the middle of
    its benchmark's band ((low + high) / 2), else not. Each decision is logged like a human one but
    with ``source = "auto-demo"`` and reviewer ``clipcurate-demo``, so `review status` and the
    ``decisions`` view show them as automatic. A person can open the real TUI on the same workspace
    (``clipcurate -w WS review``) and override them: the latest decision of each reviewer counts.
    """
    from . import overlap as ov
    from .config import Config

    if rule != "midpoint":
        from .errors import ClipcurateError

        raise ClipcurateError(f"review.auto rule {rule!r}: only 'midpoint' is implemented")
    qpath = ws.path("overlap", "review_queue.parquet")
    if not qpath.exists():
        return {"decided": 0, "queue": 0}
    q = pq.read_table(qpath).to_pylist()
    done = set(decisions.effective(ws))
    opts = ov.options(ws, cfg=Config.load(ws.root))
    records = []
    for r in q:
        if r["pair_id"] in done:
            continue
        th = ov.thresholds_for(opts, r["benchmark"])
        low, high = th["clip"] if "clip" in th else (opts["low"], opts["high"])
        verdict = "duplicate" if (r["score_clip"] or 0) >= (low + high) / 2 else "not_duplicate"
        records.append({"pair_id": r["pair_id"], "pool_uid": r["pool_uid"], "benchmark": r["benchmark"],
                        "bench_index": int(r["bench_index"]), "decision": verdict, "reviewer": DEMO_REVIEWER,
                        "source": "auto-demo", "seconds": 0.0})
    decisions.append(ws, records)
    if q:
        ov.refresh_splits(ws)
    try:
        from .review import mark_progress

        mark_progress(ws)
    except ImportError:  # pragma: no cover
        pass
    return {"queue": len(q), "decided": len(records),
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
        for sig, v in chosen.items():
            if isinstance(v, dict) and v.get("threshold") is not None:
                parts.append(f"{sig} ≥/≤ {v['threshold']:.3g}: P {v.get('precision', float('nan')):.2f} "
                             f"R {v.get('recall', float('nan')):.2f}")
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
    from .run import Pipeline, run_pipeline

    if force and ws.root.exists():
        for sub in ("queries", "candidates", "pool", "benchmarks", "embed", "overlap", "review", "curate",
                    "train", "eval", "run", "world", "detector"):
            shutil.rmtree(ws.path(sub), ignore_errors=True)
    path = prepare(ws, size=size, seed=seed)
    log(f"demo world in {ws.path('world')}; pipeline {path}")
    run_pipeline(Pipeline.load(path), ws)
    return summary(ws)
