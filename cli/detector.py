"""`clipcurate detector`: train the App. C copy detector on the pool, list runs, cache image hashes."""

from __future__ import annotations

import json
from enum import Enum
from typing import List, Optional

import typer

from clipcurate.core.console import out
from clipcurate.core.executor import from_config

from clipcurate.cli.context import resolve, workspace
from clipcurate.cli.options import (DeviceOption, ExecutorOption, RayAddressOption, TableOrJson, TableOrJsonOption,
                                    force_option)
from clipcurate.cli.output import echo_table

detector_app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                           help="The copy detector of CLIP App. C and the cheap copy signals (perceptual hashes).")


class Preset(str, Enum):
    tiny = "tiny"
    full = "full"


@detector_app.command("train")
def train(
    ctx: typer.Context,
    run: str = typer.Option("default", "--run", "-r", help="Run name: checkpoints go to detector/RUN/."),
    preset: Optional[Preset] = typer.Option(None, "--preset", help="tiny (CPU, minutes) or full (GPU recipe)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Optimiser steps in total."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=2, help="Pairs per step."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=16, help="Square input size (px)."),
    width: Optional[int] = typer.Option(None, "--width", min=4, help="Channels of the first stage."),
    blocks: Optional[List[int]] = typer.Option(None, "--blocks", min=1, help="Blocks per stage (repeat: --blocks 3 --blocks 4)."),
    dim: Optional[int] = typer.Option(None, "--dim", min=8, help="Descriptor dimension."),
    lr: Optional[float] = typer.Option(None, "--lr", min=0.0, help="Peak learning rate."),
    strength: Optional[float] = typer.Option(None, "--strength", help="App. C augmentation strength in (0, 1]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for init, batches and augmentations."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Batch-preparing worker processes."),
    device: DeviceOption = None,
    force: force_option("Delete the run and train from scratch.") = False,
):
    """Train the App. C copy detector on the pool's images (resumes an unfinished run).

    \b
    Example:  clipcurate detector train --run tiny --preset tiny --steps 300
    """
    from clipcurate import detector  # on use, not at start-up: see cli/__init__.py

    ws, config = resolve(ctx, must_exist=True)
    opts = {"preset": preset.value if preset else None, "steps": steps, "batch_size": batch_size,
            "image_size": image_size, "width": width, "blocks": list(blocks) if blocks else None, "dim": dim,
            "lr": lr, "strength": strength, "seed": seed, "workers": workers, "device": device}
    cfg = config.get("detector", opts)
    result = detector.train(ws, cfg, run=run, force=force)
    first = sum(result.losses[:10]) / max(1, len(result.losses[:10]))
    last = sum(result.losses[-10:]) / max(1, len(result.losses[-10:]))
    out(json.dumps({"run": run, "steps": result.steps, "loss_first": round(first, 4), "loss_last": round(last, 4),
                    "skipped_images": result.skipped_images,
                    "detector": str(result.run_dir / "detector.pt") if result.run_dir else None}))


@detector_app.command("info")
def info(ctx: typer.Context, fmt: TableOrJsonOption = TableOrJson.table):
    """List the detector runs in the workspace: state, steps, loss, model file.

    \b
    Example:  clipcurate detector info --format json
    """
    from clipcurate import detector  # on use, not at start-up: see cli/__init__.py

    ws = workspace(ctx, must_exist=True)
    rows = detector.runs(ws)
    if fmt == TableOrJson.json:
        for r in rows:
            out(json.dumps(r))
        return
    cols = ["run", "state", "steps", "steps_total", "first_loss", "last_loss", "path"]
    echo_table(cols, [[r[c] for c in cols] for r in rows], "table")


@detector_app.command("hashes")
def hashes(ctx: typer.Context, force: force_option("Recompute every hash.") = False,
           executor: ExecutorOption = None, ray_address: RayAddressOption = None):
    """Compute pHash and dHash once per pool and benchmark image (cached in hashes/).

    \b
    Example:  clipcurate detector hashes
    """
    from clipcurate.overlap import compute_hashes  # on use, not at start-up: see cli/__init__.py

    ws, cfg = resolve(ctx, must_exist=True)
    counts = compute_hashes(ws, force=force, executor=from_config(cfg, executor, ray_address))
    out(json.dumps({k: v for k, v in counts.items() if not k.startswith("source_")}))


def register(app: typer.Typer) -> None:
    app.add_typer(detector_app, name="detector")
