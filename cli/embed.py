"""`clipcurate embed`: open_clip embeddings of the pool and the benchmarks (clipcurate.embed)."""

from __future__ import annotations

from typing import List, Optional

import typer

from clipcurate.core.executor import EXECUTOR_HELP, RAY_ADDRESS_HELP, Kind

from clipcurate.cli.state import state


def embed(
    model: Optional[str] = typer.Option(None, "--model", "-m", help="open_clip architecture or hf-hub:org/name [ViT-B-32]."),
    pretrained: Optional[str] = typer.Option(
        None, "--pretrained", "-p", help="Hub tag, checkpoint file (train's epoch_N.pt) or random [laion2b_s34b_b79k]."),
    device: Optional[str] = typer.Option(None, "--device", help="auto, cpu, cuda or cuda:N [auto]."),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto, fp32, bf16 or fp16 [auto: bf16 on CUDA]."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Images per forward pass [256]."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Decoding worker processes [-1: cores - 1]."),
    bench: Optional[List[str]] = typer.Option(None, "--bench", help="Only this benchmark (repeatable) [all]."),
    pool: Optional[bool] = typer.Option(
        None, "--pool/--no-pool", help="Embed the pool shards [yes when pool/shards has tars or no benchmark exists]."),
    benchmarks: bool = typer.Option(True, "--benchmarks/--no-benchmarks", help="Embed the benchmarks."),
    detector: Optional[str] = typer.Option(
        None, "--detector", help="Write copy-detector descriptors instead (detector.pt or its run folder)."),
    decode: Optional[str] = typer.Option(
        None, "--decode", help="pil (exact transform) or torch (torchvision.io on the device, nvJPEG on CUDA) [pil]."),
    force: bool = typer.Option(False, "--force", help="Redo shards and benchmarks that are already done."),
    executor: Optional[Kind] = typer.Option(None, "--executor", help=EXECUTOR_HELP),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help=RAY_ADDRESS_HELP),
):
    """Embed pool shards and benchmarks with an open_clip model (resumable per shard).

    \b
    Example:  clipcurate embed --model ViT-B-32 --pretrained laion2b_s34b_b79k --device cuda
    """
    from clipcurate import embed as emb
    from clipcurate.core.console import out
    from clipcurate.core.executor import from_config

    ws = state.ws(must_exist=True)
    cfg = state.config(ws).get("embed", {
        "model": model, "pretrained": pretrained, "device": device, "precision": precision,
        "batch_size": batch_size, "workers": workers, "benchmarks": list(bench) if bench else None,
        "decode": decode})
    names = (cfg["benchmarks"] or None) if benchmarks else []
    if pool is False and names == []:
        raise typer.BadParameter("--no-pool with --no-benchmarks leaves nothing to embed")
    ex = from_config(state.config(ws), executor, ray_address)  # --executor ray: pool shards on Ray actors
    tag = emb.run(ws, model=cfg["model"], pretrained=cfg["pretrained"], detector=detector, pool=pool, benchmarks=names,
                  device=cfg["device"], precision=cfg["precision"], batch_size=cfg["batch_size"],
                  workers=cfg["workers"], decode=cfg["decode"], force=force, executor=ex)
    out(tag)


def register(app: typer.Typer) -> None:
    app.command("embed")(embed)
