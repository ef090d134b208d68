"""`clipcurate eval`: parse options, call clipcurate.eval.stage."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import typer

from clipcurate.core.console import log

from clipcurate.cli.context import resolve
from clipcurate.cli.options import (BatchSizeOption, BenchOption, DecodeWorkersOption, DeviceOption, Format,
                                    FormatOption, PrecisionOption, force_option)
from clipcurate.cli.output import echo_table

COLUMNS = ["benchmark", "kind", "n", "n_overlap", "overlap_pct", "acc_all", "acc_clean", "acc_overlap",
           "all_minus_clean", "p_value", "ci_low", "ci_high", "bonferroni_m", "significant"]
COMPARE_COLUMNS = ["benchmark", "split", "n", "acc_a", "acc_b", "diff", "diff_low", "diff_high", "p_value",
                   "significant", "amc_a", "amc_b"]


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
    compare: Optional[Tuple[str, str]] = typer.Option(
        None, "--compare", metavar="RUN_A RUN_B",
        help="Evaluate two train runs (e.g. all clean) on the same splits and compare them sample by sample."),
    force: force_option("Re-embed the benchmarks even when embeddings exist.") = False,
    fmt: FormatOption = Format.table,
):
    """Zero-shot and retrieval evaluation with the CLIP §5 Overlap/Clean table and report.

    \b
    Example:  clipcurate -w ./workspace eval --checkpoint train/default/checkpoints/epoch_3.pt
    Counterfactual:  clipcurate -w ./workspace eval --compare all clean
    """
    from clipcurate.eval import compare as run_compare  # on use, not at start-up: see cli/__init__.py
    from clipcurate.eval import evaluate  # on use, not at start-up: see cli/__init__.py

    ws, config = resolve(ctx, must_exist=True)
    cfg = config.get("eval", {
        "model": model, "pretrained": pretrained, "device": device, "precision": precision,
        "batch_size": batch_size, "workers": workers, "alpha": alpha,
        "benchmarks": list(bench) if bench else None})
    if compare and compare[0]:
        if model or pretrained or checkpoint or run:
            raise typer.BadParameter("--compare takes two train runs; drop --model/--pretrained/--checkpoint/--run")
        res = run_compare(ws, compare[0], compare[1], benchmarks=cfg["benchmarks"] or None, device=cfg["device"],
                          precision=cfg["precision"], batch_size=cfg["batch_size"], workers=cfg["workers"],
                          alpha=cfg["alpha"], force=force)
        echo_table(COMPARE_COLUMNS, [[_cell(r[c], fmt) for c in COMPARE_COLUMNS] for r in res.rows], fmt.value,
                   title=f"{compare[0]} vs {compare[1]}: the same samples")
        log(f"report: {res.folder / 'report.html'}")
        return
    res = evaluate(ws, model=cfg["model"] or None, pretrained=cfg["pretrained"] or None, checkpoint=checkpoint,
                   run=run, benchmarks=cfg["benchmarks"] or None, device=cfg["device"],
                   precision=cfg["precision"], batch_size=cfg["batch_size"], workers=cfg["workers"],
                   alpha=cfg["alpha"], force=force)

    echo_table(COLUMNS, [[_cell(r[c], fmt) for c in COLUMNS] for r in res.rows], fmt.value,
               title=f"{res.tag}: median overlap {res.summary['median_overlap_pct']:.2f}%, "
                     f"mean {res.summary['mean_overlap_pct']:.2f}%")
    log(f"report: {res.folder / 'report.html'} (and report.md)")


def _cell(v, fmt: Format):
    if isinstance(v, float):
        return None if math.isnan(v) else (float(f"{v:.4g}") if fmt != Format.table else f"{v:.4g}")
    return v


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_)
