"""``clipcurate demo``: the whole product, for real, on a small generated world.

1. :func:`clipcurate.run.world.build_world` writes a MediaWiki dump, page views, pool images (with
   planted App. C copies of benchmark images), candidate pairs and two benchmarks under
   ``<workspace>/world/``;
2. the demo pipeline (``pipeline/run/demo_pipeline.toml``, copied to ``<workspace>/pipeline.toml``
   and identical to ``examples/demo/pipeline.toml``) runs every stage through
   :mod:`clipcurate.run.runner`: queries build → match → download (from a loopback server) → bench
   add → embed (tiny CLIP, random init) → overlap calibrate → overlap → review (automatic, marked
   ``auto-demo``, :mod:`clipcurate.run.autoreview`) → curate (the clean set, and the pool as
   downloaded) → train twice with one recipe and seed (tiny CLIP: run ``all`` on the pool as
   downloaded, run ``clean`` on the decontaminated pool) → eval --compare all clean;
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

from clipcurate.core import manifest as mf
from clipcurate.core.config import Config
from clipcurate.core.console import log
from clipcurate.core.io import read_json, write_text
from clipcurate.core.uid import pair_uid
from clipcurate.core.workspace import Workspace
from clipcurate.overlap import SIGNALS
from clipcurate.run.runner import Pipeline, run_pipeline
from clipcurate.run.world import build_world

TEMPLATE = Path(__file__).with_name("demo_pipeline.toml")
# `--size tiny` (the CI test): the same steps with less work each.
TINY_OVERRIDES = {"detector.train": {"steps": 30, "batch_size": 16}, "train": {"epochs": 10, "batch_size": 16},
                  "overlap.calibrate": {"copies": 12, "distractors": 24}, "download": {"samples_per_shard": 60},
                  "curate": {"shard_size": 60},
                  # a dozen planted copies cannot calibrate anything: fixed, strict thresholds instead
                  "overlap": {"use_calibration": False, "signal_thresholds": {
                      "detector": {"overlap": 0.999, "review": 0.99}, "phash": {"overlap": 2, "review": 6},
                      "dhash": {"overlap": 2, "review": 6}}}}
DEMO_CONFIG = """# Written by `clipcurate demo` (edit freely; the demo never overwrites it).
# Every section keeps its defaults; the demo's steps set their own options in pipeline.toml.
"""


def prepare(ws: Workspace, size: str = "small", seed: int = 0) -> Path:
    """Write the world and the pipeline file; returns the pipeline file's path."""
    ws.create()
    build_world(ws.path("world"), size=size, seed=seed)
    if not ws.config_file.exists():
        write_text(ws.config_file, DEMO_CONFIG)
    target = ws.path("pipeline.toml")
    text = TEMPLATE.read_text()
    if not target.exists() or target.read_text() != text:
        write_text(target, text)
    return target


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
        # what it measures: the whole decontamination list (every signal, the rule, review), not one detector
        rows.append(("decontamination list vs planted copies (precision / recall)", f"{prec:.3f} / {rec:.3f}"))
    cal = ws.path("overlap", "calibration", "thresholds.json")
    if cal.exists():
        c = read_json(cal)
        comb = c.get("combined") or {}
        if comb.get("rule") is not None:
            def fig(k):
                v, ci = comb.get(k), comb.get(f"{k}_ci")
                return "—" if v is None else f"{v:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")

            rows.append(("calibrated rule (held-apart planted copies)",
                         f"{comb['rule']}: P {fig('precision')} R {fig('recall')}"))
        chosen = c.get("chosen", {})
        parts = []
        for sig, v in chosen.items():
            if not isinstance(v, dict):
                continue
            op = "≥" if sig not in SIGNALS or SIGNALS[sig].higher_is_better else "≤"
            if v.get("threshold") is not None:
                def f2(x):
                    return "—" if x is None else f"{x:.2f}"

                parts.append(f"{sig} {op} {v['threshold']:.3g}: P {f2(v.get('precision'))} R {f2(v.get('recall'))}")
            else:
                parts.append(f"{sig}: no threshold reaches the target precision")
        if parts:
            rows.append(("calibration per signal (held-apart planted copies)", "; ".join(parts)))
    if "eval" in mf.REGISTRY:
        rows += eval_lines(ws)
    return rows


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.1f}"


def _p(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3g}"


def eval_lines(ws: Workspace) -> list[tuple[str, str]]:
    """The §5 line of each evaluated model and, where both runs were compared, the counterfactual
    line: read back from eval.parquet and compare.parquet."""
    rows: list[tuple[str, str]] = []
    cmp_files = sorted(ws.path("eval").glob("compare-*/compare.parquet")) if ws.path("eval").is_dir() else []
    runs: dict[str, str] = {}  # model tag -> train run name
    cmp = []
    for f in cmp_files:
        cmp += pq.read_table(f).to_pylist()
    for r in cmp:
        runs[r["model_a"]], runs[r["model_b"]] = r["run_a"], r["run_b"]
    for r in mf.read_all("eval", ws.root).to_pylist():
        who = runs.get(r["model_tag"], r["model_tag"])
        sig = {True: "significant", False: "not significant", None: "no test"}[r["significant"]]
        rows.append((f"§5 {r['benchmark']} (trained on {who})",
                     f"Overlap {_pct(r['acc_overlap'])} % (n {r['n_overlap']}) vs Clean {_pct(r['acc_clean'])} % "
                     f"(n {r['n_clean']}); All−Clean {_pct(r['all_minus_clean'])}; p {_p(r['p_value'])} vs "
                     f"{r['threshold']:.3g} (m {r['bonferroni_m']}): {sig}"))
    for r in cmp:
        sig = {True: "significant", False: "not significant", None: "no test"}[r["significant"]]
        rows.append((f"counterfactual {r['benchmark']} {r['split']} ({r['run_a']} − {r['run_b']})",
                     f"{_pct(r['acc_a'])} vs {_pct(r['acc_b'])} % on the same {r['n']}: "
                     f"{_pct(r['diff'])} [{_pct(r['diff_low'])}, {_pct(r['diff_high'])}]; McNemar p {_p(r['p_value'])} "
                     f"vs {r['threshold']:.3g}: {sig}"))
    return rows


def run_demo(ws: Workspace, size: str = "small", seed: int = 0, force: bool = False) -> list[tuple[str, str]]:
    """Build the world (once), run the pipeline (skipping finished steps), return the summary.

    The configuration is read once, after :func:`prepare` wrote the demo's clipcurate.toml (the
    workspace's file, or ``$CLIPCURATE_CONFIG``); the stages must be imported first
    (``clipcurate.stages.load()``, as the CLI does)."""
    if force and ws.root.exists():
        for sub in ("queries", "candidates", "pool", "benchmarks", "embed", "overlap", "review", "curate",
                    "train", "eval", "run", "world", "detector"):
            shutil.rmtree(ws.path(sub), ignore_errors=True)
    path = prepare(ws, size=size, seed=seed)
    log(f"demo world in {ws.path('world')}; pipeline {path}")
    pipeline = Pipeline.load(path)
    for kind, params in (TINY_OVERRIDES if size == "tiny" else {}).items():
        pipeline.override(kind, **params)
    run_pipeline(pipeline, ws, cfg=Config.load(ws.root))
    return summary(ws)
