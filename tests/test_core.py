"""The foundation: atomic writes, markers, config precedence, uids, manifests, DuckDB views, CLI spine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pyarrow as pa
import pytest

from clipcurate.core import config as cfgmod
from clipcurate.core import manifest as mf
from clipcurate.core import sql as sqlmod
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.io import atomic_open, clean_temp, write_json
from clipcurate.core.stage import SUCCESS, Stage, is_done, stage_state
from clipcurate.core.uid import is_uid, make_uid, pair_uid


# -- atomic writes -----------------------------------------------------------------------------

def test_atomic_write_exception_leaves_no_file(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_open(target) as fh:
            fh.write(b"partial")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_keeps_old_content_until_rename(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_open(target, "w") as fh:
        fh.write("new")
        assert target.read_text() == "old"
    assert target.read_text() == "new"


def test_kill9_mid_write_leaves_no_partial_file(tmp_path):
    """A writer killed with SIGKILL mid-write leaves the old file intact and only a temp file."""
    target = tmp_path / "data.bin"
    target.write_bytes(b"complete-old")
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(os.getcwd())!r})
        from clipcurate.core.io import atomic_open
        with atomic_open({str(target)!r}) as fh:
            fh.write(b"x" * 1000)
            fh.flush()
            print("writing", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == b"complete-old"
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert leftovers and all(p.name.startswith(".tmp-") for p in leftovers)
    assert clean_temp(tmp_path) == len(leftovers)
    assert list(tmp_path.iterdir()) == [target]


# -- stage contract ----------------------------------------------------------------------------

class Counting(Stage):
    name = "counting"

    def __init__(self, folder, shards, fail_on=None, force=False):
        super().__init__(folder, force=force)
        self._shards, self.fail_on, self.ran = shards, fail_on, []

    def shards(self):
        return self._shards

    def run_shard(self, shard):
        if shard == self.fail_on:
            raise RuntimeError(f"fail {shard}")
        self.ran.append(shard)
        write_json(self.folder / f"{shard}.json", {"shard": shard})
        return {"rows": 10}


def test_markers_skip_finished_shards_and_force_redoes(tmp_path):
    folder = tmp_path / "stage"
    s = Counting(folder, ["a", "b", "c"], fail_on="b")
    with pytest.raises(RuntimeError):
        s.run()
    assert s.ran == ["a"] and is_done(folder, "a") and not is_done(folder, "b")
    assert stage_state(folder) == ("partial", 1, 3)
    s2 = Counting(folder, ["a", "b", "c"])
    res = s2.run()
    assert s2.ran == ["b", "c"]
    assert res.shards_skipped == 1 and res.counts["rows"] == 30
    assert (folder / SUCCESS).exists() and stage_state(folder) == ("done", 3, 3)
    s3 = Counting(folder, ["a", "b", "c"])
    s3.run()
    assert s3.ran == []
    s4 = Counting(folder, ["a", "b", "c"], force=True)
    s4.run()
    assert s4.ran == ["a", "b", "c"]


def test_stage_state_missing(tmp_path):
    assert stage_state(tmp_path / "nothing") == ("missing", 0, 0)


# -- uids --------------------------------------------------------------------------------------

def test_uid_is_stable_128_bit_hex():
    u = pair_uid("http://example.com/a.jpg", "a cat")
    assert is_uid(u) and len(u) == 32
    # pinned value: changing the uid function would orphan every existing workspace
    assert u == make_uid("pair", "http://example.com/a.jpg", "a cat")
    assert u == "%s" % pair_uid("http://example.com/a.jpg", "a cat")
    assert pair_uid("http://example.com/a.jpg", "a dog") != u
    # field boundaries matter: ("ab", "c") != ("a", "bc")
    assert make_uid("ab", "c") != make_uid("a", "bc")
    out = subprocess.run([sys.executable, "-c",
                          "from clipcurate.core.uid import pair_uid; print(pair_uid('http://example.com/a.jpg', 'a cat'))"],
                         capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": "123"})
    assert out.stdout.strip() == u


def test_uid_known_value():
    import hashlib

    expected = hashlib.blake2b("pair\x1fu\x1fc".encode(), digest_size=16).hexdigest()
    assert pair_uid("u", "c") == expected


# -- config ------------------------------------------------------------------------------------

@pytest.fixture
def demo_section():
    cfgmod.section("unittest", {"threads": 4, "ratio": 0.5, "name": "x", "flag": False, "tags": ["a"],
                                "thresholds": {}})
    yield
    cfgmod.SECTIONS.pop("unittest", None)


def test_config_precedence(tmp_path, demo_section):
    f = tmp_path / "clipcurate.toml"
    f.write_text('[unittest]\nthreads = 8\nratio = 0.25\nthresholds = {cifar10 = {high = 0.9}}\n')
    env = {"CLIPCURATE_UNITTEST__RATIO": "0.75", "CLIPCURATE_UNITTEST__FLAG": "yes"}
    cfg = cfgmod.Config(cfgmod.read_file(f), env, origin=str(f))
    got = cfg.get("unittest", {"name": "cli", "threads": None})
    assert got["threads"] == 8  # file beats default; None on the command line means "not given"
    assert got["ratio"] == 0.75  # env beats file
    assert got["flag"] is True
    assert got["name"] == "cli"  # command line beats all
    assert got["tags"] == ["a"]
    assert got["thresholds"] == {"cifar10": {"high": 0.9}}
    assert cfg.get("unittest", {"ratio": 0.1})["ratio"] == 0.1


def test_config_unknown_keys_are_named(tmp_path, demo_section):
    with pytest.raises(ClipcurateError, match="unknown key 'thread' in \\[unittest\\]"):
        cfgmod.Config({"unittest": {"thread": 2}}, {})
    with pytest.raises(ClipcurateError, match="unknown section \\[nosuch\\]"):
        cfgmod.Config({"nosuch": {}}, {})
    with pytest.raises(ClipcurateError, match="CLIPCURATE_UNITTEST__NOPE"):
        cfgmod.Config({}, {"CLIPCURATE_UNITTEST__NOPE": "1"})
    with pytest.raises(ClipcurateError, match="'many' is not a valid int"):
        cfgmod.Config({}, {"CLIPCURATE_UNITTEST__THREADS": "many"}).get("unittest")


def test_config_file_in_workspace_and_bad_toml(ws, cli, demo_section):
    ws.config_file.write_text("[unittest]\nthreads = 3\n")
    cfg = cfgmod.Config.load(ws.root)
    assert cfg.get("unittest")["threads"] == 3
    ws.config_file.write_text("[unittest\n")
    with pytest.raises(ClipcurateError, match="not valid TOML"):
        cfgmod.Config.load(ws.root)


# -- manifests and DuckDB ----------------------------------------------------------------------

@pytest.fixture
def toy_manifest():
    m = mf.register("toy", version=2, glob="toy/*.parquet", stage="toy", doc="A test manifest.",
                    columns=[("uid", pa.string(), "id"), ("n", pa.int64(), "a number"),
                             ("blob", pa.binary(), "bytes")], view_exclude=("blob",))
    sqlmod.report("toy-total", "Sum of n.", "select sum(n) as total from toy", needs=("toy",))
    yield m
    mf.REGISTRY.pop("toy", None)
    sqlmod.REPORTS.pop("toy-total", None)


def test_manifest_roundtrip_schema_and_version(ws, toy_manifest):
    rows = [{"uid": make_uid(i), "n": i, "blob": b"x"} for i in range(5)]
    p = mf.write("toy", rows, ws.root / "toy" / "a.parquet")
    t = mf.read("toy", p)
    assert t.num_rows == 5 and t.schema.metadata[mf.META_VERSION] == b"2"
    with pytest.raises(ValueError, match="missing columns"):
        mf.write("toy", {"uid": ["a"]}, ws.root / "toy" / "b.parquet")
    import pyarrow.parquet as pq

    old = pa.table({"uid": ["a"], "n": [1], "blob": [b""]}).replace_schema_metadata(
        {mf.META_NAME: b"toy", mf.META_VERSION: b"1"})
    pq.write_table(old, ws.root / "toy" / "old.parquet")
    with pytest.raises(ClipcurateError, match="schema version 1"):
        mf.read("toy", ws.root / "toy" / "old.parquet")


def test_duckdb_views_over_tiny_workspace(ws, cli, toy_manifest):
    mf.write("toy", [{"uid": "a", "n": 1, "blob": b"1"}], ws.root / "toy" / "0.parquet")
    mf.write("toy", [{"uid": "b", "n": 2, "blob": b"2"}], ws.root / "toy" / "1.parquet")
    cols, rows = sqlmod.query(ws, "select * from toy order by uid")
    assert cols == ["uid", "n"] and rows == [("a", 1), ("b", 2)]  # blob excluded from the view
    assert sqlmod.query(ws, "toy-total")[1] == [(3,)]
    r = cli("-w", ws.root, "sql", "select sum(n) as s from toy", "--format", "csv")
    assert r.code == 0 and r.out == "s\n3\n"
    r = cli("-w", ws.root, "sql", "toy-total", "--format", "json")
    assert json.loads(r.out) == {"total": 3}
    r = cli("-w", ws.root, "sql", "--list", "--format", "csv")
    assert "view,toy," in r.out and "report,toy-total" in r.out
    # the same views are in the workspace's DuckDB file, usable without clipcurate
    import duckdb

    con = duckdb.connect(str(ws.duckdb_file), read_only=True)
    assert con.execute("select count(*) from toy").fetchone() == (2,)
    con.close()


# -- the CLI spine -----------------------------------------------------------------------------

def test_cli_version_help_status_sql(ws, cli):
    r = cli("--version")
    assert r.code == 0 and r.out.startswith("clipcurate ")
    r = cli("--help")
    assert r.code == 0 and "status" in r.out and "sql" in r.out
    r = cli("-w", ws.root, "status")
    assert r.code == 0, r.err
    r = cli("-w", ws.root, "sql", "select 42 as answer", "--format", "csv")
    assert r.code == 0 and r.out == "answer\n42\n"
    r = cli("-w", ws.root, "sql", "--list")
    assert r.code == 0


def test_cli_errors_exit_codes(ws, cli, tmp_path):
    r = cli("--no-such-option")
    assert r.code == 2
    r = cli("-w", tmp_path / "missing", "status")
    assert r.code == 1
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "does not exist" in lines[0] and "Traceback" not in r.err
    r = cli("-w", ws.root, "sql", "select * from nosuchview")
    assert r.code == 1 and len(r.err.strip().splitlines()) == 1 and "SQL error" in r.err


def test_console_script_subprocess_exit_codes(tmp_path):
    """The installed entry point behaves the same as in-process main()."""
    r = subprocess.run([sys.executable, "-m", "clipcurate", "-w", str(tmp_path / "none"), "status"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "Traceback" not in r.stderr and r.stdout == ""
    r = subprocess.run([sys.executable, "-m", "clipcurate", "bogus-command"], capture_output=True, text=True)
    assert r.returncode == 2
