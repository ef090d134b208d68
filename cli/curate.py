"""`clipcurate curate`: parse options, call clipcurate.curate.stage."""

from __future__ import annotations

from typing import Optional

import json

import typer

from clipcurate.core.console import out

from clipcurate.cli.context import resolve
from clipcurate.cli.options import force_option
from clipcurate.cli.output import echo_table


def curate(
    ctx: typer.Context,
    shard_size: Optional[int] = typer.Option(None, "--shard-size", help="Samples per output shard [config: 10000]."),
    no_decontam: Optional[bool] = typer.Option(
        None, "--no-decontam", help="Keep every successful sample (no overlap/decontam.parquet needed)."),
    force: force_option("Replace a non-empty curate/ folder.") = False,
):
    """Reshard the pool's successful samples minus decontaminated ones into clean training shards.

    \b
    Example:  clipcurate -w ./workspace curate --shard-size 10000
    """
    from clipcurate.curate import curate as run  # on use, not at start-up: see cli/__init__.py

    ws, config = resolve(ctx, must_exist=True)
    cfg = config.get("curate", {"shard_size": shard_size,
                                          "decontam": None if no_decontam is None else not no_decontam})
    res = run(ws, decontam=cfg["decontam"], shard_size=cfg["shard_size"], force=force)
    per = json.loads((ws.path("curate", "stats.json")).read_text())["shards"]
    cols = ["shard", "samples", "bytes_images", "skipped_missing", "skipped_incomplete", "skipped_uid_mismatch"]
    echo_table(cols, [[s] + [per[s].get(c, 0) for c in cols[1:]] for s in res.shards])
    out(f"train-data: {res.pattern}  samples: {res.samples}")


def register(app: typer.Typer) -> None:
    app.command("curate")(curate)
