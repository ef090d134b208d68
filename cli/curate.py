"""`clipcurate curate`: parse options, call clipcurate.curate.stage."""

from __future__ import annotations

from typing import List, Optional

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
    sets: Optional[List[str]] = typer.Option(
        None, "--set", help="Training set to write: clean (curate/shards) or all (curate/all/shards, the pool as "
                            "downloaded, for the counterfactual); repeatable [config: clean]."),
    force: force_option("Replace a non-empty curate/ folder.") = False,
):
    """Reshard the pool's successful samples minus decontaminated ones into clean training shards.

    \b
    Example:  clipcurate -w ./workspace curate --shard-size 10000
    """
    from clipcurate.curate import DATASETS, set_dir  # on use, not at start-up: see cli/__init__.py
    from clipcurate.curate import curate as run  # on use, not at start-up: see cli/__init__.py

    ws, config = resolve(ctx, must_exist=True)
    cfg = config.get("curate", {"shard_size": shard_size, "sets": list(sets) if sets else None,
                                "decontam": None if no_decontam is None else not no_decontam})
    for data in cfg["sets"]:
        if data not in DATASETS:
            raise typer.BadParameter(f"--set {data!r}: use clean or all")
    for data in cfg["sets"]:
        res = run(ws, decontam=cfg["decontam"], shard_size=cfg["shard_size"], force=force, data=data)
        per = json.loads((set_dir(ws, data) / "stats.json").read_text())["shards"]
        cols = ["set", "shard", "samples", "bytes_images", "skipped_missing", "skipped_incomplete",
                "skipped_uid_mismatch"]
        echo_table(cols, [[data, s] + [per[s].get(c, 0) for c in cols[2:]] for s in res.shards])
        label = "train-data" if data == "clean" else "train-data (all)"
        out(f"{label}: {res.pattern}  samples: {res.samples}")


def register(app: typer.Typer) -> None:
    app.command("curate")(curate)
