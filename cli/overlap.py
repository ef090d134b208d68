"""`clipcurate overlap`: pool ↔ benchmark search, splits, decontamination list, calibration."""

from __future__ import annotations

from enum import Enum
from typing import Optional

import typer

from clipcurate.core.executor import EXECUTOR_HELP, RAY_ADDRESS_HELP, Kind

from clipcurate.cli.core import Format
from clipcurate.cli.state import state


class Backend(str, Enum):
    auto = "auto"
    numpy = "numpy"
    torch = "torch"
    faiss = "faiss"


overlap_app = typer.Typer(
    invoke_without_command=True, no_args_is_help=False, rich_markup_mode=None)


def _run(model_tag, k, high, low, backend, force, fmt, executor=None, ray_address=None):
    from clipcurate.overlap import stage as overlap

    from clipcurate.cli.app import echo_table

    ws = state.ws(must_exist=True)
    cfg = state.config(ws)
    overrides = {"model_tag": model_tag, "k": k, "high": high, "low": low,
                 "backend": backend.value if backend else None}
    from clipcurate.core.executor import from_config

    res = overlap.run(ws, overrides, force=force, cfg=cfg, executor=from_config(cfg, executor, ray_address))
    s = res.search
    from clipcurate.core.console import log

    rate = s["pairs_scored"] / s["seconds"] if s["seconds"] > 0 else 0.0
    log(f"overlap: searched {s['shards_searched']}/{s['shards_total']} pool shard(s) with {s['backend']}"
        + (f", {rate:.3g} pairs/s" if s["shards_searched"] else " (reused the previous search)"))
    cols = ["benchmark", "n", "n_overlap", "n_clean", "overlap_pct", "review_pairs", "degenerate_pairs", "class_p"]
    echo_table(cols, [[r[c] for c in cols] for r in res.per_benchmark], fmt.value)


def _options_doc():
    return dict(
        model_tag=typer.Option(None, "--model-tag", help="Embeddings to search (embed/TAG); default: the only/first CLIP tag."),
        k=typer.Option(None, "--k", help="Top-k neighbours kept per benchmark sample [config: 10]."),
        high=typer.Option(None, "--high", help="CLIP cosine for an automatic overlap [config: 0.95]."),
        low=typer.Option(None, "--low", help="CLIP cosine for the review band and search floor [config: 0.85]."),
        backend=typer.Option(None, "--backend", help="Search backend [config: auto = torch on CUDA, else numpy]."),
        force=typer.Option(False, "--force", help="Search again even if a finished search matches."),
        executor=typer.Option(None, "--executor", help=EXECUTOR_HELP),
        ray_address=typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
    )


_O = _options_doc()


@overlap_app.callback()
def overlap_callback(
    ctx: typer.Context,
    model_tag: Optional[str] = _O["model_tag"],
    k: Optional[int] = _O["k"],
    high: Optional[float] = _O["high"],
    low: Optional[float] = _O["low"],
    backend: Optional[Backend] = _O["backend"],
    force: bool = _O["force"],
    fmt: Format = typer.Option(Format.table, "--format", "-f", help="table, csv or json."),
    executor: Optional[Kind] = _O["executor"],
    ray_address: Optional[str] = _O["ray_address"],
):
    """Search the pool for copies of benchmark samples; write pairs, splits, decontam, review queue.

    \b
    Example:  clipcurate overlap --k 10 --high 0.95 --low 0.85
    """
    if ctx.invoked_subcommand is None:
        _run(model_tag, k, high, low, backend, force, fmt, executor, ray_address)


@overlap_app.command("run")
def run_cmd(
    model_tag: Optional[str] = _O["model_tag"],
    k: Optional[int] = _O["k"],
    high: Optional[float] = _O["high"],
    low: Optional[float] = _O["low"],
    backend: Optional[Backend] = _O["backend"],
    force: bool = _O["force"],
    fmt: Format = typer.Option(Format.table, "--format", "-f", help="table, csv or json."),
    executor: Optional[Kind] = _O["executor"],
    ray_address: Optional[str] = _O["ray_address"],
):
    """Same as `clipcurate overlap`: search, decide, split, diagnose.

    \b
    Example:  clipcurate overlap run --model-tag ViT-B-32__laion2b_s34b_b79k --force
    """
    _run(model_tag, k, high, low, backend, force, fmt, executor, ray_address)


@overlap_app.command("refresh")
def refresh_cmd(fmt: Format = typer.Option(Format.table, "--format", "-f", help="table, csv or json.")):
    """Recompute splits and the decontam list from pairs + review decisions (no search).

    \b
    Example:  clipcurate overlap refresh
    """
    from clipcurate.overlap import stage as overlap

    from clipcurate.cli.app import echo_table

    ws = state.ws(must_exist=True)
    per = overlap.refresh_splits(ws, overlap.options(ws, cfg=state.config(ws)))
    cols = ["benchmark", "n", "n_overlap", "n_clean", "overlap_pct", "review_pairs", "degenerate_pairs", "class_p"]
    echo_table(cols, [[r[c] for c in cols] for r in per], fmt.value)


@overlap_app.command("calibrate")
def calibrate_cmd(
    model_tag: Optional[str] = typer.Option(None, "--model-tag", help="Model to calibrate (embed/TAG/model.json)."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="Benchmark whose images are planted [config: first]."),
    copies: Optional[int] = typer.Option(None, "--copies", help="Planted App. C copies [config: 64]."),
    distractors: Optional[int] = typer.Option(None, "--distractors", help="Pool images mixed in [config: 256]."),
    target_precision: Optional[float] = typer.Option(None, "--target-precision", help="Precision the chosen threshold must reach [config: 0.95]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the copies and the sampling [config: 0]."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu or cuda [config: auto]."),
):
    """Plant App-C copies of benchmark images among pool images; precision/recall vs threshold.

    \b
    Example:  clipcurate overlap calibrate --benchmark cifar10 --copies 64 --target-precision 0.95
    """
    from clipcurate.overlap import calibrate

    from clipcurate.cli.app import echo_table

    ws = state.ws(must_exist=True)
    cfg = state.config(ws)
    res = calibrate.run(ws, {"model_tag": model_tag, "benchmark": benchmark, "copies": copies,
                             "distractors": distractors, "target_precision": target_precision, "seed": seed,
                             "device": device}, cfg=cfg)
    rows = [[name, c.get("threshold"), c.get("precision"), c.get("recall"), c.get("note", "")]
            for name, c in res["chosen"].items()]
    echo_table(["signal", "threshold", "precision", "recall", "note"], rows, "table")


def register(app: typer.Typer) -> None:
    app.add_typer(overlap_app, name="overlap")
