"""The Ray executor: same outputs as the local one, and a killed or failed run resumes without duplicates.

One local Ray (2 CPUs) serves the whole module; the per-shard work is the toy stage in
tests/_ray_helpers.py (shard → float16 vectors + uids, written atomically, marker last).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import _ray_helpers as H
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.executor import get_executor
from clipcurate.core.stage import SUCCESS, Stage, is_done, stage_state

pytestmark = [pytest.mark.ray, pytest.mark.slow]
ray = pytest.importorskip("ray")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_session():
    # The tests folder is not on the workers' path: ship the helpers' functions by value.
    ray.cloudpickle.register_pickle_by_value(H)
    ctx = ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2,
                   logging_level=logging.WARNING)
    yield ctx
    ray.shutdown()


def _local_reference(root: Path, shards, **kw):
    infos = get_executor("local").map_shards(functools.partial(H.toy_work, root, **kw), shards,
                                             folder=root / "out")
    return infos, H.read_outputs(root)


def test_tasks_match_local_and_keep_input_order(ray_session, tmp_path):
    shards = H.shard_names(6)
    want_infos, (want_uids, want_vecs) = _local_reference(tmp_path / "local", shards)
    ex = get_executor("ray")
    infos = ex.map_shards(functools.partial(H.toy_work, tmp_path / "ray"), shards, folder=tmp_path / "ray" / "out")
    uids, vecs = H.read_outputs(tmp_path / "ray")
    assert uids == want_uids and len(set(uids)) == len(uids) == 6 * H.ROWS
    np.testing.assert_array_equal(vecs, want_vecs)
    assert [i["rows"] for i in infos] == [i["rows"] for i in want_infos] == [H.ROWS] * 6
    assert all(is_done(tmp_path / "ray" / "out", s) for s in shards)
    # Without a folder nothing is marked and results come back in input order, not finish order.
    squares = ex.map_shards(lambda s: int(s) ** 2, list(reversed(shards)))
    assert squares == [int(s) ** 2 for s in reversed(shards)]


def test_actor_pool_loads_model_once_per_actor(ray_session, tmp_path):
    shards = H.shard_names(8)
    model = H.load_model(tmp_path / "ref")
    ref = tmp_path / "local"
    for s in shards:
        H.toy_work(ref, s, model)
    want_uids, want_vecs = H.read_outputs(ref)

    root = tmp_path / "ray"
    infos = get_executor("ray").map_shards(
        lambda shard, m: H.toy_work(root, shard, m), shards, folder=root / "out",
        setup=functools.partial(H.load_model, root), gpu=True)  # gpu=True: no GPU here → CPU actors
    uids, vecs = H.read_outputs(root)
    assert uids == want_uids
    np.testing.assert_allclose(vecs.astype(np.float32), want_vecs.astype(np.float32), atol=1e-3)
    assert len(infos) == 8
    setups = len(list((root / "setups").iterdir()))
    assert 1 <= setups <= 2  # one per actor (2 CPUs → at most 2 actors), not one per shard
    assert sorted(H.runs_of(root)) == shards


class ToyStage(Stage):
    name = "toy"

    def __init__(self, root: Path, n: int, force: bool = False):
        super().__init__(Path(root) / "out", force=force)
        self.root, self.n, self.model = Path(root), n, None

    def shards(self):
        return H.shard_names(self.n)

    def run_shard(self, shard):
        if self.model is None:  # cached on self: once per actor with run_stage(actors=True)
            self.model = H.load_model(self.root)
        return H.toy_work(self.root, shard, self.model)


def test_run_stage_matches_stage_run(ray_session, tmp_path):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    want = get_executor("local").run_stage(ToyStage(tmp_path / "local", 5))
    got = get_executor("ray").run_stage(ToyStage(tmp_path / "ray", 5), actors=True)
    assert got.counts == want.counts == {"rows": 5 * H.ROWS}
    assert got.shards_total == got.shards_done == 5
    assert (tmp_path / "ray" / "out" / SUCCESS).exists()
    assert stage_state(tmp_path / "ray" / "out") == ("done", 5, 5)
    assert H.read_outputs(tmp_path / "ray")[0] == H.read_outputs(tmp_path / "local")[0]
    # A rerun skips every shard; --force redoes them all.
    again = get_executor("ray").run_stage(ToyStage(tmp_path / "ray", 5), actors=True)
    assert again.shards_skipped == 5 and len(H.runs_of(tmp_path / "ray")) == 5
    get_executor("ray").run_stage(ToyStage(tmp_path / "ray", 5, force=True))
    assert len(H.runs_of(tmp_path / "ray")) == 10


def test_failed_shard_then_rerun_finishes_without_duplicates(ray_session, tmp_path):
    shards = H.shard_names(6)
    root = tmp_path / "ray"
    fn = functools.partial(H.toy_work, root, fail_once="00002")
    ex = get_executor("ray")
    with pytest.raises(ClipcurateError, match=r"shard 00002: planted failure on shard 00002 .*rerun to resume"):
        ex.map_shards(fn, shards, folder=root / "out")
    assert not is_done(root / "out", "00002")
    first = H.runs_of(root)
    ex.map_shards(fn, shards, folder=root / "out")
    second = H.runs_of(root)
    # The rerun ran the failed shard and whatever had not started; no finished shard ran twice.
    rerun = list(second)
    for s in first:
        rerun.remove(s)
    assert "00002" in rerun and not set(rerun) & (set(first) - {"00002"})
    assert sorted(set(second)) == shards
    uids, vecs = H.read_outputs(root)
    _local_reference(tmp_path / "local", shards)
    want_uids, want_vecs = H.read_outputs(tmp_path / "local")
    assert uids == want_uids and len(set(uids)) == len(uids)
    np.testing.assert_array_equal(vecs, want_vecs)


def test_sigkilled_driver_then_rerun_resumes(ray_session, tmp_path):
    """A driver connected to the cluster is SIGKILLed mid-run; a new driver finishes the job."""
    shards = H.shard_names(10)
    root = tmp_path / "ray"
    script = textwrap.dedent(f"""
        import functools, logging, sys
        sys.path[:0] = [{str(REPO / 'tests')!r}, {str(REPO)!r}]
        import ray, _ray_helpers as H
        from clipcurate.core.executor import get_executor
        ray.cloudpickle.register_pickle_by_value(H)
        ray.init(address={ray_session.address_info['address']!r}, logging_level=logging.WARNING)
        get_executor("ray").map_shards(functools.partial(H.toy_work, {str(root)!r}, sleep=0.5),
                                       H.shard_names(10), folder={str(root / 'out')!r})
        print("finished", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and sum(is_done(root / "out", s) for s in shards) < 3:
            assert proc.poll() is None, "driver ended before it could be killed"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    done_before = {s for s in shards if is_done(root / "out", s)}
    assert 3 <= len(done_before) < len(shards), "kill came too late to test resuming"
    time.sleep(1.0)  # let Ray reap the dead driver's workers
    done_before = {s for s in shards if is_done(root / "out", s)}
    runs_before = H.runs_of(root)

    infos = get_executor("ray").map_shards(functools.partial(H.toy_work, root), shards, folder=root / "out")
    assert [i["rows"] for i in infos] == [H.ROWS] * 10
    rerun = list(H.runs_of(root))
    for s in runs_before:
        rerun.remove(s)
    assert not set(rerun) & done_before  # finished shards were skipped
    uids, vecs = H.read_outputs(root)
    _local_reference(tmp_path / "local", shards)
    want_uids, want_vecs = H.read_outputs(tmp_path / "local")
    assert uids == want_uids and len(set(uids)) == len(uids) == 10 * H.ROWS
    np.testing.assert_array_equal(vecs, want_vecs)


# -- the stages on Ray: same manifests as the local executor on the same input --------------------

def _pool_files(ws):
    """Every pool manifest row and every tar member (name → bytes), shard by shard."""
    import tarfile

    import pyarrow.parquet as pq

    rows = []
    for p in sorted(ws.path("pool", "manifest").glob("*.parquet")):
        rows += pq.read_table(p).to_pylist()
    members = {}
    for p in sorted(ws.path("pool", "shards").glob("*.tar")):
        with tarfile.open(p) as tf:
            for m in tf:
                if m.isfile():
                    members[f"{p.stem}/{m.name}"] = tf.extractfile(m).read()
    return rows, members


def test_download_on_ray_matches_local_and_keeps_url_safety(ray_session, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from _download_server import ImageServer
    from clipcurate.download import download
    from clipcurate.core.workspace import Workspace

    with ImageServer(slow_seconds=3) as srv:
        # cdn.test is a "public" name mapped to the loopback server and exempted by allow_hosts;
        # plain 127.0.0.1 urls must be refused, and so must the redirect from cdn.test to 127.0.0.1.
        urls = [srv.url(f"/img/{i}.jpg", host="cdn.test") for i in range(6)]
        urls += [srv.url("/img/100.jpg"), srv.url("/img/101.jpg"), srv.url("/404", host="cdn.test"),
                 srv.url("/not-an-image", host="cdn.test"), srv.url("/redirect-private", host="cdn.test")]
        src = tmp_path / "urls.parquet"
        pq.write_table(pa.table({"url": urls, "caption": [f"caption {i}" for i in range(len(urls))]}), src)
        cfg = {"samples_per_shard": 6, "processes": 1, "threads": 4, "timeout": 2.0, "fetch_deadline": 4.0,
               "allow_hosts": ["cdn.test"], "hosts": {"cdn.test": "127.0.0.1"}}
        runs = {}
        for name, kw in (("local", {}), ("ray", {"executor": get_executor("ray")}),
                         ("i2d-ray", {"cfg_extra": {"distributor": "ray"}})):
            ws = Workspace(tmp_path / name)
            res = download(ws, src, cfg=dict(cfg, **kw.pop("cfg_extra", {})), **kw)
            runs[name] = (res, _pool_files(ws))
        hits = dict(srv.hits)
    want_res, (want_rows, want_members) = runs["local"]
    assert want_res.counts == {"rows": 11, "success": 6, "failed": 2, "refused": 3}
    for name in ("ray", "i2d-ray"):
        res, (rows, members) = runs[name]
        assert res.counts == want_res.counts, name
        assert rows == want_rows, name  # same uids, keys, statuses, reasons, sizes, sha256
        assert members == want_members, name
    # The safety checks ran where the fetching happened: nothing was ever sent to the refused urls.
    for path in ("/img/100.jpg", "/img/101.jpg", "/redirect-target.jpg"):
        assert hits.get(path, 0) == 0, path


def test_embed_on_ray_matches_local(ray_session, tmp_path):
    import pyarrow.parquet as pq

    from _embed_helpers import TINY, make_pool
    from clipcurate.embed import embed_pool
    from clipcurate.core.models import ModelSpec
    from clipcurate.core.stage import done_info
    from clipcurate.core.workspace import Workspace

    spec = ModelSpec(TINY, None)
    out = {}
    for name, ex in (("local", None), ("ray", get_executor("ray"))):
        ws = Workspace(tmp_path / name)
        make_pool(ws, shards=3, per_shard=6, bad={1: 1}, size=40)
        tag = embed_pool(ws, spec, device="cpu", batch_size=4, workers=0, executor=ex)
        out[name] = (tag, ws.path("embed", tag, "pool"))
    (tag, want), (tag_ray, got) = out["local"], out["ray"]
    assert tag == tag_ray
    for s in ("00000", "00001", "00002"):
        assert pq.read_table(got / f"{s}.parquet").equals(pq.read_table(want / f"{s}.parquet"))  # same uids, rows
        for suffix in (".npy", ".text.npy"):
            a, b = np.load(got / f"{s}{suffix}"), np.load(want / f"{s}{suffix}")
            assert a.dtype == b.dtype == np.float16 and a.shape == b.shape
            np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=2e-3)
        keep = ("n", "n_bad", "bad", "tar_size")
        assert {k: done_info(got, s)[k] for k in keep} == {k: done_info(want, s)[k] for k in keep}
    assert done_info(got, "00001")["n_bad"] == 1
    assert (got / SUCCESS).exists()


def test_overlap_on_ray_gives_the_same_pairs_and_splits(ray_session, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    from _overlap_helpers import TAG, make_workspace
    from clipcurate import overlap
    from clipcurate.core.workspace import Workspace

    plants = [("cifar10", 0, 0, 3, 0.97), ("cifar10", 1, 2, 5, 0.9), ("stl10", 2, 1, 7, 0.96), ("stl10", 3, 3, 0, 0.88)]
    import clipcurate.overlap.searchrun as executor_mod

    got = {}
    # "ray": one shard per task (4 shards, 2 slots); "ray-runs": runs of 2 consecutive shards per task.
    for name, ex, runs_per_slot in (("local", None, 4), ("ray", get_executor("ray"), 4),
                                    ("ray-runs", get_executor("ray"), 1)):
        monkeypatch.setattr(executor_mod, "RUNS_PER_SLOT", runs_per_slot)
        ws = Workspace(tmp_path / name)
        make_workspace(ws.root, shards=4, per_shard=60, plants=plants)
        # An exact tie across shards: pool row 0/3 copied into shard 2 row 9; rank breaks it by position.
        pool = ws.path("embed", TAG, "pool")
        x0, x2 = np.load(pool / "00000.npy"), np.load(pool / "00002.npy")
        x2[9] = x0[3]
        np.save(pool / "00002.npy", x2)
        res = overlap.run(ws, {"k": 3}, executor=ex)
        got[name] = (res, {n: pq.read_table(ws.path("overlap", f"{n}.parquet")).to_pylist()
                           for n in ("pairs", "splits", "decontam", "review_queue", "neighbors")})
    (res_l, want), (res_r, have) = got["local"], got["ray"]
    for n in want:
        assert have[n] == want[n], n
        assert got["ray-runs"][1][n] == want[n], n
    assert sorted(p.name for p in (tmp_path / "ray-runs" / "overlap" / "search" / "ray_topk").glob("*.done")) == \
        ["00000-00001.done", "00002-00003.done"]
    tied = [p for p in want["pairs"] if p["benchmark"] == "cifar10" and p["bench_index"] == 0]
    assert len(tied) == 2 and sorted(p["rank"] for p in tied) == [1, 2]
    assert res_r.search["pairs_scored"] == res_l.search["pairs_scored"]
    # The stage's own resume point: a rerun finds every shard searched and searches none.
    again = overlap.run(Workspace(tmp_path / "ray"), {"k": 3}, executor=get_executor("ray"))
    assert again.search["shards_searched"] == 0


def test_overlap_cli_with_executor_ray(ray_session, ws, cli, tmp_path):
    from _overlap_helpers import make_workspace

    plants = [("cifar10", 0, 0, 3, 0.97), ("stl10", 2, 1, 7, 0.9)]
    local = tmp_path / "local"
    for root in (ws.root, local):
        make_workspace(root, shards=3, per_shard=40, plants=plants)
    r_ray = cli("-w", ws.root, "overlap", "--executor", "ray", "--format", "json")
    r_local = cli("-w", local, "overlap", "--format", "json")
    assert r_ray.code == 0 and r_local.code == 0, r_ray.err
    assert r_ray.out == r_local.out and '"n_overlap": 1' in r_ray.out
    assert (ws.root / "overlap" / "search" / "ray_topk" / "00002-00002.done").exists()  # it did run on Ray


def test_hashes_on_ray_match_local(ray_session, ws, cli, tmp_path):
    import pyarrow.parquet as pq

    from _embed_helpers import make_pool
    from clipcurate.core.workspace import Workspace

    local = Workspace(tmp_path / "local")
    for w in (ws, local):
        make_pool(w, shards=3, per_shard=5, bad={2: 1}, size=40)
    r_ray = cli("-w", ws.root, "detector", "hashes", "--executor", "ray")
    r_local = cli("-w", local.root, "detector", "hashes")
    assert r_ray.code == 0 and r_local.code == 0, r_ray.err
    assert r_ray.out == r_local.out
    for s in ("00000", "00001", "00002"):
        a = pq.read_table(ws.path("hashes", "pool", f"{s}.parquet"))
        assert a.equals(pq.read_table(local.path("hashes", "pool", f"{s}.parquet"))) and a.num_rows >= 5
    assert stage_state(ws.path("hashes")) == ("done", 3, 3)
