"""`clipcurate download`: parse options, call clipcurate.download.stage."""

from __future__ import annotations

from typing import List, Optional

import typer

from clipcurate.core.executor import from_config

from clipcurate.cli.context import resolve
from clipcurate.cli.options import ExecutorOption, Format, FormatOption, RayAddressOption, force_option
from clipcurate.cli.output import echo_table


def download(
    ctx: typer.Context,
    input_file: Optional[str] = typer.Option(
        None, "--input", "-i", help="Parquet/CSV/TSV/JSONL of url + caption (default: candidates/candidates.parquet)."),
    url_col: Optional[str] = typer.Option(None, "--url-col", help="Input column with the url [config: url]."),
    caption_col: Optional[str] = typer.Option(None, "--caption-col", help="Input column with the caption [config: caption]."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Side of the stored images in pixels [256]."),
    resize_mode: Optional[str] = typer.Option(
        None, "--resize-mode", help="no, keep_ratio, center_crop, border or keep_ratio_largest [border]."),
    skip_reencode: Optional[bool] = typer.Option(
        None, "--skip-reencode/--reencode", help="Keep a JPEG's own bytes when no resize is needed [reencode]."),
    processes: Optional[int] = typer.Option(None, "--processes", help="img2dataset processes (0 = one per core) [0]."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Concurrent fetches per process [64]."),
    samples_per_shard: Optional[int] = typer.Option(None, "--samples-per-shard", help="Input rows per shard [10000]."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Seconds for a connect or one read [10]."),
    retries: Optional[int] = typer.Option(None, "--retries", help="Retries per url [0]."),
    fetch_deadline: Optional[float] = typer.Option(
        None, "--fetch-deadline", help="Seconds a whole fetch may take (stops tricklers) [30]."),
    max_image_area: Optional[int] = typer.Option(
        None, "--max-image-area", help="Largest width*height, checked before decoding; at most 89478485 [89478485]."),
    distributor: Optional[str] = typer.Option(None, "--distributor", help="img2dataset distributor [multiprocessing]."),
    allow_private: Optional[bool] = typer.Option(
        None, "--allow-private/--no-allow-private",
        help="Fetch from loopback, private, link-local and reserved addresses (refused by default)."),
    allow_host: Optional[List[str]] = typer.Option(
        None, "--allow-host", metavar="HOST[:PORT]",
        help="Host exempt from the address check, on PORT or on the ports the input's urls use for it (repeatable)."),
    force: force_option("Start the pool over (delete pool/ and download again).") = False,
    executor: ExecutorOption = None,
    ray_address: RayAddressOption = None,
    fmt: FormatOption = Format.table,
):
    """Download the candidates with img2dataset into webdataset shards + the pool manifest.

    \b
    Example:  clipcurate -w ./workspace download --processes 4 --threads 64 --image-size 256
    """
    from clipcurate.download import download as run  # on use, not at start-up: see cli/__init__.py

    ws, cfg = resolve(ctx, create=True)
    opts = cfg.get("download", {
        "url_col": url_col, "caption_col": caption_col, "image_size": image_size, "resize_mode": resize_mode,
        "skip_reencode": skip_reencode,
        "processes": processes, "threads": threads, "samples_per_shard": samples_per_shard,
        "timeout": timeout, "retries": retries, "fetch_deadline": fetch_deadline,
        "max_image_area": max_image_area, "distributor": distributor, "allow_private": allow_private,
        "allow_hosts": list(allow_host) if allow_host else None})
    res = run(ws, input_file, cfg=opts, force=force,
              executor=from_config(cfg, executor, ray_address))  # --executor ray: a Ray task per shard
    c = res.counts
    rows = [[s, c.get(s, 0)] for s in ("success", "failed", "refused")] + [["total", c.get("rows", 0)]]
    echo_table(["status", "rows"], rows, fmt.value,
               title=f"pool: {res.shards_total} shards ({res.shards_skipped} already done)")


def register(app: typer.Typer) -> None:
    app.command("download")(download)
