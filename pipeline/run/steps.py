"""The step kinds a pipeline file can name: thin adapters from TOML parameters to each stage's
Python API (the same functions the CLI calls). Each returns a small summary dict for the run log.

:data:`STEPS` maps a kind to its function and the command a user would type; the runner
(:mod:`clipcurate.run.runner`) looks kinds up here. A step function takes the workspace and the
step's parameters; one that also takes ``cfg`` gets the run's configuration, read once per run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate import bench
from clipcurate.core.config import Config
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.io import atomic_path
from clipcurate import curate as cu
from clipcurate import detector as det
from clipcurate import download as dl
from clipcurate import embed as em
from clipcurate import eval as ev
from clipcurate.overlap import calibrate
from clipcurate import overlap as ov
from clipcurate import queries
from clipcurate.run.autoreview import auto_review
from clipcurate.run.world import PLACEHOLDER, ImageServer, preferred_port
from clipcurate import train as tr

# step kind -> (function(ws, **params) -> summary dict, the command a user would type)
STEPS: dict[str, tuple[Callable[..., dict | None], str]] = {}


def step(kind: str, command: str):
    """Register a step kind: ``@step("download", "clipcurate download")``."""

    def deco(fn):
        STEPS[kind] = (fn, command)
        return fn

    return deco


@step("queries.build", "clipcurate queries build")
def queries_build(ws, dumps, pageviews=(), wordnet="auto", **options):
    stats = queries.build_queries(ws, dumps=list(dumps), pageviews=list(pageviews), wordnet=wordnet, **options)
    return {"queries": stats.get("size"),
            "by_source": {s: v.get("in_list") for s, v in stats.get("sources", {}).items()}}


@step("queries.match", "clipcurate queries match")
def queries_match(ws, input, **options):
    stats = queries.match_candidates(ws, input, **options)
    return {k: stats[k] for k in ("rows", "matched", "unmatched", "kept", "keep_rate") if k in stats}


@step("download", "clipcurate download")
def download(ws, input=None, serve=None, *, cfg: Config, **options):
    """``serve = "world/images"`` (demo only): serve that folder on 127.0.0.1 for the download and
    point the candidates' placeholder host at it; uids stay those of the placeholder URLs."""
    conf = cfg.get("download", options)
    if serve is None:
        res = dl.download(ws, input, cfg=conf)
        return dict(res.counts)
    src = Path(input) if input else ws.path("candidates", "candidates.parquet")
    if not src.exists():
        raise ClipcurateError(f"candidates {str(src)!r} not found: run `clipcurate queries match` first")
    tbl = pq.read_table(src)
    with ImageServer(serve, port=preferred_port(ws)) as base:
        urls = [u.replace(PLACEHOLDER, base) if u else u for u in tbl.column("url").to_pylist()]
        live = ws.path("download-input.parquet")
        with atomic_path(live) as tmp:
            pq.write_table(tbl.set_column(tbl.column_names.index("url"), "url", pa.array(urls, pa.string())), tmp)
        res = dl.download(ws, live, cfg=conf)
    return dict(res.counts)


@step("bench.add", "clipcurate bench add")
def bench_add(ws, name, source, **options):
    meta = bench.add(ws, name, source, **options)
    return {"benchmark": name, "n": meta.get("n")}


@step("embed", "clipcurate embed")
def embed(ws, model="clipcurate-tiny", pretrained="random", detector=None, **options):
    """CLIP embeddings of the pool and the benchmarks; ``detector = "detector/RUN"`` writes that
    copy detector's descriptors instead (``clipcurate embed --detector``)."""
    tag = em.run(ws, model=model, pretrained=pretrained, detector=detector, pool=True, benchmarks=None, **options)
    return {"model_tag": tag}


@step("detector.train", "clipcurate detector train")
def detector_train(ws, run_name="default", **options):
    res = det.train(ws, options, run=run_name)
    return {"steps": res.steps, "loss_first": res.losses[0] if res.losses else None,
            "loss_last": res.losses[-1] if res.losses else None}


@step("overlap", "clipcurate overlap")
def overlap(ws, use_calibration=False, *, cfg: Config, **options):
    """``use_calibration = true``: the rule ``overlap calibrate`` chose must decide overlap
    ([overlap] calibration = "on"; the step's own thresholds then only shape the review band).
    Without it the stage's default applies (calibration = "auto": the rule when it exists)."""
    if use_calibration:
        options = {**options, "calibration": "on"}
    res = ov.run(ws, overrides=options, cfg=cfg)
    return {"model_tag": res.tag, **{k: v for k, v in res.search.items() if isinstance(v, (int, float, str))}}


@step("overlap.calibrate", "clipcurate overlap calibrate")
def overlap_calibrate(ws, *, cfg: Config, **options):
    out = calibrate.run(ws, overrides=options, cfg=cfg)
    return {k: v for k, v in out.items() if isinstance(v, (int, float, str))}


@step("review.auto", "clipcurate review (automatic decisions, demo only)")
def review_auto(ws, rule="agree", *, cfg: Config, **options):
    return auto_review(ws, rule=rule, cfg=cfg, **options)


@step("curate", "clipcurate curate")
def curate(ws, *, cfg: Config, **options):
    """``sets = ["clean", "all"]`` writes the counterfactual's second training set too."""
    conf = cfg.get("curate", options)
    out = {}
    for data in conf["sets"]:
        res = cu.curate(ws, decontam=conf["decontam"], shard_size=conf["shard_size"], data=data)
        out[f"{data}_samples"] = res.samples
        if data == "clean":
            out.update({"samples": res.samples, "shards": len(res.shards),
                        **{k: v for k, v in res.counts.items() if isinstance(v, (int, float))}})
    return out


@step("train", "clipcurate train")
def train(ws, run_name="default", **options):
    res = tr.train(ws, run_name, **options)  # open_clip_train's log goes to its file; one line per epoch here
    losses = [r["loss"] for r in res.losses]
    return {"epochs": res.epochs_done, "checkpoint": str(res.checkpoint),
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}


@step("eval.compare", "clipcurate eval --compare RUN_A RUN_B")
def evaluate_compare(ws, run_a="all", run_b="clean", **options):
    """The counterfactual: both train runs on the same splits, compared sample by sample."""
    res = ev.compare(ws, run_a, run_b, **options)
    return {"report": str(res.folder / "report.html"), "model_a": res.a.tag, "model_b": res.b.tag}


@step("eval", "clipcurate eval")
def evaluate(ws, **options):
    res = ev.evaluate(ws, **options)
    return {"model_tag": res.tag, "report": str(res.folder / "report.md"),
            **{k: v for k, v in res.summary.items() if isinstance(v, (int, float, str))}}
