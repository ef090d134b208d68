"""Core commands: status and sql."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from clipcurate import stages
from clipcurate.core import sql as sqlmod
from clipcurate.core.console import log, out

from clipcurate.cli.context import workspace
from clipcurate.cli.options import Format, FormatOption
from clipcurate.cli.output import echo_table


def status(ctx: typer.Context, fmt: FormatOption = Format.table):
    """Show each stage: done / partial / missing, with shard and row counts.

    \b
    Example:  clipcurate -w ./workspace status --format json
    """
    ws = workspace(ctx, must_exist=True)
    rows = stages.status_rows(ws)
    if fmt == Format.json:
        for r in rows:
            out(json.dumps(r))
        return
    cols = ["stage", "state", "shards", "rows", "command"]
    data = [[r["stage"], r["state"], f'{r["shards_done"]}/{r["shards_total"]}' if r["shards_total"] else "",
             ", ".join([f"{k}={v}" for k, v in r["rows"].items()] + ([r["note"]] if r["note"] else [])),
             r["command"]] for r in rows]
    echo_table(cols, data, fmt.value, title=f"workspace {ws.root}")


def sql(
    ctx: typer.Context,
    query: str = typer.Argument(None, help="SQL, or the name of a canned report (see --list)."),
    fmt: FormatOption = Format.table,
    list_: bool = typer.Option(False, "--list", help="List the views and canned reports, then exit."),
    output: Optional[Path] = typer.Option(
        None, "--output", "-o", help="Write the result to FILE (.parquet, .csv or .json lines), outside the workspace."),
):
    """Query the workspace's manifests with DuckDB (one view per manifest); read-only.

    Only reading statements run (SELECT, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN, PRAGMA), and only on
    files inside the workspace: COPY, ATTACH, INSTALL/LOAD, CREATE, SET, ... are refused.

    \b
    Example:  clipcurate sql "select status, count(*) from pool group by 1" --format csv
    """
    ws = workspace(ctx, must_exist=True)
    stages.load()  # a view per manifest of every stage, and every stage's canned reports
    if list_:
        con = sqlmod.connect(ws)
        views = [r[0] for r in con.execute("select view_name from duckdb_views() where not internal order by 1").fetchall()]
        rows = [["view", v, sqlmod.view_doc(v)] for v in views]
        rows += [["report", r.name, r.doc] for r in sorted(sqlmod.REPORTS.values(), key=lambda r: r.name)
                 if set(r.needs) <= set(views)]
        rows += [["report (no data yet)", r.name, r.doc] for r in sorted(sqlmod.REPORTS.values(), key=lambda r: r.name)
                 if not set(r.needs) <= set(views)]
        echo_table(["kind", "name", "about"], rows, fmt.value)
        return
    if not query:
        raise typer.BadParameter("give a SQL query or a report name, or use --list")
    if output is not None:
        n = sqlmod.write_result(ws, query, output)
        log(f"sql: {n} rows -> {output}")
        sqlmod.refresh_database(ws)
        return
    cols, rows = sqlmod.query(ws, query)
    sqlmod.refresh_database(ws)
    echo_table(cols, rows, fmt.value)


def register(app: typer.Typer) -> None:
    app.command("status")(status)
    app.command("sql")(sql)
