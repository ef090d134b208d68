"""`clipcurate train`: parse options, call clipcurate.train.stage."""

from __future__ import annotations

from typing import List, Optional

import typer

from clipcurate.core.console import out

from clipcurate.cli.context import globals_of, resolve
from clipcurate.cli.options import DeviceOption, force_option


def train(
    ctx: typer.Context,
    name: str = typer.Option("default", "--name", help="Run name: checkpoints and logs go to train/NAME/."),
    model: Optional[str] = typer.Option(None, "--model", help="open_clip architecture [config: clipcurate-tiny]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size per device [config: 64]."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs (checkpoints when --samples is set) [config: 1]."),
    samples: Optional[int] = typer.Option(
        None, "--samples", help="Total samples seen, drawn with replacement (0: epochs x curated size) [config: 0]."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate [config: 5e-4]."),
    wd: Optional[float] = typer.Option(None, "--wd", help="Weight decay [config: 0.2]."),
    warmup: Optional[int] = typer.Option(None, "--warmup", help="Warmup steps [config: 10]."),
    precision: Optional[str] = typer.Option(
        None, "--precision", help="auto (amp on CUDA, fp32 on CPU), amp, amp_bf16, fp32 [config: auto]."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Dataloader workers [config: 2]."),
    device: DeviceOption = None,
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed [config: 0]."),
    data: Optional[str] = typer.Option(
        None, "--data", help="Training set: clean (curate/shards) or all (curate/all/shards, the pool as downloaded: "
                             "`clipcurate curate --set all`) [config: clean]."),
    threads: Optional[int] = typer.Option(
        None, "--threads", help="torch threads, pinned for reproducibility (0: CPU count, at most 8) [config: 0]."),
    save_frequency: Optional[int] = typer.Option(None, "--save-frequency", help="Save epoch_N.pt every N epochs [config: 1]."),
    log_every: Optional[int] = typer.Option(None, "--log-every", help="Log the loss every N steps [config: 10]."),
    force: force_option("Delete train/NAME/ and start over.") = False,
    extra: Optional[List[str]] = typer.Option(
        None, "--open-clip-arg", help="Extra argument passed as is to open_clip_train (repeatable)."),
):
    """Train a CLIP model with open_clip_train on the curated shards (resumes train/NAME/).

    \b
    Example:  clipcurate -w ./workspace train --name tiny --epochs 3 --batch-size 32
    """
    from clipcurate.train import train as run  # on use, not at start-up: see cli/__init__.py

    ws, cfg = resolve(ctx, must_exist=True)
    opts = cfg.get("train", {
        "model": model, "batch_size": batch_size, "epochs": epochs, "samples": samples, "lr": lr, "wd": wd,
        "warmup": warmup, "precision": precision, "workers": workers, "device": device, "seed": seed,
        "data": data, "threads": threads,
        "save_frequency": save_frequency, "log_every": log_every})
    res = run(ws, name, force=force, quiet=globals_of(ctx).quiet, extra_args=extra, **opts)
    first = f"{res.losses[0]['loss']:.4f}" if res.losses else ""
    last = f"{res.losses[-1]['loss']:.4f}" if res.losses else ""
    out(f"run: {res.run_dir}\ncheckpoint: {res.checkpoint}\nepochs: {res.epochs_done}\n"
        f"loss_first: {first}\nloss_last: {last}")


def register(app: typer.Typer) -> None:
    app.command("train")(train)
