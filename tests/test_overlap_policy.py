"""Who decides overlap: the calibrated rule by default (CLI too), a random-init CLIP never, and an
implausible result is flagged. Also: the combined rule is never worse than its best signal."""

from __future__ import annotations

import json

import numpy as np
import pytest

from _overlap_helpers import make_workspace, write_model
from clipcurate.core import manifest as mf
from clipcurate.overlap import combined as comb
from clipcurate.overlap.combined import Rule


def _pairs(ws):
    return mf.read("pairs", ws.path("overlap", "pairs.parquet")).to_pylist()


def test_random_init_clip_sends_to_review_but_never_decides(ws, cli):
    make_workspace(ws.root, plants=[("cifar10", 3, 0, 5, 0.99)])
    write_model(ws.root, dim=32, pretrained="random")  # the same vectors, now a random-init CLIP's
    r = cli("-w", ws.root, "overlap")
    assert r.code == 0, r.err
    assert "random-init CLIP: review at most" in r.err
    pairs = _pairs(ws)
    top = max(pairs, key=lambda p: p["score_clip"])
    assert top["score_clip"] > 0.95 and top["decision"] == "review" and "no copy detector" in top["reason"]
    assert not any(p["decision"] == "overlap" for p in pairs)


def _write_rule(ws, rule: Rule, precision=0.97, recall=0.9):
    d = ws.path("overlap", "calibration")
    d.mkdir(parents=True, exist_ok=True)
    (d / "thresholds.json").write_text(json.dumps({"rule": rule.to_json(), "combined": {
        "precision": precision, "recall": recall}}))


def test_calibrated_rule_decides_by_default_and_explicit_high_overrides_it(ws, cli):
    make_workspace(ws.root, plants=[("cifar10", 3, 0, 5, 0.99), ("cifar10", 7, 1, 9, 0.97)])
    # a calibrated rule on CLIP alone at 0.98: only the 0.99 plant passes it
    _write_rule(ws, Rule("single", {"clip": 1.0}, 0.0, 0.98, 0.95))
    r = cli("-w", ws.root, "overlap")
    assert r.code == 0, r.err and "calibrated rule clip ≥ 0.980" in r.err
    by = {p["bench_index"]: p for p in _pairs(ws) if p["benchmark"] == "cifar10" and p["score_clip"] > 0.95}
    assert by[3]["decision"] == "overlap" and by[3]["reason"].startswith("calibrated rule")
    assert by[7]["decision"] == "review"  # CLIP's own 0.95 threshold only sends it to review now
    # an explicit --high: the thresholds decide, and the run says the rule is not used
    r = cli("-w", ws.root, "overlap", "--high", "0.95")
    assert r.code == 0 and "explicit high given" in r.err
    by = {p["bench_index"]: p for p in _pairs(ws) if p["benchmark"] == "cifar10" and p["score_clip"] > 0.95}
    assert by[3]["decision"] == by[7]["decision"] == "overlap"


def test_implausible_result_is_flagged(ws, cli):
    arrays = make_workspace(ws.root, benches={"cifar10": 6}, shards=1, per_shard=20)
    # every benchmark sample gets a pool copy
    from _overlap_helpers import near_copy, write_pool_shard

    rng = np.random.default_rng(3)
    x = arrays["pool"][0]
    for i in range(6):
        x[i] = near_copy(rng, arrays["bench"]["cifar10"][i], 0.99)
    write_pool_shard(ws.root, arrays["shards"][0], x, arrays["pool_uids"])
    r = cli("-w", ws.root, "overlap", "--force")
    assert r.code == 0 and "implausible" in r.err
    diag = json.loads(ws.path("overlap", "diagnostics.json").read_text())
    assert "6 of 6 samples Overlap" in diag["implausible"]["cifar10"]


def test_a_band_that_holds_most_of_the_benchmark_is_flagged(ws, cli):
    """Every pair in the review band (a band as wide as a random-init CLIP makes it): no sample is
    Overlap, most are unreviewed, and the summary and diagnostics.json say so."""
    make_workspace(ws.root, benches={"cifar10": 6}, shards=1, per_shard=20)
    r = cli("-w", ws.root, "overlap", "--force", "--low", "-1", "--high", "0.99999")
    assert r.code == 0, r.err
    diag = json.loads(ws.path("overlap", "diagnostics.json").read_text())
    assert "6 of 6 samples unreviewed" in diag["implausible"]["cifar10"]
    assert "samples unreviewed" in r.err and "Overlap:" not in diag["implausible"]["cifar10"]


def test_combined_rule_is_never_worse_than_its_best_signal_out_of_sample():
    """Two signals that each see half of the copies (an OR); a third that is noise. On held-apart
    rows the kept rule reaches the target and recalls at least as much as each signal alone."""
    rng = np.random.default_rng(0)
    n_rows, n_cols = 200, 40

    def make(seed):
        r = np.random.default_rng(seed)
        truth = np.zeros((n_rows, n_cols), bool)
        truth[np.arange(n_rows), r.integers(0, n_cols, n_rows)] = True
        a, b = r.uniform(0, 0.7, truth.shape), r.uniform(0, 0.7, truth.shape)
        which = r.random(n_rows) < 0.5
        a[truth & which[:, None]] = r.uniform(0.8, 1.0, (which.sum(),))
        b[truth & ~which[:, None]] = r.uniform(0.8, 1.0, ((~which).sum(),))
        return {"kp_ncc": a, "detector": b, "clip": r.uniform(0, 1, truth.shape)}, truth

    f_fit, t_fit = make(1)
    f_test, t_test = make(2)
    rule = comb.fit(f_fit, t_fit, 0.95)
    assert "clip" not in rule.weights  # noise is not decisive: it never takes part in the decision
    m = comb.measure(rule.predict(f_test), t_test)
    assert m["precision"] >= 0.95 and m["recall"] > 0.9
    for k in ("kp_ncc", "detector"):
        single = comb.fit_single(k, f_fit[k], t_fit, 0.95)
        assert m["recall"] >= comb.measure(single.predict({k: f_test[k]}), t_test)["recall"]
    # a rule survives its JSON round trip exactly
    again = Rule.from_json(json.loads(json.dumps(rule.to_json())))
    assert (again.predict(f_test) == rule.predict(f_test)).all()
    del rng


def test_clopper_pearson_matches_scipy_and_edges():
    from scipy.stats import binomtest

    lo, hi = comb.clopper_pearson(45, 50)
    ci = binomtest(45, 50).proportion_ci(method="exact")
    assert (lo, hi) == pytest.approx((ci.low, ci.high))
    assert comb.clopper_pearson(0, 0) is None and comb.clopper_pearson(10, 10)[1] == 1.0


def test_weak_signals_add_evidence_but_never_decide_alone():
    """The logistic rule over all signals: dHash alone cannot reach the target (a fifth of the
    other pairs share its best value), yet it helps a borderline detector. It must never decide
    by itself: at its best value with the detector at its worst, no overlap."""
    r = np.random.default_rng(4)
    n = 6000
    truth = r.random(n) < 0.1
    det = np.where(truth, r.normal(0.85, 0.08, n), r.normal(0.55, 0.12, n))
    dh = np.where(truth, r.integers(0, 6, n), np.where(r.random(n) < 0.2, 0, r.integers(6, 40, n))).astype(float)
    feats = {"detector": det, "dhash": comb.as_feature("dhash", dh)}
    assert comb.fit_single("dhash", feats["dhash"], truth, 0.95).threshold is None  # not decisive
    rule = comb.fit_logistic_all(feats, truth, 0.95, {"detector"})
    assert rule is not None and rule.threshold is not None
    assert comb.never_alone(rule, feats, ["dhash"]) == []
    probe = {"detector": np.array([det.min()]), "dhash": np.array([feats["dhash"].max()])}
    assert not rule.predict(probe)[0]
    # and it adds recall over the detector alone at the same target, on fresh pairs
    t2 = r.random(n) < 0.1
    d2 = np.where(t2, r.normal(0.85, 0.08, n), r.normal(0.55, 0.12, n))
    h2 = np.where(t2, r.integers(0, 6, n), np.where(r.random(n) < 0.2, 0, r.integers(6, 40, n))).astype(float)
    f2 = {"detector": d2, "dhash": comb.as_feature("dhash", h2)}
    alone = comb.fit_single("detector", det, truth, 0.95)
    both, single = comb.measure(rule.predict(f2), t2), comb.measure(alone.predict({"detector": d2}), t2)
    assert both["precision"] >= 0.9 and both["recall"] > single["recall"]


def test_never_alone_names_a_signal_that_would_decide_by_itself():
    feats = {"detector": np.array([0.1, 0.5, 0.9]), "dhash": np.array([0.2, 0.6, 1.0])}
    loud = Rule("logistic", {"detector": 1.0, "dhash": 10.0}, 0.0, 5.0, 0.95)  # dhash 1.0 alone: 10.1 ≥ 5
    assert comb.never_alone(loud, feats, ["dhash"]) == ["dhash"]
    quiet = Rule("logistic", {"detector": 10.0, "dhash": 1.0}, 0.0, 5.0, 0.95)  # dhash alone: 2.0 < 5
    assert comb.never_alone(quiet, feats, ["dhash"]) == []


def test_query_expansion_follows_found_copies_through_the_same_rule(monkeypatch):
    """Sample 0 has one copy the rule found (A). A matches B, B matches C (not A): both join, C
    through B, and C's reason names B. D matches nothing; E matches A but its pair is degenerate
    (flat images stay as they are); F's sample has no found copy, so nothing queries it, however
    close it is to A."""
    from clipcurate.overlap import expand as ex

    pdq = {("A", "B"): 10, ("B", "C"): 12, ("A", "C"): 120, ("A", "D"): 130, ("B", "D"): 125, ("C", "D"): 128,
           ("A", "E"): 5, ("B", "E"): 5, ("C", "E"): 5}
    calls = []

    def fake(ws, pairs, names, verify_if=None):
        calls.append(list(pairs))
        return [{"pdq_dist": pdq.get(p, 200)} for p in pairs]

    monkeypatch.setattr(ex, "pool_pair_signals", fake)
    row = lambda uid, i, d: {"pool_uid": uid, "benchmark": "b", "bench_index": i, "decision": d, "reason": "r"}  # noqa: E731
    rows = [row("A", 0, "overlap"), row("B", 0, "review"), row("C", 0, "review"), row("D", 0, "clean"),
            row("E", 0, "degenerate"), row("F", 1, "review"), row("A", 1, "review")]
    pdq[("A", "F")] = 0
    rule = Rule("single", {"pdq": 1.0}, 0.0, 1 - 31 / 256, 0.95)
    assert ex.expand(None, rows, rule) == 2
    got = {(r["pool_uid"], r["bench_index"]): r for r in rows}
    assert got[("B", 0)]["decision"] == got[("C", 0)]["decision"] == "overlap"
    assert "pool sample B" in got[("C", 0)]["reason"] and got[("C", 0)]["reason"].endswith("; r")
    assert got[("D", 0)]["decision"] == "clean" and got[("E", 0)]["decision"] == "degenerate"
    assert got[("F", 1)]["decision"] == got[("A", 1)]["decision"] == "review"
    scored = [p for c in calls for p in c]
    assert len(scored) == len(set(scored)) and ("A", "F") not in scored  # each pair once; only found copies query
    # a rule that decides nothing expands nothing
    assert ex.expand(None, [dict(r) for r in rows], Rule("single", {"pdq": 1.0}, 0.0, None, 0.95)) == 0


def test_query_expansion_skips_a_keypoint_fit_that_cannot_change_the_verdict():
    """Every rule is monotone: with the fit at its best (every keypoint an inlier, perfect
    alignment) the score bounds what the fit could give. Far hashes and a weak detector: no fit can
    make it a copy, skip it; near hashes: the fit could, run it."""
    from clipcurate.overlap.expand import could_take
    from clipcurate.overlap.verify import MAX_FEATURES

    rule = Rule("logistic", {"detector": 4.0, "pdq": 10.0, "keypoints": 1.0, "kp_ncc": 1.0}, -14.0, 0.0, 0.95)
    weak = {"score_detector": 0.1, "pdq_dist": 200}
    near = {"score_detector": 0.8, "pdq_dist": 40}
    assert not could_take(rule, weak) and could_take(rule, near)
    for row in (weak, near):  # the bound is never below a real fit
        for inl, ncc in ((0, -1.0), (50, 0.5), (MAX_FEATURES, 1.0), (MAX_FEATURES + 20, 1.0)):
            real = {**row, "kp_inliers": inl, "kp_ncc": ncc}
            feats = {k: comb.as_feature(k, [v]) for k, v in (("detector", real["score_detector"]),
                     ("pdq", real["pdq_dist"]), ("keypoints", inl), ("kp_ncc", ncc))}
            assert could_take(rule, row) or not rule.predict(feats)[0]
