"""Stage `curate`: pool − failed − decontaminated, resharded, streaming, idempotent, refusals."""

from __future__ import annotations

import argparse
import json
import tarfile

import pytest

from tests._curate_helpers import make_pool, write_decontam


def _tar_samples(path):
    out = {}
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            key, _, ext = m.name.partition(".")
            out.setdefault(key, {})[ext] = tf.extractfile(m).read()
    return out


def _expected(rows, decontam):
    return sorted((r["shard"], r["key"], r["uid"]) for r in rows
                  if r["status"] == "success" and r["uid"] not in decontam)


def test_curate_keeps_success_minus_decontam_bytes_unchanged(ws):
    from clipcurate.core import manifest as mf
    from clipcurate.curate import curate

    rows = make_pool(ws, n=40, shards=3)
    ok = [r for r in rows if r["status"] == "success"]
    dropped = {ok[1]["uid"], ok[5]["uid"], ok[20]["uid"]}
    write_decontam(ws, sorted(dropped))
    res = curate(ws, shard_size=8)

    want = _expected(rows, dropped)
    got = mf.read_all("curated", ws.root).to_pylist()
    # same samples, in (pool shard, key) order, cut into shards of 8
    assert [g["uid"] for g in got] == [w[2] for w in want]
    assert [g["shard"] for g in got] == [f"{i // 8:05d}" for i in range(len(want))]
    assert res.samples == len(want) and res.shards == sorted({g["shard"] for g in got})
    assert res.counts["dropped_decontam"] == 3
    assert res.counts["dropped_not_success"] == len(rows) - len(ok)

    # every sample's bytes are the pool's bytes, under its uid
    pool = {}
    for s in sorted({r["shard"] for r in rows}):
        for key, files in _tar_samples(ws.path("pool", "shards", f"{s}.tar")).items():
            pool[json.loads(files["json"])["uid"]] = files
    sizes = json.loads(ws.path("curate", "shards", "sizes.json").read_text())
    seen = []
    for shard in res.shards:
        samples = _tar_samples(ws.path("curate", "shards", f"{shard}.tar"))
        assert sizes[f"{shard}.tar"] == len(samples)
        for uid, files in samples.items():
            assert files == pool[uid]
            seen.append(uid)
    assert sorted(seen) == sorted(w[2] for w in want)
    by_uid = {g["uid"]: g["caption"] for g in got}
    assert all(by_uid[u] == pool[u]["txt"].decode() for u in seen)
    stats = json.loads(ws.path("curate", "stats.json").read_text())
    assert stats["totals"]["samples"] == len(want) and set(stats["shards"]) == set(res.shards)


@pytest.mark.slow
def test_stock_open_clip_loader_reads_the_shards(ws):
    """open_clip_train's own webdataset pipeline finds every sample and the sizes file.

    (Run inside train's in-process shim, which drops webdataset's end-of-shard markers that
    open_clip_train 3.3 cannot read — an incompatibility of the two libraries, see docs/train.md.)"""
    import torch
    from open_clip_train.data import get_dataset_size, get_wds_dataset
    from torchvision import transforms

    from clipcurate.curate import curate

    make_pool(ws, n=30, shards=2, fmt="png")
    res = curate(ws, shard_size=10, decontam=False)
    n, nshards = get_dataset_size(res.pattern)
    assert (n, nshards) == (res.samples, len(res.shards))
    args = argparse.Namespace(train_data=res.pattern, train_num_samples=None, dataset_resampled=False,
                              train_data_upsampling_factors=None, seed=0, batch_size=5, workers=0,
                              world_size=1)
    from clipcurate.train.stage import _open_clip_in_process

    with _open_clip_in_process(quiet=True):
        info = get_wds_dataset(args, transforms.Compose([transforms.Resize((16, 16)), transforms.ToTensor()]),
                               is_train=True, tokenizer=lambda t: torch.zeros(1, 4, dtype=torch.long))
        images = sum(b[0].shape[0] for b in info.dataloader)
    assert info.dataloader.num_samples >= res.samples and images == info.dataloader.num_samples


def test_rerun_is_idempotent_and_resumes_an_unfinished_shard(ws):
    from clipcurate.curate import curate

    make_pool(ws, n=30, shards=2)
    write_decontam(ws, [])
    res = curate(ws, shard_size=7)
    tars = {s: ws.path("curate", "shards", f"{s}.tar").read_bytes() for s in res.shards}
    # a killed run: the last shard's marker is missing and its tar half written
    ws.path("curate", f"{res.shards[-1]}.done").unlink()
    ws.path("curate", "_SUCCESS").unlink()
    p = ws.path("curate", "shards", f"{res.shards[-1]}.tar")
    p.write_bytes(p.read_bytes()[:700])
    res2 = curate(ws, shard_size=7)
    assert res2.samples == res.samples
    assert {s: ws.path("curate", "shards", f"{s}.tar").read_bytes() for s in res.shards} == tars


def test_refuses_non_empty_output_from_other_inputs_unless_force(ws, cli):
    make_pool(ws, n=20, shards=1)
    write_decontam(ws, [])
    assert cli("-w", ws.root, "curate", "--shard-size", "5").code == 0
    # the decontamination list changed: old shards would silently mix in
    from clipcurate.core import manifest as mf

    uid = mf.read_all("curated", ws.root)["uid"][0].as_py()
    write_decontam(ws, [uid])
    r = cli("-w", ws.root, "curate", "--shard-size", "5")
    assert r.code == 1 and "--force" in r.err and "Traceback" not in r.err
    r = cli("-w", ws.root, "curate", "--shard-size", "5", "--force")
    assert r.code == 0, r.err
    assert uid not in mf.read_all("curated", ws.root)["uid"].to_pylist()
    assert "train-data:" in r.out


def test_missing_decontam_names_overlap_and_no_decontam_works(ws, cli):
    make_pool(ws, n=10, shards=1)
    r = cli("-w", ws.root, "curate")
    assert r.code == 1 and "clipcurate overlap" in r.err and "--no-decontam" in r.err
    r = cli("-w", ws.root, "curate", "--no-decontam")
    assert r.code == 0, r.err


def test_missing_pool_names_download(ws, cli):
    from tests._curate_helpers import ensure_manifests

    ensure_manifests()
    r = cli("-w", ws.root, "curate", "--no-decontam")
    assert r.code == 1 and "pool manifest" in r.err and "`clipcurate" in r.err


def test_empty_curated_set_is_one_line_exit_1(ws, cli):
    rows = make_pool(ws, n=8, shards=1)
    write_decontam(ws, [r["uid"] for r in rows])
    r = cli("-w", ws.root, "curate")
    assert r.code == 1 and "nothing to curate" in r.err
    assert len(r.err.strip().splitlines()) == 1


def test_truncated_pool_tar_is_counted_not_fatal(ws):
    from clipcurate.curate import curate

    rows = make_pool(ws, n=20, shards=2)
    p = ws.path("pool", "shards", "00001.tar")
    p.write_bytes(p.read_bytes()[:3000])
    res = curate(ws, shard_size=100, decontam=False)
    planned = sum(r["status"] == "success" for r in rows)
    assert 0 < res.samples < planned
    assert res.counts["skipped_missing"] == planned - res.samples


def test_all_set_keeps_the_decontaminated_samples_beside_the_clean_set(ws, cli):
    """`curate --set clean --set all`: the counterfactual's two training sets, side by side."""
    from clipcurate.core import manifest as mf
    from clipcurate.curate import read_sizes

    rows = make_pool(ws, n=30, shards=2)
    ok = [r["uid"] for r in rows if r["status"] == "success"]
    write_decontam(ws, ok[:4])
    r = cli("-w", ws.root, "curate", "--shard-size", "8", "--set", "clean", "--set", "all")
    assert r.code == 0, r.err
    assert sum(read_sizes(ws, "all").values()) == len(ok) and sum(read_sizes(ws).values()) == len(ok) - 4
    got_all = set()
    for tar in ws.path("curate", "all", "shards").glob("*.tar"):
        got_all |= set(_tar_samples(tar))
    assert got_all == set(ok)
    assert set(mf.read_all("curated", ws.root)["uid"].to_pylist()) == set(ok[4:])  # the manifest: clean only
    # redoing the clean set with --force leaves the all set alone
    write_decontam(ws, ok[:5])
    assert cli("-w", ws.root, "curate", "--shard-size", "8", "--force").code == 0
    assert sum(read_sizes(ws, "all").values()) == len(ok) and sum(read_sizes(ws).values()) == len(ok) - 5
    assert cli("-w", ws.root, "curate", "--set", "bogus").code == 2


def test_curated_bytes_do_not_depend_on_the_pool_tars_member_order(ws, tmp_path):
    """img2dataset's threads write a shard's members in completion order: the curated tars are the same."""
    import io
    import random

    from clipcurate.curate import curate

    make_pool(ws, n=24, shards=1, fail_every=0)
    write_decontam(ws, [])
    first = curate(ws, shard_size=10)
    before = {s: ws.path("curate", "shards", f"{s}.tar").read_bytes() for s in first.shards}
    src = ws.path("pool", "shards", "00000.tar")
    with tarfile.open(src) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    groups = {}
    for m, data in members:
        groups.setdefault(m.name.split(".")[0], []).append((m, data))
    keys = list(groups)
    random.Random(1).shuffle(keys)
    with tarfile.open(src, "w") as tf:
        for k in keys:
            for m, data in groups[k]:
                tf.addfile(m, io.BytesIO(data))
    curate(ws, shard_size=10, force=True)
    assert {s: ws.path("curate", "shards", f"{s}.tar").read_bytes() for s in first.shards} == before
