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
    # 12 sources + 12 other benchmark images as queries, against 30 distractors + 12 copies
    assert res["pool"] == "synthetic" and res["copies"] == 12 and res["pairs"] == 24 * 42
    assert res["copy_kinds"]["app_c"] == 6 and sum(res["copy_kinds"].values()) == 12
    # the halves: every planted copy is either choosing or measuring, never both
    assert res["held_apart"]["copies"] + res["chosen_on"]["copies"] == 12 and res["held_apart"]["copies"] == 6
    tbl = pq.read_table(ws.root / "overlap" / "calibration" / "curve.parquet")
    assert tbl.schema.names == [c.name for c in mf.get("calibration").columns]
    rows = tbl.to_pylist()
    # + PDQ and the verified keypoints (clipcurate.overlap.signals); no detector: no embed/detector__* here
    assert {r["signal"] for r in rows} == {"clip", "phash", "dhash", "pdq", "keypoints", "kp_ncc"}
    for sig in ("clip", "phash", "dhash", "pdq"):
        rs = [r for r in rows if r["signal"] == sig]
        rec = [r["recall"] for r in rs]
        assert all(r["tp"] + r["fn"] == 6 for r in rs)  # the curve is drawn on the held-apart copies
        assert rec == sorted(rec, reverse=SIGNALS[sig].higher_is_better)  # recall moves one way
    assert (ws.root / "overlap" / "calibration" / "curve.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((ws.root / "overlap" / "calibration" / "thresholds.json").read_text())
    c = saved["combined"]
    assert c["tp"] + c["fn"] == 6 and saved["rule"]["target"] == 0.9 and saved["verdict"]
    for name, ch in saved["chosen"].items():
        if ch["precision"] is not None:
            lo, hi = ch["precision_ci"]
            assert lo <= ch["precision"] <= hi
    # reproducible: same seed, same figures
    again = cal.run(ws, {"copies": 12, "distractors": 30, "target_precision": 0.9}, embed=embed)
    assert again["chosen"] == res["chosen"] and again["rule"] == res["rule"]


def test_out_of_sample_report_is_not_flattered_by_the_choice():
    """Copies whose scores flatter an in-sample choice: on the choose half the signal separates
    copies perfectly at 0.9; on the held-apart half half the copies score 0.5 and some other pairs
    0.95. The report must give the held-apart figures (a loop counts them), not the in-sample 1.0 / 1.0."""
    rng = np.random.default_rng(0)
    nq, npool = 40, 60
    held = np.arange(nq) % 2 == 1
    q, p = np.repeat(np.arange(nq), npool), np.tile(np.arange(npool), nq)
    truth = (p == q)  # pool image j < 40 copies benchmark image j
    score = rng.uniform(0.0, 0.6, len(q))
    score[truth] = 0.95
    flat_held = held[q]
    score[truth & flat_held & (q % 4 == 1)] = 0.5  # half the held-apart copies are missed
    fp = np.flatnonzero(~truth & flat_held)[:3]
    score[fp] = 0.97  # and three held-apart non-copies look like copies
    rep = cal.choose_and_report({"clip": score}, truth, q, held, 0.95)
    # in-sample the choice looks perfect (every copy, precision >= 0.95) ...
    ch = ~flat_held
    chosen_t = rep["signals"]["clip"]["threshold"]
    assert (score[ch & truth] >= chosen_t).all() and truth[ch & (score >= chosen_t)].mean() >= 0.95
    # ... but the report is the held-apart loop count
    pred = [(s >= chosen_t) for s, h in zip(score, flat_held) if h]
    tr = [t for t, h in zip(truth, flat_held) if h]
    tp = sum(a and b for a, b in zip(pred, tr))
    fpn = sum(a and not b for a, b in zip(pred, tr))
    assert rep["signals"]["clip"]["tp"] == tp == 10 and rep["signals"]["clip"]["fp"] == fpn >= 3
    assert rep["signals"]["clip"]["recall"] == pytest.approx(0.5) and rep["combined"]["recall"] == pytest.approx(0.5)
    assert rep["combined"]["precision"] == pytest.approx(10 / (10 + fpn)) and 10 / (10 + fpn) < 0.95
    lo, hi = rep["combined"]["recall_ci"]
    assert lo < 0.5 < hi and hi - lo > 0.3  # 20 copies: a wide Clopper-Pearson interval, said so
    assert rep["held_apart"]["copies"] == 20 and rep["chosen_on"]["copies"] == 20


def test_strong_distractors_are_reported_apart_not_counted_as_false_positives():
    nq, npool = 10, 20
    q, p = np.repeat(np.arange(nq), npool), np.tile(np.arange(npool), nq)
    truth = p == q
    pdq = np.full(len(q), 120.0)
    pdq[truth] = 10
    real = (q == 1) & (p == 15)  # an unplanted real copy in the pool
    pdq[real] = 5
    rep = cal.choose_and_report({"pdq": pdq}, truth, q, np.arange(nq) % 2 == 1, 0.95)
    assert rep["suspected_real_copies"] == 1
    assert rep["combined"]["fp"] == 0 and rep["combined"]["precision"] == 1.0


def test_real_copies_among_distractors_are_found_when_independent_families_agree():
    """A contaminated pool: 20 distractors are real copies of benchmark images (every family scores
    them like copies), 10 are look-alikes that fool the detector alone. The real copies are left
    out of the precision (at most one pair per distractor), the look-alikes still count as false
    positives, and without the criterion the real copies would have made every signal look useless."""
    r = np.random.default_rng(3)
    nq, npool = 40, 90
    q, p = np.repeat(np.arange(nq), npool), np.tile(np.arange(npool), nq)
    truth = p == q  # columns 0-39: planted copies of queries 0-39
    real = (p >= 40) & (p < 60) & (q == p - 40)  # columns 40-59: real copies of queries 0-19
    look = (p >= 60) & (p < 70) & (q == p - 50)  # columns 60-69: detector look-alikes of queries 10-19
    copy_like = truth | real
    det = np.where(copy_like, r.uniform(0.9, 1.0, len(q)), r.uniform(0.0, 0.8, len(q)))
    det[look] = r.uniform(0.95, 1.0, look.sum())
    pdq = np.where(copy_like, r.integers(20, 60, len(q)), r.integers(90, 140, len(q))).astype(float)
    pdq[real] = r.integers(32, 60, real.sum())  # beyond PDQ's own match threshold: only the families see them
    ncc = np.where(copy_like, r.uniform(0.85, 1.0, len(q)), r.uniform(-0.2, 0.6, len(q)))
    values = {"detector": det, "pdq": pdq, "kp_ncc": ncc}
    held = np.arange(nq) % 2 == 1
    rep = cal.choose_and_report(values, truth, q, held, 0.95, pool=p)
    strong = rep["suspected"]
    assert (strong & real).sum() >= 15 and not (strong & look).any() and not (strong & truth).any()
    assert all(np.bincount(p[strong], minlength=npool) <= 1)  # one pair per distractor at most
    assert rep["suspected_real_copies"] == strong.sum() <= 22
    # every distractor pair of an image with a suspected copy is left out too; planted pairs never
    images = np.unique(q[strong])
    assert rep["suspected_images"] == len(images)
    assert (rep["strong"] == (strong | (np.isin(q, images) & (p >= 40)))).all() and not (rep["strong"] & truth).any()
    # the look-alikes still count: detector alone cannot reach the target precision
    assert not rep["signals"]["detector"]["decisive"] or rep["signals"]["detector"]["threshold"] > 0.95
    # without the family criterion (no pool columns) the real copies count as false positives
    plain = cal.choose_and_report(values, truth, q, held, 0.95)
    assert plain["suspected_real_copies"] == 0
    assert (plain["combined"]["recall"] or 0) < rep["combined"]["recall"]


def test_an_image_with_a_suspected_real_copy_loses_its_other_distractor_pairs():
    """Copies recur: query 0 has a real copy every criterion sees (PDQ 5) and a second one that
    escapes them all (PDQ 36, beyond Meta's 31) yet outscores most planted copies. Counted as a
    false positive, that second copy would cap the rule; left out with the rest of query 0's
    distractor pairs, it does not. Query 1's distractor pairs stay: it has no suspected copy."""
    nq, npool = 12, 30  # columns 0-11: planted copies of queries 0-11; 12-29: distractors
    q, p = np.repeat(np.arange(nq), npool), np.tile(np.arange(npool), nq)
    truth = p == q
    pdq = np.full(len(q), 120.0)
    pdq[truth] = np.tile([34.0, 38.0, 42.0], nq // 3)
    pdq[(q == 0) & (p == 20)] = 5  # the real copy the criteria see
    hidden = (q == 0) & (p == 21)
    pdq[hidden] = 36  # the one they do not
    held = np.arange(nq) % 2 == 1
    rep = cal.choose_and_report({"pdq": pdq}, truth, q, held, 0.95, pool=p)
    assert rep["suspected_real_copies"] == 1 and rep["suspected_images"] == 1
    assert rep["strong"][hidden] and rep["excluded_pairs"] == npool - nq
    assert not rep["strong"][(q == 1)].any() and not rep["strong"][truth].any()
    assert rep["combined"]["recall"] == 1.0 and rep["combined"]["fp"] == 0
    # pair by pair only, the hidden copy is a false positive on the choose half and caps the rule
    capped = cal.choose_and_report({"pdq": pdq}, truth, q, held, 0.95)
    assert capped["combined"]["recall"] < 1.0


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
    assert "clip" in r.out and "phash" in r.out and "combined" in r.out and "held-apart" in r.err
    saved = json.loads((ws.root / "overlap" / "calibration" / "thresholds.json").read_text())
    assert saved["model_tag"] == "clipcurate-tiny__random" and saved["queries"] == 16


def test_calibrate_errors(ws, cli):
    r = cli("-w", ws.root, "overlap", "calibrate")
    assert r.code == 1 and "clipcurate embed" in r.err
    write_model(ws.root)
    r = cli("-w", ws.root, "overlap", "calibrate", "--target-precision", "1.5")
    assert r.code == 1 and "clipcurate bench add" in r.err


def test_human_decisions_join_the_choice_and_the_report_says_how_figures_moved(ws):
    """Reviewed pairs (human verdicts only) become labelled pairs beside the planted copies; the
    automatic demo decisions are no labels; fewer than min_decisions: not used."""
    from clipcurate.core import manifest as mf
    from clipcurate.overlap.honest import decision_pairs
    from clipcurate.review import append_decisions, effective_decisions, pair_id

    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        dup = i % 2 == 0
        row = {c.name: None for c in mf.get("pairs").columns}
        row.update({"pool_uid": f"p{i}", "benchmark": "cifar10", "bench_index": i, "bench_uid": f"b{i}",
                    "pair_id": pair_id(f"p{i}", "cifar10", i), "score_clip": float(rng.uniform(0.9, 1.0)),
                    "pdq_dist": int(rng.integers(5, 25) if dup else rng.integers(100, 130)),
                    "decision": "review", "reason": "band"})
        rows.append(row)
    (ws.root / "overlap").mkdir(parents=True, exist_ok=True)
    mf.write("pairs", rows, ws.root / "overlap" / "pairs.parquet")
    append_decisions(ws, [{"pair_id": r["pair_id"], "pool_uid": r["pool_uid"], "benchmark": "cifar10",
                           "bench_index": r["bench_index"], "decision": "duplicate" if i % 2 == 0 else "not_duplicate",
                           "reviewer": "ana"} for i, r in enumerate(rows[:24])])
    append_decisions(ws, [{"pair_id": r["pair_id"], "pool_uid": r["pool_uid"], "benchmark": "cifar10",
                           "bench_index": r["bench_index"], "decision": "duplicate", "reviewer": "bot",
                           "source": "auto-demo"} for r in rows[24:]])
    verdicts = effective_decisions(ws)
    got = decision_pairs(rows, verdicts, ["pdq", "clip"], 20)
    assert got is not None
    feats, y, groups = got
    assert len(y) == 24 and y.sum() == 12  # the six auto-demo decisions are no labels
    assert feats["pdq"][0] == pytest.approx(1 - rows[0]["pdq_dist"] / 256) and len(set(groups)) == 24
    assert decision_pairs(rows, verdicts, ["pdq"], 25) is None  # not enough decisions yet
    # end to end: calibrate reports the figures with and without them
    _bench(ws)

    def embed(images):
        x = np.stack([np.asarray(im.convert("L").resize((12, 12)), np.float32).ravel() for im in images])
        x -= x.mean(axis=1, keepdims=True)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)

    res = cal.run(ws, {"copies": 12, "distractors": 30, "target_precision": 0.9, "min_decisions": 20}, embed=embed)
    assert res["with_decisions"]["decisions"] == 24
    assert res["with_decisions"]["chosen_on"]["pairs"] == res["chosen_on"]["pairs"] + 24  # added to the choose half
    assert "24 human decisions added" in res["decisions_note"]
    assert res["with_decisions"]["combined"]["tp"] + res["with_decisions"]["combined"]["fn"] == \
        res["held_apart"]["copies"]  # the held-apart planted copies stay the yardstick
