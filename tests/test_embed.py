"""Stage `embed`: outputs equal a direct model.encode_image, corrupt images, resume, readers."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from clipcurate import bench
from clipcurate import embed
from clipcurate.embed import stage as embed_stage
from clipcurate.core import models
from clipcurate.core import stage as core_stage
from clipcurate.bench import tar_samples as _tar_samples
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.workspace import Workspace

from _embed_helpers import TINY, captions_parquet, folder_tree, make_pool

REPO = Path(__file__).resolve().parents[1]
SPEC = models.ModelSpec(TINY, "random")
TAG = "clipcurate-tiny__random"


@pytest.fixture(scope="module")
def lm():
    return models.load(SPEC, device="cpu", precision="fp32")


def _direct(lm, tar: Path):
    """The reference: PIL open -> the model's preprocess -> encode_image, per sample, in tar order."""
    uids, pix, caps = [], [], []
    for key, files in _tar_samples(tar):
        try:
            with Image.open(io.BytesIO(files["jpg"])) as im:
                im.load()
                pix.append(lm.preprocess(im))
        except OSError:
            continue
        uids.append(json.loads(files["json"])["uid"])
        caps.append(files["txt"].decode())
    img = lm.encode_image(torch.stack(pix)).numpy()
    txt = lm.encode_text(lm.tokenizer(caps)).numpy()
    return uids, img, txt


def _outputs(ws, tag=TAG):
    return {s: (u, x) for s, u, x in embed.iter_pool(ws, tag)}


def test_pool_embeddings_equal_direct_encode_and_corrupt_images_are_counted(ws, lm):
    make_pool(ws, shards=2, per_shard=10, bad={1: 2})
    tag = embed.embed_pool(ws, SPEC, device="cpu", batch_size=4, workers=0)
    assert tag == TAG
    info = json.loads((ws.root / "embed" / TAG / "model.json").read_text())
    assert {k: info[k] for k in ("model", "pretrained", "tag", "dim", "kind")} == \
        {"model": TINY, "pretrained": "random", "tag": TAG, "dim": 64, "kind": "clip"}
    folder = ws.root / "embed" / TAG / "pool"
    for shard in ("00000", "00001"):
        uids, img, txt = _direct(lm, ws.root / "pool" / "shards" / f"{shard}.tar")
        x = np.load(folder / f"{shard}.npy")
        t = np.load(folder / f"{shard}.text.npy")
        assert x.dtype == np.float16 and x.shape == (10, 64)
        np.testing.assert_allclose(x.astype(np.float32), img, atol=2e-3)
        np.testing.assert_allclose(t.astype(np.float32), txt, atol=2e-3)
        np.testing.assert_allclose(np.linalg.norm(x.astype(np.float32), axis=1), 1, atol=2e-3)
        tbl = pq.read_table(folder / f"{shard}.parquet")
        assert tbl.column_names == ["model_tag", "source", "name", "row", "uid", "index"]
        assert tbl.column("uid").to_pylist() == uids
        assert tbl.column("row").to_pylist() == list(range(10))
        assert set(tbl.column("source").to_pylist()) == {"pool"} and tbl.column("index").null_count == 10
    marker = json.loads((folder / "00001.done").read_text())
    assert marker["n"] == 10 and marker["n_bad"] == 2 and "undecodable image" in marker["bad"][0]
    assert (folder / "_SUCCESS").exists() and (ws.root / "embed" / "_SUCCESS").exists()


def test_workers_and_batch_size_do_not_change_outputs(ws, tmp_path):
    make_pool(ws, shards=3, per_shard=7)
    embed.embed_pool(ws, SPEC, device="cpu", batch_size=3, workers=0)
    a = _outputs(ws)
    ws2 = Workspace(tmp_path / "ws2")
    ws2.create()
    make_pool(ws2, shards=3, per_shard=7)
    embed.embed_pool(ws2, SPEC, device="cpu", batch_size=5, workers=2)
    b = _outputs(ws2)
    assert a.keys() == b.keys() == {"00000", "00001", "00002"}
    for s in a:
        assert a[s][0] == b[s][0]
        np.testing.assert_allclose(a[s][1].astype(np.float32), b[s][1].astype(np.float32), atol=2e-3)


def test_resume_after_crash_skips_finished_shards(ws, monkeypatch, capsys):
    make_pool(ws, shards=3, per_shard=5)
    real = core_stage.mark_done
    calls = []

    def crash_after_first(folder, shard, info=None):
        calls.append(shard)
        real(folder, shard, info)
        if len(calls) == 1:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(core_stage, "mark_done", crash_after_first)
    with pytest.raises(KeyboardInterrupt):
        embed.embed_pool(ws, SPEC, device="cpu", batch_size=2, workers=0)
    folder = ws.root / "embed" / TAG / "pool"
    assert sorted(p.stem for p in folder.glob("*.done")) == ["00000"]
    assert not (folder / "_SUCCESS").exists()
    first = (folder / "00000.done").read_text()
    monkeypatch.setattr(core_stage, "mark_done", real)
    capsys.readouterr()
    embed.embed_pool(ws, SPEC, device="cpu", batch_size=2, workers=0)
    assert "1/3 pool shards already done" in capsys.readouterr().err
    assert (folder / "00000.done").read_text() == first  # not redone
    assert sorted(_outputs(ws)) == ["00000", "00001", "00002"]
    # a shard whose tar changed since (re-downloaded) is redone
    tar = ws.root / "pool" / "shards" / "00001.tar"
    os.utime(tar, ns=(time.time_ns(), time.time_ns() + 10**9))
    capsys.readouterr()
    embed.embed_pool(ws, SPEC, device="cpu", batch_size=2, workers=0)
    assert "2/3 pool shards already done" in capsys.readouterr().err


@pytest.mark.slow
def test_kill9_then_rerun_gives_the_clean_result(ws, tmp_path):
    """A real SIGKILL mid-run (subprocess): the rerun finishes and equals an uninterrupted run."""
    make_pool(ws, shards=4, per_shard=8)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "clipcurate", "-w", str(ws.root), "-q", "embed", "-m", TINY, "-p", "random",
           "--device", "cpu", "-j", "0", "-b", "2"]
    folder = ws.root / "embed" / TAG / "pool"
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(folder.glob("*.done")):
        time.sleep(0.01)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = sorted(p.stem for p in folder.glob("*.done"))
    r = subprocess.run(cmd[:5] + cmd[6:], env=env, capture_output=True, text=True)  # without -q
    assert r.returncode == 0, r.stderr
    if killed and 0 < len(done_before) < 4:
        assert f"{len(done_before)}/4 pool shards already done" in r.stderr
    ws2 = Workspace(tmp_path / "clean")
    ws2.create()
    make_pool(ws2, shards=4, per_shard=8)
    embed.embed_pool(ws2, SPEC, device="cpu", batch_size=2, workers=0)
    a, b = _outputs(ws), _outputs(ws2)
    assert a.keys() == b.keys()
    for s in a:
        assert a[s][0] == b[s][0]
        np.testing.assert_array_equal(a[s][1], b[s][1])
    assert not list(folder.glob(".tmp-*"))


def test_benchmarks_images_zero_shot_weights_and_captions(ws, tmp_path, lm):
    bench.add(ws, "tree", str(folder_tree(tmp_path / "tree")))
    bench.add(ws, "caps", str(captions_parquet(tmp_path / "c.parquet")))
    tag = embed.embed_benchmarks(ws, SPEC, device="cpu", batch_size=4, workers=0)
    idx, uids, image, classes, captions, cap_index = embed.load_bench(ws, tag, "tree")
    b = bench.load(ws, "tree")
    assert idx.tolist() == b.samples.column("index").to_pylist() and uids == b.samples.column("uid").to_pylist()
    pix = torch.stack([lm.preprocess(Image.open(io.BytesIO(d))) for d in b.samples.column("image").to_pylist()])
    np.testing.assert_allclose(image.astype(np.float32), lm.encode_image(pix).numpy(), atol=2e-3)
    # zero-shot weights: per class, mean of normalised prompt embeddings, renormalised
    ref = []
    for c in b.classes:
        e = lm.encode_text(lm.tokenizer([t.replace("{}", c) for t in b.templates])).numpy().mean(0)
        ref.append(e / np.linalg.norm(e))
    np.testing.assert_allclose(classes.astype(np.float32), np.stack(ref), atol=2e-3)
    assert captions is None and cap_index is None
    idx, uids, image, classes, captions, cap_index = embed.load_bench(ws, tag, "caps")
    assert classes is None and image.shape == (4, 64)
    assert cap_index.tolist() == [0, 1, 1, 2, 2, 2, 3]
    caps = [c for cs in bench.load(ws, "caps").samples.column("captions").to_pylist() for c in cs]
    np.testing.assert_allclose(captions.astype(np.float32), lm.encode_text(lm.tokenizer(caps)).numpy(), atol=2e-3)
    # a re-added benchmark with other samples is embedded again; an unchanged one is skipped
    mtime = (ws.root / "embed" / TAG / "bench" / "caps" / "image.npy").stat().st_mtime_ns
    bench.add(ws, "tree", str(folder_tree(tmp_path / "tree2", per_class=2)), force=True)
    embed.embed_benchmarks(ws, SPEC, device="cpu", workers=0)
    assert embed.load_bench(ws, tag, "tree")[2].shape == (6, 64)
    assert (ws.root / "embed" / TAG / "bench" / "caps" / "image.npy").stat().st_mtime_ns == mtime


def test_benchmark_split_into_parts_keeps_order(ws, tmp_path, monkeypatch):
    monkeypatch.setattr(embed_stage, "PART_ROWS", 4)
    bench.add(ws, "tree", str(folder_tree(tmp_path / "tree", per_class=4, broken=False)))
    embed.embed_benchmarks(ws, SPEC, device="cpu", batch_size=3, workers=2)
    idx, uids, image, *_ = embed.load_bench(ws, TAG, "tree")
    assert idx.tolist() == list(range(12))
    monkeypatch.setattr(embed_stage, "PART_ROWS", 1024)
    embed.embed_benchmarks(ws, SPEC, device="cpu", batch_size=3, workers=0, force=True)
    np.testing.assert_allclose(embed.load_bench(ws, TAG, "tree")[2].astype(np.float32),
                               image.astype(np.float32), atol=2e-3)


def test_checkpoint_tag_and_compatibility_checks(ws, tmp_path, lm):
    make_pool(ws, shards=1, per_shard=4)
    ck = tmp_path / "epoch_1.pt"
    torch.save({"epoch": 1, "name": "run", "state_dict": {"module." + k: v for k, v in lm.model.state_dict().items()}}, ck)
    spec = models.ModelSpec(TINY, str(ck))
    tag = embed.embed_pool(ws, spec, device="cpu", workers=0)
    assert tag.startswith("ckpt__") and len(tag) == len("ckpt__") + 12
    embed.embed_pool(ws, SPEC, device="cpu", workers=0)
    # same weights -> same vectors, but two tags are never silently mixed
    np.testing.assert_array_equal(_outputs(ws, tag)["00000"][1], _outputs(ws, TAG)["00000"][1])
    embed.check_compatible(ws, TAG, TAG)
    with pytest.raises(ClipcurateError, match="model mismatch"):
        embed.check_compatible(ws, TAG, tag)

    class Fake:  # any encoder: here a 32-d "detector" on the same layout
        kind, dim, tag, info = "detector", 32, "detector__fake", {"name": "fake", "file": "x"}
        preprocess = lm.preprocess

        def encode_tensors(self, x):
            return torch.nn.functional.normalize(x.flatten(1)[:, :32], dim=-1)

    t = embed.embed_images(ws, Fake(), pool=True, benchmarks=[], device="cpu", workers=0)
    assert t == "detector__fake" and embed.model_info(ws, t)["kind"] == "detector"
    assert not (ws.root / "embed" / t / "pool" / "00000.text.npy").exists()
    with pytest.raises(ClipcurateError, match="dimension mismatch.*dim 64.*dim 32"):
        embed.check_compatible(ws, TAG, t)


def test_cli_embed(ws, tmp_path, cli):
    r = cli("-w", ws.root, "embed", "-m", TINY, "-p", "random", "--device", "cpu")
    assert r.code == 1 and "clipcurate download" in r.err
    bench.add(ws, "caps", str(captions_parquet(tmp_path / "c.parquet")))
    r = cli("-w", ws.root, "embed", "-m", TINY, "-p", "random", "--device", "cpu", "-j", "0")
    assert r.code == 0, r.err
    assert r.out.strip() == TAG  # benchmarks only: there is no pool yet
    make_pool(ws, shards=1, per_shard=3)
    r = cli("-w", ws.root, "embed", "-m", TINY, "-p", "random", "--device", "cpu", "-j", "0", "--bench", "caps")
    assert r.code == 0 and "already embedded" in r.err
    assert (ws.root / "embed" / TAG / "pool" / "00000.done").exists()
    r = cli("-w", ws.root, "embed", "-m", TINY, "-p", "random", "--bench", "nope", "--no-pool")
    assert r.code == 1 and "bench add nope" in r.err
    r = cli("-w", ws.root, "embed", "-m", "ViT-B-32", "-p", "no_such_tag", "--device", "cpu")
    assert r.code == 1 and "tags:" in r.err
    r = cli("-w", ws.root, "embed", "-m", TINY, "-p", str(tmp_path / "missing.pt"))
    assert r.code == 1 and "not found" in r.err
    r = cli("-w", ws.root, "sql", "select source, count(*) n from embeddings group by 1 order by 1", "-f", "csv")
    assert r.out.splitlines() == ["source,n", "bench,4", "pool,3"]
    with pytest.raises(MissingUpstream):
        embed.load_bench(ws, "nope__random", "caps")


def test_torch_decode_close_to_pil_and_counts_corrupt_images(ws, tmp_path):
    """--decode torch (torchvision.io; nvJPEG on CUDA) is not bit-identical to PIL, but close."""
    make_pool(ws, shards=2, per_shard=6, bad={0: 1}, size=80)
    embed.embed_pool(ws, SPEC, device="cpu", batch_size=4, workers=0)
    a = _outputs(ws)
    ws2 = Workspace(tmp_path / "ws2")
    ws2.create()
    make_pool(ws2, shards=2, per_shard=6, bad={0: 1}, size=80)
    embed.embed_pool(ws2, SPEC, device="cpu", batch_size=4, workers=1, decode="torch")
    b = _outputs(ws2)
    for s in a:
        assert a[s][0] == b[s][0]
        cos = (a[s][1].astype(np.float32) * b[s][1].astype(np.float32)).sum(1)
        assert cos.min() > 0.98, cos
    folder = ws2.root / "embed" / TAG / "pool"
    assert json.loads((folder / "00000.done").read_text())["n_bad"] in (0, 1)  # libjpeg may accept a truncated file
    t = np.load(folder / "00000.text.npy")
    assert len(t) == len(b["00000"][0])


def test_model_tags_and_offline_hub_errors(tmp_path, monkeypatch):
    import socket

    assert models.model_tag(models.ModelSpec("ViT-B-32", "laion2b_s34b_b79k")) == "ViT-B-32__laion2b_s34b_b79k"
    assert models.model_tag(models.ModelSpec(TINY)) == models.model_tag(models.ModelSpec(TINY, "random")) == TAG
    assert models.model_tag(models.ModelSpec("hf-hub:laion/CLIP-ViT-B-32")) == "hf__laion--CLIP-ViT-B-32"
    # No network in tests: make the DNS probe fail, so huggingface_hub goes offline and fails at once
    def no_dns(*a, **k):
        raise OSError("no network in tests")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    t = time.time()
    with pytest.raises(ClipcurateError, match="could not download ViT-B-32 weights 'laion2b_s34b_b79k'.*no internet"):
        models.load(models.ModelSpec("ViT-B-32", "laion2b_s34b_b79k"))
    with pytest.raises(ClipcurateError, match="Hugging Face hub.*no internet"):
        models.load(models.ModelSpec("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"))
    assert time.time() - t < 60
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(ClipcurateError, match="not a torch checkpoint"):
        models.load(models.ModelSpec(TINY, str(bad)))
