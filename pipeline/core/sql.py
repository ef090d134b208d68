"""DuckDB over the workspace: one view per manifest, named after it.

:func:`connect` opens an in-memory DuckDB with a view for every manifest that has files;
:func:`refresh_database` writes the same views into ``clipcurate.duckdb`` in the workspace so that
the duckdb CLI or plain Python can query it without clipcurate::

    duckdb workspace/clipcurate.duckdb "select status, count(*) from pool group by 1"

Canned reports are named queries (``clipcurate sql --list``) that stages register with
:func:`report`; a report is offered only when the views it needs exist. The views cover the
manifests registered so far: ``clipcurate sql`` imports every stage first (``clipcurate.stages.load()``).
"""

from __future__ import annotations

import dataclasses

import duckdb

from clipcurate.core import manifest as mf
from clipcurate.core.console import warn
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.workspace import Workspace


@dataclasses.dataclass(frozen=True)
class Report:
    name: str
    doc: str
    sql: str
    needs: tuple[str, ...]


REPORTS: dict[str, Report] = {}

# Views over files that are not Parquet manifests (e.g. the review decision log):
# name -> function(workspace) returning a SELECT statement, or None when there is no data yet.
EXTRA_VIEWS: dict = {}


def extra_view(name: str, fn) -> None:
    EXTRA_VIEWS[name] = fn


def report(name: str, doc: str, sql: str, needs: tuple[str, ...]) -> None:
    REPORTS[name] = Report(name, doc, sql, tuple(needs))


def _quote(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def view_sql(m: mf.Manifest, ws: Workspace) -> str | None:
    files = m.files(ws.root)
    if not files:
        return None
    paths = "[" + ", ".join(_quote(str(p)) for p in files) + "]"
    select = f"* EXCLUDE ({', '.join(m.view_exclude)})" if m.view_exclude else "*"
    return (f'CREATE OR REPLACE VIEW "{m.name}" AS SELECT {select} '
            f"FROM read_parquet({paths}, union_by_name=true)")


def create_views(con: duckdb.DuckDBPyConnection, ws: Workspace) -> list[str]:
    made = []
    for m in mf.REGISTRY.values():
        stmt = view_sql(m, ws)
        if stmt:
            con.execute(stmt)
            made.append(m.name)
    for name, fn in EXTRA_VIEWS.items():
        select = fn(ws)
        if select:
            con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {select}')
            made.append(name)
    return sorted(made)


def connect(ws: Workspace) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(":memory:")
    create_views(con, ws)
    return con


def refresh_database(ws: Workspace) -> bool:
    """Write the views into ``clipcurate.duckdb``; warn (not fail) when another process holds it."""
    try:
        con = duckdb.connect(str(ws.duckdb_file))
    except duckdb.Error as exc:
        warn(f"could not update {ws.duckdb_file} ({exc.__class__.__name__}); the in-memory views still work")
        return False
    try:
        for (name,) in con.execute(
                "select view_name from duckdb_views() where not internal and schema_name = 'main'").fetchall():
            con.execute(f'DROP VIEW IF EXISTS "{name}"')
        create_views(con, ws)
    finally:
        con.close()
    return True


def available_reports(views: list[str]) -> list[Report]:
    return [r for r in REPORTS.values() if set(r.needs) <= set(views)]


def query(ws: Workspace, sql: str):
    """Run SQL (or a report name) against the workspace; returns (columns, rows)."""
    con = connect(ws)
    views = [r[0] for r in con.execute(
        "select view_name from duckdb_views() where not internal").fetchall()]
    if sql in REPORTS:
        rep = REPORTS[sql]
        missing = sorted(set(rep.needs) - set(views))
        if missing:
            raise ClipcurateError(f"report {sql!r} needs the views {missing}, which have no data yet")
        sql = rep.sql
    try:
        cur = con.execute(sql)
    except duckdb.Error as exc:
        msg = str(exc).strip().splitlines()[0]
        raise ClipcurateError(f"SQL error: {msg} (views: {', '.join(views) or 'none yet'})") from None
    if cur.description is None:
        return [], []
    cols = [d[0] for d in cur.description]
    return cols, cur.fetchall()
