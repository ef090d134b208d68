"""`clipcurate sql` is read-only: hostile statements are refused in one line and change nothing."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcurate.core import manifest as mf


@pytest.fixture
def toy(ws):
    mf.register("toyro", version=1, glob="toyro/*.parquet", stage="toy", doc="A test manifest.",
                columns=[("uid", pa.string(), "id"), ("n", pa.int64(), "a number")])
    path = mf.write("toyro", [{"uid": "a", "n": 1}, {"uid": "b", "n": 2}], ws.root / "toyro" / "00000.parquet")
    yield path
    mf.REGISTRY.pop("toyro", None)


HOSTILE = {
    "copy-over-a-manifest": "copy (select 'x' as a) to '{manifest}' (format parquet)",
    "attach": "attach '{tmp}/x.db'",
    "read-outside": "select * from read_csv('/etc/passwd')",
    "install": "INSTALL httpfs",
    "load": "LOAD httpfs",
    "unlock": "SET enable_external_access = true",
    "create": "create table t as select 1",
    "second-statement": "select 1; copy (select 1) to '{tmp}/y.csv'",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_statements_are_refused_and_change_nothing(ws, cli, toy, tmp_path, name):
    before = toy.read_bytes()
    q = HOSTILE[name].format(manifest=toy, tmp=tmp_path)
    r = cli("-w", ws.root, "sql", q)
    assert r.code == 1, (name, r.out, r.err)
    assert r.err.startswith("error:") and len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err
    assert toy.read_bytes() == before
    assert not (tmp_path / "x.db").exists() and not (tmp_path / "y.csv").exists()
    assert "root:" not in r.out  # /etc/passwd never printed


def test_reading_still_works_and_output_files(ws, cli, toy, tmp_path):
    r = cli("-w", ws.root, "sql", "select sum(n) as s from toyro", "--format", "csv")
    assert r.code == 0 and r.out == "s\n3\n"
    for q in ("describe toyro", "show tables", "summarize toyro", "explain select * from toyro"):
        assert cli("-w", ws.root, "sql", q).code == 0, q
    out = tmp_path / "res.parquet"
    r = cli("-w", ws.root, "sql", "select * from toyro order by uid", "--output", out)
    assert r.code == 0, r.err
    assert pq.read_table(out).to_pylist() == [{"uid": "a", "n": 1}, {"uid": "b", "n": 2}]
    r = cli("-w", ws.root, "sql", "select * from toyro order by uid", "-o", tmp_path / "res.json")
    assert [json.loads(x) for x in (tmp_path / "res.json").read_text().splitlines()] == [{"uid": "a", "n": 1},
                                                                                        {"uid": "b", "n": 2}]
    r = cli("-w", ws.root, "sql", "select * from toyro order by uid", "-o", tmp_path / "res.csv")
    assert (tmp_path / "res.csv").read_text().splitlines()[0] == '"uid","n"'
    # a result never lands inside the workspace, and a bad suffix is one clear line
    r = cli("-w", ws.root, "sql", "select 1 as a", "-o", toy)
    assert r.code == 1 and "inside the workspace" in r.err and pq.read_table(toy).num_rows == 2
    r = cli("-w", ws.root, "sql", "select 1 as a", "-o", tmp_path / "res.xlsx")
    assert r.code == 1 and ".parquet, .csv or .json" in r.err


def test_every_view_has_a_description(ws, cli, toy):
    import csv
    import io

    r = cli("-w", ws.root, "sql", "--list", "--format", "csv")
    views = [row for row in csv.DictReader(io.StringIO(r.out)) if row["kind"] == "view"]
    assert views and all(row["about"].strip() for row in views), views
    assert {"name": "toyro", "kind": "view", "about": "A test manifest."} in views


def test_every_registered_view_has_a_description():
    from clipcurate import stages
    from clipcurate.core import sql

    stages.load()
    for name in list(mf.REGISTRY) + list(sql.EXTRA_VIEWS):
        assert sql.view_doc(name), name
