"""`clipcurate eval`: parse options, call clipcurate.eval.stage."""

from __future__ import annotations

import math
from typing import Optional

import typer

from clipcurate.core.console import log

from clipcurate.cli.context import resolve
from clipcurate.cli.options import (BatchSizeOption, BenchOption, DecodeWorkersOption, DeviceOption, Format,
                                    FormatOption, PrecisionOption, force_option)
from clipcurate.cli.output import echo_table

COLUMNS = ["benchmark", "kind", "n", "n_overlap", "overlap_pct", "acc_all", "acc_clean", "acc_overlap",
           "all_minus_clean", "p_value", "ci_low", "ci_high", "significant"]


def eval_(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="open_clip architecture [the checkpoint's]."),
    pretrained: Optional[str] = typer.Option(
        None, "--pretrained", "-p", help="Hub tag, weights file or random (with --model) [latest train/ checkpoint]."),
    checkpoint: Optional[str] = typer.Option(
        None, "--checkpoint", help="A train checkpoint, e.g. train/RUN/checkpoints/epoch_N.pt [the latest]."),
    run: Optional[str] = typer.Option(None, "--run", help="Use the latest checkpoint of this train run."),
    bench: BenchOption = None,
    device: DeviceOption = None,
    precision: PrecisionOption = None,
    batch_size: BatchSizeOption = None,
    workers: DecodeWorkersOption = None,
    alpha: Optional[float] = typer.Option(None, "--alpha", help="Family-wise level for Bonferroni [0.05]."),
    force: force_option("Re-embed the benchmarks even when embeddings exist.") = False,
    fmt: FormatOption = Format.table,
):
    """Zero-shot and retrieval evaluation with the CLIP §5 Overlap/Clean table and report.

    \b
    Example:  clipcurate -w ./workspace eval --checkpoint train/default/checkpoints/epoch_3.pt
    """
    from clipcurate.eval import evaluate  # on use, not at start-up: see cli/__init__.py

    ws, config = resolve(ctx, must_exist=True)
    cfg = config.get("eval", {
        "model": model, "pretrained": pretrained, "device": device, "precision": precision,
        "batch_size": batch_size, "workers": workers, "alpha": alpha,
        "benchmarks": list(bench) if bench else None})
    res = evaluate(ws, model=cfg["model"] or None, pretrained=cfg["pretrained"] or None, checkpoint=checkpoint,
                   run=run, benchmarks=cfg["benchmarks"] or None, device=cfg["device"],
                   precision=cfg["precision"], batch_size=cfg["batch_size"], workers=cfg["workers"],
                   alpha=cfg["alpha"], force=force)

    def cell(v):
        if isinstance(v, float):
            return None if math.isnan(v) else (float(f"{v:.4g}") if fmt != Format.table else f"{v:.4g}")
        return v

    echo_table(COLUMNS, [[cell(r[c]) for c in COLUMNS] for r in res.rows], fmt.value,
               title=f"{res.tag}: median overlap {res.summary['median_overlap_pct']:.2f}%, "
                     f"mean {res.summary['mean_overlap_pct']:.2f}%")
    log(f"report: {res.folder / 'report.md'}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_)
