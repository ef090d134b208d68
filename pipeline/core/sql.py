"""DuckDB over the workspace: one view per manifest, named after it.

:func:`connect` opens an in-memory DuckDB with a view for every manifest that has files;
:func:`refresh_database` writes the same views into ``clipcurate.duckdb`` in the workspace so that
the duckdb CLI or plain Python can query it without clipcurate::

    duckdb workspace/clipcurate.duckdb "select status, count(*) from pool group by 1"

``clipcurate sql`` is read-only. A query may only read, and only inside the workspace: after the
views are made, the connection is locked down (DuckDB's ``allowed_directories`` = the workspace,
``enable_external_access = false``, ``lock_configuration = true``), so reading a file outside the
workspace, ATTACH, INSTALL/LOAD and any change of those settings are refused by DuckDB itself; and
only SELECT (with DESCRIBE, SHOW, SUMMARIZE, VALUES), EXPLAIN and PRAGMA statements are run at all —
COPY, CREATE, INSERT, UPDATE, DELETE, SET, CALL, ... are refused before DuckDB sees them, since a
COPY into the workspace would pass the directory rule and overwrite a manifest. Results are written
the safe way: ``--format csv/json`` to stdout or ``--output FILE`` (.parquet, .csv, .json).

Canned reports are named queries (``clipcurate sql --list``) that stages register with
:func:`report`; a report is offered only when the views it needs exist. The views cover the
manifests registered so far: ``clipcurate sql`` imports every stage first (``clipcurate.stages.load()``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from clipcurate.core import manifest as mf
from clipcurate.core.console import warn
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.io import atomic_open, atomic_path
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
EXTRA_DOCS: dict[str, str] = {}


def extra_view(name: str, fn, doc: str = "") -> None:
    EXTRA_VIEWS[name] = fn
    EXTRA_DOCS[name] = doc


def view_doc(name: str) -> str:
    """The one-line description of a view (`clipcurate sql --list`): its manifest's, or the extra view's."""
    doc = mf.REGISTRY[name].doc if name in mf.REGISTRY else EXTRA_DOCS.get(name, "")
    return " ".join(doc.split("\n\n")[0].split())  # the first paragraph, on one line


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


# What a read-only query may be: statements that only read (DESCRIBE, SHOW, SUMMARIZE and VALUES are
# SELECTs to DuckDB's parser).
READ_ONLY = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN, duckdb.StatementType.PRAGMA}


def check_read_only(sql: str) -> None:
    """Refuse, in one line, any statement that is not a read (checked by DuckDB's own parser)."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise ClipcurateError(f"SQL error: {str(exc).strip().splitlines()[0]}") from None
    for st in statements:
        if st.type not in READ_ONLY:
            kind = st.type.name if hasattr(st.type, "name") else str(st.type)
            raise ClipcurateError(
                f"clipcurate sql is read-only: a {kind} statement is refused ({st.query.strip()[:60]!r}); "
                f"write a result with --output FILE (.parquet, .csv, .json) or --format csv/json")


def lock_down(con: duckdb.DuckDBPyConnection, ws: Workspace) -> None:
    """From here on the connection reads inside the workspace only, and nothing can undo that."""
    con.execute(f"SET allowed_directories = [{_quote(str(ws.root) + '/')}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def query_cursor(ws: Workspace, sql: str):
    """Run read-only SQL (or a report name) on the workspace's views; returns the DuckDB result
    (``.description``, ``.fetchall()``, its Arrow table) or None for a statement without rows."""
    con = connect(ws)
    views = [r[0] for r in con.execute(
        "select view_name from duckdb_views() where not internal").fetchall()]
    if sql in REPORTS:
        rep = REPORTS[sql]
        missing = sorted(set(rep.needs) - set(views))
        if missing:
            raise ClipcurateError(f"report {sql!r} needs the views {missing}, which have no data yet")
        sql = rep.sql
    check_read_only(sql)
    lock_down(con, ws)
    try:
        cur = con.execute(sql)
    except duckdb.Error as exc:
        msg = str(exc).strip().splitlines()[0]
        raise ClipcurateError(f"SQL error: {msg} (views: {', '.join(views) or 'none yet'})") from None
    return cur if cur.description is not None else None


def query(ws: Workspace, sql: str):
    """Run read-only SQL (or a report name) against the workspace; returns (columns, rows)."""
    cur = query_cursor(ws, sql)
    if cur is None:
        return [], []
    return [d[0] for d in cur.description], cur.fetchall()


OUTPUT_SUFFIXES = (".parquet", ".csv", ".json")


def write_result(ws: Workspace, sql: str, output: str | Path) -> int:
    """Run read-only SQL and write its result to ``output`` (atomically; by suffix: Parquet, CSV or
    JSON lines). The file must lie outside the workspace: a result never replaces a manifest."""
    out = Path(output).expanduser().absolute()
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ClipcurateError(f"--output {str(output)!r}: use a .parquet, .csv or .json file")
    if out == ws.root or ws.root in out.parents:
        raise ClipcurateError(f"--output {str(output)!r} is inside the workspace {str(ws.root)!r}: "
                              f"write results elsewhere (the workspace holds the stages' outputs only)")
    cur = query_cursor(ws, sql)
    if cur is None:
        tbl = pa.table({})
    else:  # duckdb >= 2 names it to_arrow_table; 1.x fetch_arrow_table
        tbl = (cur.to_arrow_table if hasattr(cur, "to_arrow_table") else cur.fetch_arrow_table)()
    suffix = out.suffix.lower()
    if suffix == ".parquet":
        with atomic_path(out) as tmp:
            pq.write_table(tbl, tmp, compression="zstd")
    elif suffix == ".csv":
        with atomic_path(out) as tmp:
            pacsv.write_csv(tbl, tmp)
    else:
        with atomic_open(out, "w") as fh:
            for row in tbl.to_pylist():
                fh.write(json.dumps(row, default=str) + "\n")
    return tbl.num_rows
