"""`clipcurate download` end to end against the loopback test server: every failure reason lands in
the pool manifest with the right count, private addresses are refused (and fetched with
--allow-private), a kill -9 mid-run is finished by a rerun with the same successful uid set."""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from _download_server import EXPECTED, ImageServer, write_urls
import clipcurate.download  # noqa: F401  (registers the `pool` manifest that pool_rows reads)
from clipcurate.core import manifest as mf
from clipcurate.core.uid import pair_uid

REPO = Path(__file__).resolve().parents[1]
PUBLIC = "cdn.public-example.com"


def pool_rows(ws) -> list[dict]:
    return mf.read_all("pool", ws.root).to_pylist()


def check_pool_consistent(ws, n_input: int) -> list[dict]:
    """Every input row once; every success row has its three files in its tar, sha256 matching."""
    import hashlib

    rows = pool_rows(ws)
    assert len(rows) == n_input
    assert len({r["uid"] for r in rows}) == n_input, "duplicate uids in the pool manifest"
    by_shard = collections.defaultdict(list)
    for r in rows:
        by_shard[r["shard"]].append(r)
        assert (r["error"] is None) == (r["status"] == "success")
    for shard, rs in by_shard.items():
        assert (ws.root / "pool" / f"{shard}.done").exists()
        with tarfile.open(ws.root / "pool" / "shards" / f"{shard}.tar") as tf:
            members = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}
        ok = [r for r in rs if r["status"] == "success"]
        assert len(members) == 3 * len(ok)
        for r in ok:
            data = members[f"{r['key']}.jpg"]
            assert hashlib.sha256(data).hexdigest() == r["sha256"]
            assert json.loads(members[f"{r['key']}.json"])["uid"] == r["uid"]
            assert members[f"{r['key']}.txt"].decode() == r["caption"]
    return rows


@pytest.mark.slow
def test_hostile_content_and_safety(ws, cli, tmp_path):
    """One run, safety on: ok images, every failure route, and the private/loopback urls.

    Two img2dataset worker processes: the fetch hook (address checks on every redirect hop) must
    be in force inside the workers, not only in the process that plans."""
    with ImageServer(slow_seconds=4, trickle_seconds=15, ipv6=True) as srv:
        ok = [(f"http://{PUBLIC}:{srv.port}/img/{i}.jpg", srv.caption(i)) for i in range(12)]
        ok.append((f"http://{PUBLIC}:{srv.port}/img/12.png", srv.caption(12)))
        bad = [(f"http://{PUBLIC}:{srv.port}{p}", f"route {p}") for p in EXPECTED]
        private = [(srv.url("/img/100.jpg"), "loopback"), ("http://10.0.0.1/img/101.jpg", "rfc1918"),
                   ("http://169.254.169.254/latest/meta-data/", "metadata"),
                   (f"http://[::1]:{srv.port6 or srv.port}/img/102.jpg", "ipv6 loopback"),
                   ("ftp://example.com/a.jpg", "ftp"), ("not a url", "junk")]
        write_urls(tmp_path / "urls.parquet", ok + bad + private)
        (ws.root / "clipcurate.toml").write_text(
            "[download]\n"
            f'allow_hosts = ["{PUBLIC}"]\n'
            "timeout = 1.5\nfetch_deadline = 2.5\nmax_body_bytes = 2000000\nprocesses = 2\nthreads = 32\n"
            "samples_per_shard = 16\nimage_size = 32\n"
            f'[download.hosts]\n"{PUBLIC}" = "127.0.0.1"\n')
        res = cli("-w", ws.root, "download", "--input", tmp_path / "urls.parquet", "--format", "json")
        assert res.code == 0, res.err
        hits, hosts = dict(srv.hits), dict(srv.hosts)

    summary = {json.loads(line)["status"]: json.loads(line)["rows"] for line in res.out.splitlines()}
    n = len(ok) + len(bad) + len(private)
    assert summary["total"] == n
    rows = check_pool_consistent(ws, n)
    got = collections.Counter((r["status"], r["error"]) for r in rows)
    want = collections.Counter(EXPECTED.values())
    want[("success", None)] += len(ok)
    want[("refused", "refused: loopback address")] += 2
    want[("refused", "refused: private address")] += 1
    want[("refused", "refused: link-local address")] += 1
    want[("refused", "refused: scheme 'ftp'")] += 1
    want[("failed", "invalid url")] += 1
    assert got == want
    # No request reached the loopback server under its own address: only the allowed name was used.
    assert set(hosts) == {f"{PUBLIC}:{srv.port}"}
    assert hits.get("/img/100.jpg", 0) == hits.get("/img/102.jpg", 0) == hits.get("/redirect-target.jpg", 0) == 0
    assert hits["/redirect-private"] == 1
    # Stored images are resized by img2dataset (border mode → square) and their uids are pair_uids.
    ok_rows = [r for r in rows if r["status"] == "success"]
    assert {(r["width"], r["height"]) for r in ok_rows} == {(32, 32)}
    assert {r["uid"] for r in ok_rows} == {pair_uid(u, c) for u, c in ok}
    # The canned report answers "how many failed and why".
    rep = cli("-w", ws.root, "sql", "download-failures", "--format", "json")
    assert rep.code == 0
    report = {(d["status"], d["reason"]): d["n"] for d in map(json.loads, rep.out.splitlines())}
    assert report[("success", "")] == len(ok) and report[("failed", "HTTP 404")] == 1
    st = cli("-w", ws.root, "status", "--format", "json")
    (row,) = [d for d in map(json.loads, st.out.splitlines()) if d["stage"] == "download"]
    assert row["state"] == "done" and row["rows"]["pool"] == n
    # A rerun has nothing left to do.
    again = cli("-w", ws.root, "download", "--input", tmp_path / "urls.parquet")
    assert again.code == 0 and "already done" in again.err


@pytest.mark.slow
def test_allow_private_fetches_loopback_csv_input(ws, cli, tmp_path):
    """--allow-private fetches 127.0.0.1 and [::1]; a CSV with its own column names works too."""
    with ImageServer(ipv6=True) as srv:
        urls = [srv.url(f"/img/{i}.jpg") for i in range(4)]
        if srv.port6:
            urls.append(srv.url6("/img/9.jpg"))
        urls.append(srv.url("/img/1.jpg"))  # a duplicate (same url + caption) is skipped once
        caps = [f"cap {u.rsplit('/', 1)[-1]}" for u in urls]
        pacsv.write_csv(pa.table({"URL": urls, "TEXT": caps}), tmp_path / "laion.csv")
        base = ["-w", ws.root, "download", "--input", tmp_path / "laion.csv", "--url-col", "URL",
                "--caption-col", "TEXT", "--processes", "1", "--timeout", "2", "--image-size", "32"]
        refused = cli(*base)
        assert refused.code == 0, refused.err
        assert {r["status"] for r in pool_rows(ws)} == {"refused"}
        assert srv.total == 0
        res = cli(*base, "--allow-private", "--force")
        assert res.code == 0, res.err
    rows = check_pool_consistent(ws, len(urls) - 1)
    assert all(r["status"] == "success" for r in rows), [r["error"] for r in rows]
    assert {r["url"] for r in rows} == set(urls)


@pytest.mark.slow
def test_cli_errors_are_one_line(ws, cli, tmp_path):
    res = cli("-w", ws.root, "download")
    assert res.code == 1 and "clipcurate queries match" in res.err and "Traceback" not in res.err
    write_urls(tmp_path / "u.parquet", [("http://example.com/a.jpg", "a")])
    res = cli("-w", ws.root, "download", "--input", tmp_path / "u.parquet", "--url-col", "URL")
    assert res.code == 1 and "'URL'" in res.err and "--url-col" in res.err
    res = cli("-w", ws.root, "download", "--input", tmp_path / "nope.csv")
    assert res.code == 1 and "not found" in res.err
    res = cli("-w", ws.root, "download", "--input", tmp_path / "u.parquet", "--resize-mode", "squash")
    assert res.code == 1 and "'squash'" in res.err


def test_changed_input_needs_force(ws, tmp_path):
    import clipcurate.download as dl
    from clipcurate.core.errors import ClipcurateError
    from clipcurate.core.stage import mark_done

    write_urls(tmp_path / "a.parquet", [(f"http://example.com/{i}.jpg", "x") for i in range(5)])
    write_urls(tmp_path / "b.parquet", [(f"http://example.com/{i}.jpg", "y") for i in range(5)])
    shards = dl.plan(ws, tmp_path / "a.parquet", {"samples_per_shard": 2})
    assert shards == ["00000", "00001", "00002"]
    assert dl.plan(ws, tmp_path / "a.parquet", {"samples_per_shard": 2}) == shards  # reused
    mark_done(ws.root / "pool", "00000")
    with pytest.raises(ClipcurateError, match="--force"):
        dl.plan(ws, tmp_path / "b.parquet", {"samples_per_shard": 2})
    assert dl.plan(ws, tmp_path / "b.parquet", {"samples_per_shard": 2}, force=True) == shards
    assert not (ws.root / "pool" / "00000.done").exists()
    # a pool written without a plan (write_pool_shard) is not silently replaced either
    shutil.rmtree(ws.root / "pool")
    dl.write_pool_shard(ws, "00000", [{"url": "http://example.com/z.jpg", "caption": "z"}])
    with pytest.raises(ClipcurateError, match="--force"):
        dl.plan(ws, tmp_path / "a.parquet", {"samples_per_shard": 2})


def _runner_pids(marker: str) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if marker in (p / "cmdline").read_bytes().decode("utf-8", "replace"):
                    pids.append(int(p.name))
            except OSError:
                pass
    return pids


@pytest.mark.slow
def test_kill9_then_rerun_matches_uninterrupted(tmp_path):
    """SIGKILL `clipcurate download` mid-run, rerun: same successful uids as an uninterrupted run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPCURATE_")}
    env["PYTHONPATH"] = str(REPO)
    with ImageServer(image_delay=0.15) as srv:
        rows = [(srv.url(f"/img/{i}.jpg"), srv.caption(i)) for i in range(28)]
        rows += [(srv.url("/404"), "missing"), (srv.url("/not-an-image"), "junk")]
        write_urls(tmp_path / "urls.parquet", rows)

        def cmd(ws):
            return [sys.executable, "-m", "clipcurate", "-q", "-w", str(ws), "download", "--input",
                    str(tmp_path / "urls.parquet"), "--allow-private", "--samples-per-shard", "10",
                    "--processes", "1", "--threads", "4", "--timeout", "3"]

        # the interrupted run: kill -9 once the first shard is finished, before the last one
        killed = tmp_path / "killed"
        proc = subprocess.Popen(cmd(killed), cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 120 and proc.poll() is None:
            if list((killed / "pool").glob("*.done")):
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done_before = len(list((killed / "pool").glob("*.done")))
        assert 1 <= done_before < 3
        # the img2dataset child and its workers die with it (no orphans keep fetching)
        t0 = time.monotonic()
        while _runner_pids(str(killed)) and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        assert _runner_pids(str(killed)) == []
        rerun = subprocess.run(cmd(killed), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr

        full = tmp_path / "full"
        straight = subprocess.run(cmd(full), cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert straight.returncode == 0, straight.stderr

    from clipcurate.core.workspace import Workspace

    a = check_pool_consistent(Workspace(killed), len(rows))
    b = check_pool_consistent(Workspace(full), len(rows))
    ok_a = sorted(r["uid"] for r in a if r["status"] == "success")
    ok_b = sorted(r["uid"] for r in b if r["status"] == "success")
    assert ok_a == ok_b and len(ok_a) == 28
    assert sorted((r["uid"], r["key"], r["status"], r["error"]) for r in a) == \
           sorted((r["uid"], r["key"], r["status"], r["error"]) for r in b)
    assert not list((killed / "pool").rglob(".tmp-*"))
    assert pq.read_table(killed / "pool" / "manifest" / "00000.parquet").num_rows == 10


@pytest.mark.slow
def test_stalled_img2dataset_is_stopped_and_the_run_ends(ws, cli, tmp_path, monkeypatch):
    """The watchdog: when img2dataset's output stops growing for stall_timeout seconds the child
    is killed; after the retry round the command ends with one line that says to rerun."""
    monkeypatch.setenv("CLIPCURATE_DOWNLOAD__HOSTS", f"{PUBLIC}=127.0.0.1")
    monkeypatch.setenv("CLIPCURATE_DOWNLOAD__STALL_TIMEOUT", "3")
    with ImageServer(trickle_seconds=60) as srv:
        write_urls(tmp_path / "u.parquet", [(f"http://{PUBLIC}:{srv.port}/trickle", "stuck")])
        t = time.monotonic()
        res = cli("-w", ws.root, "download", "--input", tmp_path / "u.parquet", "--allow-host", PUBLIC,
                  "--processes", "1", "--fetch-deadline", "60", "--timeout", "30")
        took = time.monotonic() - t
    assert res.code == 1
    assert "did not finish" in res.err and "rerun" in res.err and "Traceback" not in res.err
    assert took < 55  # two stalled rounds, not the 60 s fetch deadline
    assert not (ws.root / "pool" / "00000.done").exists()
    assert _runner_pids(str(ws.root)) == []


def test_candidates_input_carries_uids_and_query_ids(ws, cli):
    """The default input is candidates/candidates.parquet (queries match): its uids and entry_ids
    become the pool's uids and query_ids. Loopback urls are refused by default, so no fetch runs."""
    (ws.root / "candidates").mkdir()
    uids = [f"{i:032x}" for i in range(3)]
    pq.write_table(pa.table({
        "uid": uids, "url": [f"http://127.0.0.1:9/{i}.jpg" for i in range(3)], "caption": ["a", "b", None],
        "entry_ids": pa.array([[1, 5], [], [7]], pa.list_(pa.int32()))}), ws.root / "candidates" / "candidates.parquet")
    res = cli("-w", ws.root, "download", "--format", "csv")
    assert res.code == 0, res.err
    assert "refused,3" in res.out
    rows = sorted(pool_rows(ws), key=lambda r: r["uid"])
    assert [r["uid"] for r in rows] == uids
    assert [r["query_ids"] for r in rows] == [[1, 5], [], [7]]
    assert [r["caption"] for r in rows] == ["a", "b", ""]
    assert {r["error"] for r in rows} == {"refused: loopback address"}
