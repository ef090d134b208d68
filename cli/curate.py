"""`clipcurate curate`: parse options, call clipcurate.curate.stage."""

from __future__ import annotations

from typing import Optional

import typer

from clipcurate.cli.state import state


def curate(
    shard_size: Optional[int] = typer.Option(None, "--shard-size", help="Samples per output shard [config: 10000]."),
    no_decontam: Optional[bool] = typer.Option(
        None, "--no-decontam", help="Keep every successful sample (no overlap/decontam.parquet needed)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty curate/ folder."),
):
    """Reshard the pool's successful samples minus decontaminated ones into clean training shards.

    \b
    Example:  clipcurate -w ./workspace curate --shard-size 10000
    """
    from clipcurate.core.console import out
    from clipcurate.curate.stage import curate as run

    ws = state.ws(must_exist=True)
    cfg = state.config(ws).get("curate", {"shard_size": shard_size,
                                          "decontam": None if no_decontam is None else not no_decontam})
    res = run(ws, decontam=cfg["decontam"], shard_size=cfg["shard_size"], force=force)
    from clipcurate.cli.app import echo_table

    import json

    per = json.loads((ws.path("curate", "stats.json")).read_text())["shards"]
    cols = ["shard", "samples", "bytes_images", "skipped_missing", "skipped_incomplete", "skipped_uid_mismatch"]
    echo_table(cols, [[s] + [per[s].get(c, 0) for c in cols[1:]] for s in res.shards])
    out(f"train-data: {res.pattern}  samples: {res.samples}")


def register(app: typer.Typer) -> None:
    app.command("curate")(curate)
