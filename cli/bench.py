"""`clipcurate bench add` / `bench list`: the benchmark registry (clipcurate.bench.stage)."""

from __future__ import annotations

from enum import Enum
from typing import Optional

import typer

from clipcurate.cli.context import resolve, workspace
from clipcurate.cli.options import Format, FormatOption, force_option
from clipcurate.cli.output import echo_table


class Kind(str, Enum):
    classification = "classification"
    captions = "captions"


bench_app = typer.Typer(help="Benchmarks to measure overlap against: add and list them.", no_args_is_help=True)


@bench_app.command("add")
def add(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Benchmark name, e.g. cifar10 (the folder under benchmarks/)."),
    source: str = typer.Option(..., "--from", help="Folder tree, captions folder, .parquet, .tar(s) or torchvision:NAME."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Class names: one per line, or JSON list / {folder: name}."),
    templates: Optional[str] = typer.Option(None, "--templates", help="Prompt templates file, one per line with {}."),
    kind: Optional[Kind] = typer.Option(None, "--kind", help="classification or captions (default: from the source)."),
    force: force_option("Replace an existing benchmark of that name.") = False,
):
    """Copy a benchmark into the workspace (samples, class names, prompt templates).

    \b
    Example:  clipcurate bench add cifar10 --from torchvision:CIFAR10
    """
    from clipcurate import bench  # on use, not at start-up: see cli/__init__.py

    ws, config = resolve(ctx, create=True)
    cfg = config.get("bench", {"templates": templates})
    bench.add(ws, name, source, classes=classes, templates=cfg["templates"] or None,
              kind=kind.value if kind else None, force=force, cache_dir=cfg["cache_dir"] or None)


@bench_app.command("list")
def list_(ctx: typer.Context, fmt: FormatOption = Format.table):
    """List the benchmarks in the workspace: kind, samples, classes, source.

    \b
    Example:  clipcurate bench list --format csv
    """
    from clipcurate import bench  # on use, not at start-up: see cli/__init__.py

    ws = workspace(ctx, must_exist=True)
    rows = bench.list_benchmarks(ws)
    cols = ["name", "kind", "n", "n_skipped", "n_classes", "n_templates", "n_captions", "source"]
    echo_table(cols, [[r.get(c) for c in cols] for r in rows], fmt.value, title=f"benchmarks in {ws.root}")


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
