"""`overlap calibrate`: curve arithmetic against a loop reference, and the command end to end."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from _overlap_helpers import write_bench_samples, write_model
from clipcurate.overlap import calibrate as cal
from clipcurate.core import manifest as mf
from clipcurate.overlap import SIGNALS, combine, decide, thresholds_for


def _loop_curve(values, truth, higher, thresholds):
    out = []
    for t in thresholds:
        pred = [(v >= t if higher else v <= t) and not np.isnan(v) for v in values]
        tp = sum(p and y for p, y in zip(pred, truth))
        n = sum(pred)
        out.append((tp, n - tp, sum(truth) - tp, tp / n if n else np.nan, tp / sum(truth)))
    return out


@pytest.mark.parametrize("higher", [True, False])
def test_curve_matches_a_loop(higher):
    rng = np.random.default_rng(0)
    truth = rng.random(300) < 0.2
    values = np.where(truth, rng.normal(0.9, 0.05, 300), rng.normal(0.6, 0.15, 300))
    values = np.round(values, 2)  # ties on the thresholds
    values[5] = np.nan
    if not higher:
        values = np.round((1 - values) * 64)
    grid = np.unique(np.r_[np.round(values[~np.isnan(values)], 2), -5, 99])
    c = cal.curve(values, truth, higher, grid)
    ref = _loop_curve(values, truth, higher, grid)
    assert c["tp"].tolist() == [r[0] for r in ref]
    assert c["fp"].tolist() == [r[1] for r in ref]
    assert c["fn"].tolist() == [r[2] for r in ref]
    np.testing.assert_allclose(c["precision"], [r[3] for r in ref])
    np.testing.assert_allclose(c["recall"], [r[4] for r in ref])
    ch = cal.choose(c, 0.9, higher)
    ok = [i for i, r in enumerate(ref) if not np.isnan(r[3]) and r[3] >= 0.9]
    best = max(ref[i][4] for i in ok)
    assert ch["recall"] == pytest.approx(best, abs=1e-6) and ch["precision"] >= 0.9


def test_combination_rule():
    assert combine(["overlap"]) == "overlap"
    assert combine(["review"]) == "review"
    assert combine(["clean"]) == "clean"
    assert combine(["overlap", "review"]) == "overlap"
    assert combine(["overlap", "clean"]) == "review"  # the signals disagree: a human decides
    assert combine(["review", "clean"]) == "review"
    assert combine(["clean", "clean"]) == "clean"
    th = thresholds_for({"high": 0.95, "low": 0.85, "thresholds": {}, "signal_thresholds": {}}, "x")
    row = {s.column: None for s in SIGNALS.values()}
    assert decide({**row, "score_clip": 0.97}, th)[0] == "overlap"
    # a far pHash does not veto (heavy App. C copies have far hashes; clipcurate.overlap.signals.CONFIRM_ONLY)
    assert decide({**row, "score_clip": 0.97, "phash_dist": 30}, th)[0] == "overlap"
    assert decide({**row, "score_clip": 0.90, "phash_dist": 2}, th)[0] == "overlap"


def _bench(ws, n=40):
    from clipcurate.core.synth import make_image

    write_bench_samples(ws.root, "cifar10", [make_image(i % 10, i, "bench") for i in range(n)],
                        [i % 10 for i in range(n)])


@pytest.mark.slow
def test_calibrate_with_an_injected_embedder(ws):
    """Signals and outputs with a cheap deterministic 'model' (pixels → unit vector)."""
    _bench(ws)

    def embed(images):
        x = np.stack([np.asarray(im.convert("L").resize((12, 12)), np.float32).ravel() for im in images])
        x -= x.mean(axis=1, keepdims=True)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)

    res = cal.run(ws, {"copies": 12, "distractors": 30, "target_precision": 0.9}, embed=embed)
    assert res["pool"] == "synthetic" and res["copies"] == 12 and res["pairs"] == 40 * 42  # queries: 12 sources + the 28 other images
    tbl = pq.read_table(ws.root / "overlap" / "calibration" / "curve.parquet")
    assert tbl.schema.names == [c.name for c in mf.get("calibration").columns]
    rows = tbl.to_pylist()
    # + keypoints on candidate pairs (clipcurate.overlap.signals); no detector: no embed/detector__* here
    assert {r["signal"] for r in rows} == {"clip", "phash", "dhash", "keypoints"}
    for sig in ("clip", "phash", "dhash"):
        rs = [r for r in rows if r["signal"] == sig]
        rec = [r["recall"] for r in rs]
        assert all(r["tp"] + r["fn"] == 12 for r in rs)
        assert rec == sorted(rec, reverse=SIGNALS[sig].higher_is_better)  # recall moves one way
    assert max(r["recall"] for r in rows if r["signal"] == "clip") == 1.0
    assert (ws.root / "overlap" / "calibration" / "curve.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((ws.root / "overlap" / "calibration" / "thresholds.json").read_text())
    assert set(saved["combined"]) == {"configured", "chosen"}
    assert saved["combined"]["chosen"]["overlap"]["tp"] + saved["combined"]["chosen"]["overlap"]["fn"] == 12
    # reproducible: same seed, same curve
    again = cal.run(ws, {"copies": 12, "distractors": 30, "target_precision": 0.9}, embed=embed)
    assert again["chosen"] == res["chosen"]


@pytest.mark.slow
def test_calibrate_command_with_the_tiny_model(ws, cli):
    """The CLI path: the model named by embed/{tag}/model.json (clipcurate-tiny, random weights)."""
    _bench(ws, 24)
    write_model(ws.root, tag="clipcurate-tiny__random", dim=64)
    (ws.root / "embed" / "clipcurate-tiny__random" / "model.json").write_text(json.dumps(
        {"model": "clipcurate-tiny", "pretrained": "random", "tag": "clipcurate-tiny__random", "dim": 64,
         "kind": "clip"}))
    r = cli("-w", ws.root, "overlap", "calibrate", "--copies", "8", "--distractors", "16", "--device", "cpu")
    assert r.code == 0, r.err
    assert "clip" in r.out and "phash" in r.out
    saved = json.loads((ws.root / "overlap" / "calibration" / "thresholds.json").read_text())
    assert saved["model_tag"] == "clipcurate-tiny__random" and saved["queries"] == 24


def test_calibrate_errors(ws, cli):
    r = cli("-w", ws.root, "overlap", "calibrate")
    assert r.code == 1 and "clipcurate embed" in r.err
    write_model(ws.root)
    r = cli("-w", ws.root, "overlap", "calibrate", "--target-precision", "1.5")
    assert r.code == 1 and "clipcurate bench add" in r.err
