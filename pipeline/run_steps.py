"""The step kinds a pipeline file can name: thin adapters from TOML parameters to each stage's
Python API (the same functions the CLI calls). Each returns a small summary dict for the run log."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from .config import Config
from .errors import ClipcurateError
from .run import step
from .workspace import Workspace


def _cfg(ws: Workspace) -> Config:
    return Config.load(ws.root)


@step("queries.build", "clipcurate queries build")
def queries_build(ws, dumps, pageviews=(), wordnet="auto", **options):
    from . import queries

    stats = queries.build(ws, dumps=list(dumps), pageviews=list(pageviews), wordnet=wordnet, **options)
    return {"queries": stats.get("size"),
            "by_source": {s: v.get("in_list") for s, v in stats.get("sources", {}).items()}}


@step("queries.match", "clipcurate queries match")
def queries_match(ws, input, **options):
    from . import queries

    stats = queries.match(ws, input, **options)
    return {k: stats[k] for k in ("rows", "matched", "unmatched", "kept", "keep_rate") if k in stats}


@step("download", "clipcurate download")
def download(ws, input=None, serve=None, **options):
    """``serve = "world/images"`` (demo only): serve that folder on 127.0.0.1 for the download and
    point the candidates' placeholder host at it; uids stay those of the placeholder URLs."""
    from . import download as dl

    conf = _cfg(ws).get("download", options)
    if serve is None:
        res = dl.download(ws, input, cfg=conf)
        return dict(res.counts)
    from .world import PLACEHOLDER, ImageServer, preferred_port

    src = Path(input) if input else ws.path("candidates", "candidates.parquet")
    if not src.exists():
        raise ClipcurateError(f"candidates {str(src)!r} not found: run `clipcurate queries match` first")
    tbl = pq.read_table(src)
    with ImageServer(serve, port=preferred_port(ws)) as base:
        urls = [u.replace(PLACEHOLDER, base) if u else u for u in tbl.column("url").to_pylist()]
        live = ws.path("download-input.parquet")
        import pyarrow as pa

        from .io import atomic_path

        with atomic_path(live) as tmp:
            pq.write_table(tbl.set_column(tbl.column_names.index("url"), "url", pa.array(urls, pa.string())), tmp)
        res = dl.download(ws, live, cfg=conf)
    return dict(res.counts)


@step("bench.add", "clipcurate bench add")
def bench_add(ws, name, source, **options):
    from . import bench

    meta = bench.add(ws, name, source, **options)
    return {"benchmark": name, "n": meta.get("n")}


def _spec(model: str, pretrained: str | None):
    from .models import ModelSpec

    return ModelSpec(model, None if pretrained in (None, "", "random") else pretrained)


@step("embed", "clipcurate embed")
def embed(ws, model="clipcurate-tiny", pretrained="random", **options):
    from . import embed as em

    spec = _spec(model, pretrained)
    tag = em.embed_pool(ws, spec, **options)
    em.embed_benchmarks(ws, spec, **options)
    return {"model_tag": tag}


@step("overlap", "clipcurate overlap")
def overlap(ws, use_calibration=False, **options):
    """``use_calibration = true``: take the thresholds ``overlap calibrate`` chose (its
    thresholds.json) unless the step sets them itself."""
    from . import overlap as ov

    if use_calibration:
        options = {**calibrated_thresholds(ws), **options}
    res = ov.run(ws, overrides=options)
    return {"model_tag": res.tag, **{k: v for k, v in res.search.items() if isinstance(v, (int, float, str))}}


def calibrated_thresholds(ws: Workspace) -> dict:
    from .io import read_json

    p = ws.path("overlap", "calibration", "thresholds.json")
    if not p.exists():
        raise ClipcurateError(f"{p} not found: run `clipcurate overlap calibrate` first (or drop use_calibration)")
    return dict(read_json(p).get("overlap", {}))


@step("overlap.calibrate", "clipcurate overlap calibrate")
def overlap_calibrate(ws, **options):
    from . import calibrate

    out = calibrate.run(ws, overrides=options)
    return {k: v for k, v in out.items() if isinstance(v, (int, float, str))}


@step("review.auto", "clipcurate review (automatic decisions, demo only)")
def review_auto(ws, rule="midpoint", **options):
    from .demo import auto_review

    return auto_review(ws, rule=rule, **options)


@step("curate", "clipcurate curate")
def curate(ws, **options):
    from . import curate as cu

    conf = _cfg(ws).get("curate", options)
    res = cu.curate(ws, decontam=conf["decontam"], shard_size=conf["shard_size"])
    return {"samples": res.samples, "shards": len(res.shards),
            **{k: v for k, v in res.counts.items() if isinstance(v, (int, float))}}


@step("train", "clipcurate train")
def train(ws, run_name="default", **options):
    from . import train as tr

    res = tr.train(ws, run_name, quiet=True, **options)
    losses = [r["loss"] for r in res.losses]
    return {"epochs": res.epochs_done, "checkpoint": str(res.checkpoint),
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}


@step("eval", "clipcurate eval")
def evaluate(ws, **options):
    from . import eval as ev

    res = ev.evaluate(ws, **options)
    return {"model_tag": res.tag, "report": str(res.folder / "report.md"),
            **{k: v for k, v in res.summary.items() if isinstance(v, (int, float, str))}}

