"""`clipcurate overlap`: pool ↔ benchmark search, splits, decontamination list, calibration."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer

from clipcurate.core.console import log
from clipcurate.core.executor import from_config

from clipcurate.cli.context import resolve
from clipcurate.cli.options import DeviceOption, ExecutorOption, Format, FormatOption, RayAddressOption, force_option
from clipcurate.cli.output import echo_table


class Backend(str, Enum):
    auto = "auto"
    numpy = "numpy"
    torch = "torch"
    faiss = "faiss"


# The search options, shared by `clipcurate overlap` and `clipcurate overlap run`
ModelTagOption = Annotated[Optional[str], typer.Option(
    "--model-tag", help="Embeddings to search (embed/TAG); default: the only/first CLIP tag.")]
KOption = Annotated[Optional[int], typer.Option("--k", help="Top-k neighbours kept per benchmark sample [config: 10].")]
HighOption = Annotated[Optional[float], typer.Option("--high", help="CLIP cosine for an automatic overlap [config: 0.95].")]
LowOption = Annotated[Optional[float], typer.Option(
    "--low", help="CLIP cosine for the review band and search floor [config: 0.85].")]
BackendOption = Annotated[Optional[Backend], typer.Option(
    "--backend", help="Search backend [config: auto = torch on CUDA, else numpy].")]
SearchForce = force_option("Search again even if a finished search matches.")

COLUMNS = ["benchmark", "n", "n_overlap", "n_clean", "n_unreviewed", "pending_pairs", "overlap_pct", "review_pairs",
           "degenerate_pairs", "class_p"]

overlap_app = typer.Typer(
    invoke_without_command=True, no_args_is_help=False, rich_markup_mode=None)


def _run(ctx: typer.Context, model_tag, k, high, low, backend, force, fmt, executor=None, ray_address=None):
    from clipcurate import overlap  # on use, not at start-up: see cli/__init__.py

    ws, cfg = resolve(ctx, must_exist=True)
    overrides = {"model_tag": model_tag, "k": k, "high": high, "low": low,
                 "backend": backend.value if backend else None}
    res = overlap.run(ws, overrides, force=force, cfg=cfg, executor=from_config(cfg, executor, ray_address))
    s = res.search
    rate = s["pairs_scored"] / s["seconds"] if s["seconds"] > 0 else 0.0
    log(f"overlap: searched {s['shards_searched']}/{s['shards_total']} pool shard(s) with {s['backend']}"
        + (f", {rate:.3g} pairs/s" if s["shards_searched"] else " (reused the previous search)"))
    log("overlap: recomputed the pairs' signals and decisions, the review queue, splits, decontamination list and "
        "diagnostics (`clipcurate overlap refresh` redoes all but the search and the signals)")
    echo_table(COLUMNS, [[r[c] for c in COLUMNS] for r in res.per_benchmark], fmt.value)


@overlap_app.callback()
def overlap_callback(
    ctx: typer.Context,
    model_tag: ModelTagOption = None,
    k: KOption = None,
    high: HighOption = None,
    low: LowOption = None,
    backend: BackendOption = None,
    force: SearchForce = False,
    fmt: FormatOption = Format.table,
    executor: ExecutorOption = None,
    ray_address: RayAddressOption = None,
):
    """Search the pool for copies of benchmark samples; write pairs, splits, decontam, review queue.

    \b
    Example:  clipcurate overlap --k 10 --high 0.95 --low 0.85
    """
    if ctx.invoked_subcommand is None:
        _run(ctx, model_tag, k, high, low, backend, force, fmt, executor, ray_address)


@overlap_app.command("run")
def run_cmd(
    ctx: typer.Context,
    model_tag: ModelTagOption = None,
    k: KOption = None,
    high: HighOption = None,
    low: LowOption = None,
    backend: BackendOption = None,
    force: SearchForce = False,
    fmt: FormatOption = Format.table,
    executor: ExecutorOption = None,
    ray_address: RayAddressOption = None,
):
    """Same as `clipcurate overlap`: search, decide, split, diagnose.

    \b
    Example:  clipcurate overlap run --model-tag ViT-B-32__laion2b_s34b_b79k --force
    """
    _run(ctx, model_tag, k, high, low, backend, force, fmt, executor, ray_address)


@overlap_app.command("refresh")
def refresh_cmd(ctx: typer.Context, fmt: FormatOption = Format.table):
    """Re-apply the current thresholds and review decisions to the stored pairs (no search).

    Refuses, naming `clipcurate overlap`, when the settings need pairs the search never kept
    (a lower --low than the search floor, another k or model).

    \b
    Example:  clipcurate overlap refresh
    """
    from clipcurate import overlap  # on use, not at start-up: see cli/__init__.py

    ws, cfg = resolve(ctx, must_exist=True)
    res = overlap.refresh(ws, overlap.options(ws, cfg=cfg))
    log("overlap refresh: reused " + "; ".join(res.reused))
    log("overlap refresh: recomputed " + "; ".join(res.recomputed))
    echo_table(COLUMNS, [[r[c] for c in COLUMNS] for r in res.per_benchmark], fmt.value)


@overlap_app.command("calibrate")
def calibrate_cmd(
    ctx: typer.Context,
    model_tag: Optional[str] = typer.Option(None, "--model-tag", help="Model to calibrate (embed/TAG/model.json)."),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="Benchmark whose images are planted [config: first]."),
    copies: Optional[int] = typer.Option(None, "--copies", help="Planted copies, half App. C, half everyday edits; half choose, half measure [config: 200]."),
    distractors: Optional[int] = typer.Option(None, "--distractors", help="Pool images mixed in [config: 256]."),
    target_precision: Optional[float] = typer.Option(None, "--target-precision", help="Precision the chosen threshold must reach [config: 0.95]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the copies and the sampling [config: 0]."),
    device: DeviceOption = None,
):
    """Plant copies of benchmark images among pool images; choose the rule on half, measure it on the other half.

    \b
    Example:  clipcurate overlap calibrate --benchmark cifar10 --copies 64 --target-precision 0.95
    """
    from clipcurate.overlap import calibrate  # on use, not at start-up: see cli/__init__.py

    ws, cfg = resolve(ctx, must_exist=True)
    res = calibrate.run(ws, {"model_tag": model_tag, "benchmark": benchmark, "copies": copies,
                             "distractors": distractors, "target_precision": target_precision, "seed": seed,
                             "device": device}, cfg=cfg)
    def ci(x):
        return f"[{x[0]:.3f}, {x[1]:.3f}]" if x else ""

    rows = [[name, c.get("threshold"), c.get("precision"), ci(c.get("precision_ci")), c.get("recall"),
             ci(c.get("recall_ci")), c.get("note", "")] for name, c in res["chosen"].items()]
    c = res["combined"]
    rows.append(["combined", c["rule"], c["precision"], ci(c["precision_ci"]), c["recall"], ci(c["recall_ci"]), ""])
    log(f"calibrate: figures measured on the held-apart half ({res['held_apart']['copies']} copies); "
        f"{res['verdict']}")
    if res.get("decisions_note"):
        log(f"calibrate: {res['decisions_note']}")
    log(f"calibrate: {res['note']}")
    qe = res.get("query_expansion")
    if qe and qe["found_copies"]:
        log(f"calibrate: query expansion: the {qe['found_copies']} held-apart copies the rule found took "
            f"{qe['taken']} of the other {qe['pairs']} pairs with the same rule: {qe['true']} copies of the same "
            f"image, {qe['false']} wrong")
    echo_table(["signal", "threshold", "precision", "precision_95ci", "recall", "recall_95ci", "note"], rows, "table")


def register(app: typer.Typer) -> None:
    app.add_typer(overlap_app, name="overlap")
