"""The App. C copy detector: architecture (weight norm, no batch norm, blur-pool), loss, training,
checkpoints / resume, descriptor loading (ours and TorchScript), CLI."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from clipcurate.detector import stage as detector
from clipcurate.core.augment import app_c_copy
from clipcurate.detector.net import BlurPool, CopyDetector, build_model, info_nce

from _detector_helpers import pool_images, write_pool

TINY = dict(preset="tiny", width=8, blocks=[1, 1], dim=32, batch_size=8, steps=4, checkpoint_every=2)


def test_weight_norm_not_batch_norm():
    model = build_model(detector.resolve_config({"preset": "tiny"}))
    norms = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.GroupNorm, torch.nn.LayerNorm,
             torch.nn.modules.instancenorm._InstanceNorm, torch.nn.LocalResponseNorm)
    assert not [m for m in model.modules() if isinstance(m, norms)]
    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert layers
    for m in layers:
        # weight = g · v / ‖v‖ through torch's weight_norm parametrisation
        assert torch.nn.utils.parametrize.is_parametrized(m, "weight")
        assert type(m.parametrizations.weight[0]).__name__ == "_WeightNorm"
    # Anti-aliased downsampling: no strided convolution; every resolution drop is a BlurPool.
    assert all(m.stride == (1, 1) for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    stages = len(detector.PRESETS["tiny"]["blocks"])
    assert sum(isinstance(m, BlurPool) for m in model.modules()) == 1 + (stages - 1)  # stem + each new stage
    assert "gelu" in CopyDetector.forward.__code__.co_names  # GELU activations


def test_blurpool_matches_reference():
    x = torch.randn(2, 3, 9, 10)
    got = BlurPool(3)(x)
    k = np.outer([1, 2, 1], [1, 2, 1]) / 16.0
    xp = np.pad(x.numpy(), ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    ref = np.zeros((2, 3, 9, 10))
    for i in range(9):
        for j in range(10):
            ref[:, :, i, j] = (xp[:, :, i:i + 3, j:j + 3] * k).sum((-1, -2))
    np.testing.assert_allclose(got.numpy(), ref[:, :, ::2, ::2], atol=1e-5)


def test_info_nce_matches_reference_and_fixed_temperature():
    g = torch.Generator().manual_seed(0)
    za = torch.nn.functional.normalize(torch.randn(6, 5, generator=g), dim=1)
    zb = torch.nn.functional.normalize(torch.randn(6, 5, generator=g), dim=1)
    ref = 0.0
    for i in range(6):  # -log softmax of the true pair, rows then columns, averaged
        s_row = torch.stack([za[i] @ zb[j] for j in range(6)]) / 0.07
        s_col = torch.stack([za[j] @ zb[i] for j in range(6)]) / 0.07
        ref += -(s_row[i] - torch.logsumexp(s_row, 0)) - (s_col[i] - torch.logsumexp(s_col, 0))
    assert torch.allclose(info_nce(za, zb), ref / 12, atol=1e-5)
    assert detector.TEMPERATURE == 0.07
    model = build_model(detector.resolve_config({}))
    assert not any("temp" in n or "logit_scale" in n for n, _ in model.named_parameters())


@pytest.fixture(scope="module")
def trained():
    """A short CPU training on generated images (shared by the tests below)."""
    imgs = pool_images(160, seed=1)
    return detector.fit(detector.ImageList(imgs), dict(preset="tiny", steps=45, batch_size=24, seed=0))


@pytest.mark.slow
def test_loss_falls_in_short_cpu_training(trained):
    first, last = np.mean(trained.losses[:5]), np.mean(trained.losses[-5:])
    assert first > 2.5  # ≈ ln(24) at init: chance level
    assert last < 0.6 * first


@pytest.mark.slow
def test_light_copy_closer_than_different_image(trained):
    cfg = detector.resolve_config({"preset": "tiny"})
    from clipcurate.detector.net import make_preprocess

    desc = detector.Descriptor(trained.model, make_preprocess(cfg["image_size"]), "t", cfg["dim"], {})
    imgs = pool_images(30, seed=99)  # never seen in training
    copies = [app_c_copy(im, 1000 + i, strength=0.3) for i, im in enumerate(imgs)]
    a, b = desc.encode(imgs), desc.encode(copies)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-4)
    sim = a @ b.T
    pos = np.diag(sim)
    neg = np.where(np.eye(len(imgs), dtype=bool), -np.inf, sim)
    # Each image's copy is closer than every other image's copy for nearly all images...
    assert (pos > neg.max(axis=1)).mean() >= 0.9
    # ...and on average by a wide margin.
    assert pos.mean() > np.mean(sim[~np.eye(len(imgs), dtype=bool)]) + 0.3


def test_train_in_workspace_checkpoints_and_resumes(ws):
    write_pool(ws, pool_images(12))
    full = detector.train(ws, dict(TINY, steps=4), run="a")
    assert (ws.path("detector", "a", "detector.pt")).is_file()
    assert (ws.path("detector", "a", "_SUCCESS")).is_file() and (ws.path("detector", "_SUCCESS")).is_file()
    # A run stopped after 2 steps, then continued to 4, replays exactly the same batches.
    detector.train(ws, dict(TINY, steps=2), run="b")
    resumed = detector.train(ws, dict(TINY, steps=4), run="b")
    assert len(resumed.losses) == 4
    np.testing.assert_allclose(resumed.losses, full.losses, rtol=1e-4)
    log = json.loads(ws.path("detector", "b", "log.json").read_text())
    assert log["step"] == 4 and len(log["losses"]) == 4
    # A finished run is a no-op; another shape on the same run is refused with a one-line fix.
    again = detector.train(ws, dict(TINY, steps=4), run="a")
    assert again.losses == full.losses
    with pytest.raises(detector.ClipcurateError, match="--force"):
        detector.train(ws, dict(TINY, steps=6, width=12), run="a")


def test_checkpoint_resume_after_kill(ws):
    """No final model yet, only a checkpoint (a kill between checkpoints): the rerun continues."""
    write_pool(ws, pool_images(12))
    ref = detector.train(ws, dict(TINY, steps=4), run="ref")
    detector.train(ws, dict(TINY, steps=4), run="k")
    folder = ws.path("detector", "k")
    # Rewind to the step-2 checkpoint as if killed at step 3: rebuild it from a 2-step run.
    detector.train(ws, dict(TINY, steps=2), run="two")
    for name in ("detector.pt", "_SUCCESS", "checkpoint.pt"):
        (folder / name).unlink()
    (ws.path("detector", "two", "checkpoint.pt")).rename(folder / "checkpoint.pt")
    (folder / ".tmp-checkpoint.pt.junk").write_bytes(b"partial")  # a torn temp file
    res = detector.train(ws, dict(TINY, steps=4), run="k")
    np.testing.assert_allclose(res.losses, ref.losses, rtol=1e-4)
    assert not list(folder.glob(".tmp-*"))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_load_descriptor_ours_and_torchscript(tmp_path):
    cfg = detector.resolve_config(dict(TINY))
    model = build_model(cfg).eval()
    path = detector.save_model(model, cfg, tmp_path / "run1" / "detector.pt", steps=3)
    d = detector.load_descriptor(tmp_path / "run1")
    assert d.tag.startswith("detector__run1-") and d.dim == 32 and d.kind == "detector"
    imgs = pool_images(3)
    v = d.encode(imgs)
    assert v.shape == (3, 32) and v.dtype == np.float32
    with torch.no_grad():
        ref = model(torch.stack([d.preprocess(im) for im in imgs])).numpy()
    np.testing.assert_allclose(v, ref, atol=1e-5)

    # An external TorchScript descriptor (like an SSCD .pt): any module mapping images to vectors.
    class Ext(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)

    ts = tmp_path / "sscd_like.torchscript.pt"
    torch.jit.script(Ext()).save(str(ts))
    e = detector.load_descriptor(ts, image_size=40)
    assert e.tag.startswith("detector__ts-") and e.dim == 12 and e.info["image_size"] == 40
    assert np.allclose(np.linalg.norm(e.encode(imgs), axis=1), 1, atol=1e-5)

    for bad in (tmp_path / "missing.pt", path.parent / "nothing"):
        with pytest.raises(detector.ClipcurateError, match="not found"):
            detector.load_descriptor(bad)
    junk = tmp_path / "junk.pt"
    torch.save({"a": torch.zeros(1)}, junk)
    with pytest.raises(detector.ClipcurateError, match="not a clipcurate detector"):
        detector.load_descriptor(junk)


def test_config_validation():
    assert detector.resolve_config({})["width"] == detector.PRESETS["tiny"]["width"]
    assert detector.resolve_config({"preset": "full"})["blocks"] == [3, 4, 6, 3]
    for bad, msg in (({"preset": "huge"}, "huge"), ({"batch_size": 1}, "batch_size"),
                     ({"strength": 1.5}, "strength")):
        with pytest.raises(detector.ClipcurateError, match=msg):
            detector.resolve_config(bad)


def test_cli_train_info_and_errors(ws, cli):
    r = cli("-w", ws.root, "detector", "train", "--steps", "2", "--batch-size", "4")
    assert r.code == 1 and "clipcurate download" in r.err and "Traceback" not in r.err
    write_pool(ws, pool_images(8))
    r = cli("-w", ws.root, "detector", "train", "--run", "c", "--steps", "2", "--batch-size", "4",
            "--width", "8", "--blocks", "1", "--dim", "16")
    assert r.code == 0, r.err
    info = json.loads(r.out)
    assert info["steps"] == 2 and info["detector"].endswith("detector.pt")
    r = cli("-w", ws.root, "detector", "info", "--format", "json")
    assert r.code == 0 and json.loads(r.out.splitlines()[0])["run"] == "c"
    r = cli("-w", ws.root, "detector", "train", "--run", "bad/name", "--steps", "2")
    assert r.code == 1 and "bad/name" in r.err
    r = cli("-w", ws.root, "detector", "train", "--preset", "nope")
    assert r.code == 2


def test_embed_detector_writes_descriptors_like_any_embedding(ws, cli):
    """`clipcurate embed --detector RUN` → embed/detector__RUN-sha/pool/{shard}.npy rows = encode()."""
    imgs = pool_images(10)
    write_pool(ws, imgs)
    detector.train(ws, dict(TINY, steps=2), run="e")
    r = cli("-w", ws.root, "embed", "--detector", ws.path("detector", "e"), "--workers", "0", "--no-benchmarks")
    assert r.code == 0, r.err
    tag = r.out.strip().splitlines()[-1]
    assert tag.startswith("detector__e-")
    info = json.loads(ws.path("embed", tag, "model.json").read_text())
    assert info["kind"] == "detector" and info["dim"] == 32
    x = np.load(ws.path("embed", tag, "pool", "00000.npy"))
    assert x.dtype == np.float16 and x.shape == (10, 32)
    from PIL import Image

    from clipcurate.overlap.hashes import iter_pool_tar

    stored = [Image.open(io.BytesIO(d)) for _, _, d in iter_pool_tar(ws.path("pool", "shards", "00000.tar"))]
    ref = detector.load_descriptor(ws.path("detector", "e")).encode(stored)
    np.testing.assert_allclose(x.astype(np.float32), ref, atol=2e-3)
