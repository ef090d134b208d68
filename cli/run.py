"""`clipcurate run PIPELINE.toml` and `clipcurate demo`."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from clipcurate import stages
from clipcurate.core.console import console
from clipcurate.core.workspace import Workspace

from clipcurate.cli.context import config, globals_of, workspace
from clipcurate.cli.options import force_option
from clipcurate.cli.output import echo_table


class Size(str, Enum):
    tiny = "tiny"
    small = "small"


def run(ctx: typer.Context,
        pipeline: Path = typer.Argument(..., help="The pipeline file (TOML with [[step]] tables)."),
        force: force_option("Rerun every step, even finished ones.") = False):
    """Run the stages of a pipeline file in order, skipping finished steps.

    \b
    Example:  clipcurate -w ./workspace run examples/demo/pipeline.toml
    """
    from clipcurate.run.runner import Pipeline, run_pipeline  # on use, not at start-up: see cli/__init__.py

    p = Pipeline.load(pipeline)
    ws = workspace(ctx) if globals_of(ctx).workspace else p.default_workspace()
    run_pipeline(p, ws, force=force, cfg=config(ctx, ws))  # read once, before the first step
    typer.echo(f"pipeline finished: {ws.root}")


def demo(ctx: typer.Context,
         workspace_dir: Optional[Path] = typer.Option(None, "--workspace", "-w",
                                                      help="Workspace for the demo (default: the global -w or ./workspace)."),
         size: Size = typer.Option(Size.small, "--size", help="World size: small (the demo) or tiny (tests)."),
         seed: int = typer.Option(0, "--seed", help="Seed of the generated world."),
         force: force_option("Start over: delete the demo's outputs first.") = False):
    """Generate a small world and run every real stage on it (2 CPU cores, no network).

    \b
    Example:  clipcurate demo --workspace ./demo-workspace
    """
    from clipcurate.run.demo import run_demo  # on use, not at start-up: see cli/__init__.py

    stages.load()  # the demo reads its config file after writing it: every section must be declared
    ws = Workspace(workspace_dir) if workspace_dir else workspace(ctx)
    t0 = time.time()
    rows = run_demo(ws, size=size.value, seed=seed, force=force)
    echo_table(["what", "measured"], [list(r) for r in rows], "table", title=f"clipcurate demo ({time.time() - t0:.0f} s)")
    for report in sorted(ws.path("eval").glob("*/report.html")):
        console.print(f"report: {report} (and report.md beside it)")
    console.print(f"query it:   clipcurate -w {ws.root} sql --list")
    console.print(f"review it:  clipcurate -w {ws.root} review   (the demo's automatic decisions are marked auto-demo)")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
    app.command("demo")(demo)
