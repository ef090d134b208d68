"""`clipcurate embed`: open_clip embeddings of the pool and the benchmarks (clipcurate.embed)."""

from __future__ import annotations

from typing import Optional

import typer

from clipcurate.core.console import out
from clipcurate.core.executor import from_config

from clipcurate.cli.context import resolve
from clipcurate.cli.options import (BatchSizeOption, BenchOption, DecodeWorkersOption, DeviceOption, ExecutorOption,
                                    PrecisionOption, RayAddressOption, force_option)


def embed(
    ctx: typer.Context,
    model: Optional[str] = typer.Option(None, "--model", "-m", help="open_clip architecture or hf-hub:org/name [ViT-B-32]."),
    pretrained: Optional[str] = typer.Option(
        None, "--pretrained", "-p", help="Hub tag, checkpoint file (train's epoch_N.pt) or random [laion2b_s34b_b79k]."),
    device: DeviceOption = None,
    precision: PrecisionOption = None,
    batch_size: BatchSizeOption = None,
    workers: DecodeWorkersOption = None,
    bench: BenchOption = None,
    pool: Optional[bool] = typer.Option(
        None, "--pool/--no-pool", help="Embed the pool shards [yes when pool/shards has tars or no benchmark exists]."),
    benchmarks: bool = typer.Option(True, "--benchmarks/--no-benchmarks", help="Embed the benchmarks."),
    detector: Optional[str] = typer.Option(
        None, "--detector", help="Write copy-detector descriptors instead (detector.pt or its run folder)."),
    decode: Optional[str] = typer.Option(
        None, "--decode", help="pil (exact transform) or torch (torchvision.io on the device, nvJPEG on CUDA) [pil]."),
    force: force_option("Redo shards and benchmarks that are already done.") = False,
    executor: ExecutorOption = None,
    ray_address: RayAddressOption = None,
):
    """Embed pool shards and benchmarks with an open_clip model (resumable per shard).

    \b
    Example:  clipcurate embed --model ViT-B-32 --pretrained laion2b_s34b_b79k --device cuda
    """
    from clipcurate import embed as emb  # on use, not at start-up: see cli/__init__.py

    ws, config = resolve(ctx, must_exist=True)
    cfg = config.get("embed", {
        "model": model, "pretrained": pretrained, "device": device, "precision": precision,
        "batch_size": batch_size, "workers": workers, "benchmarks": list(bench) if bench else None,
        "decode": decode})
    names = (cfg["benchmarks"] or None) if benchmarks else []
    if pool is False and names == []:
        raise typer.BadParameter("--no-pool with --no-benchmarks leaves nothing to embed")
    ex = from_config(config, executor, ray_address)  # --executor ray: pool shards on Ray actors
    tag = emb.run(ws, model=cfg["model"], pretrained=cfg["pretrained"], detector=detector, pool=pool, benchmarks=names,
                  device=cfg["device"], precision=cfg["precision"], batch_size=cfg["batch_size"],
                  workers=cfg["workers"], decode=cfg["decode"], force=force, executor=ex)
    out(tag)


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
