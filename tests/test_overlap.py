"""Stage `overlap` end to end on generated embeddings with planted near-copies."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from _overlap_helpers import TAG, make_workspace, write_bench, write_bench_samples, write_pool_shard
from clipcurate.review import decisions as dec
from clipcurate.core import manifest as mf
from clipcurate.overlap import searchrun
from clipcurate.overlap import stage as overlap
from clipcurate.overlap import search as se

# (benchmark, bench row, pool shard, pool row, cosine): above high, inside the band, just above low
PLANTS = [("cifar10", 3, 0, 10, 0.99), ("cifar10", 3, 2, 5, 0.97), ("cifar10", 17, 1, 199, 0.955),
          ("stl10", 1, 1, 7, 0.90), ("stl10", 2, 1, 8, 0.86), ("stl10", 2, 2, 0, 0.853)]


def _table(ws, name):
    return pq.read_table(ws.root / "overlap" / f"{name}.parquet").to_pylist()


def _run(cli, ws, *args):
    r = cli("-w", ws.root, "overlap", *args)
    assert r.code == 0, r.err
    return r


def test_planted_pairs_found_and_outputs_match_contracts(ws, cli):
    data = make_workspace(ws.root, plants=PLANTS)
    r = _run(cli, ws, "--format", "json")
    per = {json.loads(line)["benchmark"]: json.loads(line) for line in r.out.splitlines()}
    assert per["cifar10"]["n_overlap"] == 2 and per["stl10"]["n_overlap"] == 0
    # stl10's band pairs are undecided: its samples are unreviewed, not overlap or clean by a default
    assert per["stl10"]["n_unreviewed"] == 2 and per["stl10"]["pending_pairs"] == 3

    # every planted pair is in pairs.parquet (b), with the right decision
    pairs = _table(ws, "pairs")
    got = {(p["benchmark"], p["bench_index"], p["pool_uid"]): p for p in pairs}
    for bench, brow, si, prow, cos in PLANTS:
        uid = data["pool_uids"][si * 200 + prow]
        p = got[(bench, brow, uid)]
        assert abs(p["score_clip"] - cos) < 2e-3
        assert p["decision"] == ("overlap" if cos >= 0.95 else "review")
        assert p["pair_id"] == dec.pair_id(uid, bench, brow)
        assert p["bench_uid"] == data["bench_uids"][bench][brow]
    assert len(pairs) == len(PLANTS)  # random 32-d vectors never reach 0.85 by chance
    # exact schemas (the registered manifests)
    for name in ("pairs", "splits", "decontam", "review_queue", "neighbors"):
        schema = pq.read_schema(ws.root / "overlap" / f"{name}.parquet")
        assert schema.names == [c.name for c in mf.get(name).columns]
        assert schema.metadata[b"clipcurate.manifest"] == name.encode()
    assert [p["score_detector"] for p in pairs] == [None] * len(pairs)

    # (a) neighbors.parquet equals the brute-force reference over the whole pool
    nb = _table(ws, "neighbors")
    pool = np.concatenate(data["pool"]).astype(np.float16)
    uids = np.array(data["pool_uids"], dtype=object)
    for bench in ("cifar10", "stl10"):
        q = data["bench"][bench].astype(np.float16)
        ref, _ = se.brute_force(q, pool, 10, 0.85)
        mine = sorted((r["bench_index"], r["rank"], r["pool_uid"], r["score"]) for r in nb if r["benchmark"] == bench)
        assert [m[2] for m in mine] == uids[ref.pos.ravel()].tolist()
        np.testing.assert_allclose([m[3] for m in mine], ref.scores.ravel(), atol=1e-6)
    # rank in pairs = rank in neighbors
    rank = {(r["benchmark"], r["bench_index"], r["pool_uid"]): r["rank"] for r in nb}
    assert all(p["rank"] == rank.get((p["benchmark"], p["bench_index"], p["pool_uid"])) for p in pairs)

    # review queue: the band pairs, highest score first
    q = _table(ws, "review_queue")
    assert [r["position"] for r in q] == list(range(len(q)))
    assert [round(r["score_clip"], 2) for r in q] == [0.90, 0.86, 0.85]
    # splits: every benchmark sample once; decontam: every overlap + pending band pool uid (drop)
    splits = _table(ws, "splits")
    assert len(splits) == 40 + 25
    ov = {(s["benchmark"], s["bench_index"]) for s in splits if s["split"] == "overlap"}
    assert ov == {("cifar10", 3), ("cifar10", 17)}
    un = {(s["benchmark"], s["bench_index"]): s for s in splits if s["split"] == "unreviewed"}
    assert {k: v["pending_pairs"] for k, v in un.items()} == {("stl10", 1): 1, ("stl10", 2): 2}
    assert all(v["decided_by"] == "none" and "2 band pair(s) pending of 2 pair(s)" in un[("stl10", 2)]["reason"]
               for v in un.values())
    assert len(_table(ws, "decontam")) == len(PLANTS)
    assert all(s["decided_by"] == "rule" for s in splits if s["split"] != "unreviewed")
    assert {s["n_pairs"] for s in splits if s["benchmark"] == "cifar10" and s["bench_index"] == 3} == {2}
    near = {s["bench_index"]: s for s in splits if s["benchmark"] == "cifar10"}[3]
    assert near["nearest_pool_uid"] == data["pool_uids"][10] and abs(near["max_score"] - 0.99) < 2e-3

    # canned SQL report
    r = cli("-w", ws.root, "sql", "overlap-rate", "--format", "json")
    assert r.code == 0
    rows = [json.loads(x) for x in r.out.splitlines()]
    assert {x["benchmark"]: (x["n_overlap"], x["n_unreviewed"]) for x in rows} == {"cifar10": (2, 0), "stl10": (0, 2)}


def test_thresholds_per_benchmark_from_config_and_cli(ws, cli):
    make_workspace(ws.root, plants=PLANTS)
    (ws.root / "clipcurate.toml").write_text(
        "[overlap]\nunreviewed_pool = \"keep\"\nthresholds = {stl10 = {high = 0.88, low = 0.855}}\n")
    _run(cli, ws)
    dec_ = {(p["benchmark"], round(p["score_clip"], 2)): p["decision"] for p in _table(ws, "pairs")}
    assert dec_[("stl10", 0.90)] == "overlap"  # stl10's own high
    assert ("stl10", 0.85) not in dec_  # 0.853 < stl10's low 0.855: not even a pair
    assert dec_[("cifar10", 0.96)] == "overlap"
    splits = {(s["benchmark"], s["bench_index"]): s for s in _table(ws, "splits")}
    assert splits[("stl10", 2)]["split"] == "unreviewed"  # band only: pending
    # unreviewed_pool = keep: the pending pair's pool sample stays in the pool
    assert ("stl10", 2) not in {(d["benchmark"], d["bench_index"]) for d in _table(ws, "decontam")}
    # CLI beats the file: a higher high for everyone
    _run(cli, ws, "--high", "0.98")
    dec_ = {(p["benchmark"], round(p["score_clip"], 2)): p["decision"] for p in _table(ws, "pairs")}
    assert dec_[("cifar10", 0.97)] == "review" and dec_[("cifar10", 0.99)] == "overlap"


def test_human_decisions_override_and_refresh_without_search(ws, cli, monkeypatch):
    data = make_workspace(ws.root, plants=PLANTS)
    _run(cli, ws)
    pairs = {(p["benchmark"], p["bench_index"]): p for p in _table(ws, "pairs")}
    rejected = pairs[("cifar10", 17)]  # auto overlap (0.955), rejected by a human
    confirmed = pairs[("stl10", 1)]  # band pair (0.90), confirmed
    assert rejected["decision"] == "overlap" and confirmed["decision"] == "review"
    dec.append(ws, [
        {"pair_id": rejected["pair_id"], "pool_uid": rejected["pool_uid"], "benchmark": "cifar10",
         "bench_index": 17, "decision": "not_duplicate", "reviewer": "ana"},
        {"pair_id": confirmed["pair_id"], "pool_uid": confirmed["pool_uid"], "benchmark": "stl10",
         "bench_index": 1, "decision": "duplicate", "reviewer": "ana", "source": "auto-demo"},
    ])
    # refresh must not search: make any search fail
    monkeypatch.setattr(overlap, "SearchRun", None)
    overlap.refresh_splits(ws)
    splits = {(s["benchmark"], s["bench_index"]): s for s in _table(ws, "splits")}
    assert splits[("cifar10", 17)]["split"] == "clean" and splits[("cifar10", 17)]["decided_by"] == "human"
    assert splits[("stl10", 1)]["split"] == "overlap" and splits[("stl10", 1)]["decided_by"] == "auto-demo"
    assert splits[("cifar10", 3)]["decided_by"] == "rule"
    de = {(d["pool_uid"], d["benchmark"], d["bench_index"]): d["reason"] for d in _table(ws, "decontam")}
    assert (rejected["pool_uid"], "cifar10", 17) not in de
    assert de[(confirmed["pool_uid"], "stl10", 1)].startswith("auto-demo")
    # the CLI form
    r = cli("-w", ws.root, "overlap", "refresh", "--format", "csv")
    assert r.code == 0 and r.out.startswith("benchmark,n,n_overlap")


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_kill_between_shards_resumes_to_the_same_result(ws, cli, monkeypatch, backend):
    make_workspace(ws.root, shards=5, per_shard=120, plants=[("cifar10", 0, 4, 3, 0.97), ("stl10", 5, 0, 0, 0.9)])
    (ws.root / "clipcurate.toml").write_text(f"[overlap]\ncheckpoint_s = 0.0\nbackend = \"{backend}\"\n")
    seen = []

    def crash(shard):
        seen.append(shard)
        if shard == "00002":
            raise KeyboardInterrupt  # as good as a kill: nothing after this line runs

    monkeypatch.setattr(searchrun, "_after_shard_hook", crash)
    r = cli("-w", ws.root, "overlap")
    assert r.code == 130
    assert sorted(p.name for p in (ws.root / "overlap").glob("*.done")) == ["00000.done", "00001.done"]
    seen.clear()
    monkeypatch.setattr(searchrun, "_after_shard_hook", lambda shard: seen.append(shard))
    _run(cli, ws)
    assert seen == ["00002", "00003", "00004"]  # the finished shards were not searched again
    resumed = {n: _table(ws, n) for n in ("pairs", "neighbors", "splits")}
    _run(cli, ws, "--force")
    assert seen[3:] == ["00000", "00001", "00002", "00003", "00004"]
    for n, rows in resumed.items():
        assert rows == _table(ws, n), n


def test_rerun_reuses_search_and_wider_search_serves_narrower(ws, cli, monkeypatch):
    make_workspace(ws.root, plants=PLANTS)
    _run(cli, ws, "--k", "12", "--low", "0.8")
    seen = []
    monkeypatch.setattr(searchrun, "_after_shard_hook", lambda s: seen.append(s))
    _run(cli, ws)  # k 10 <= 12, low 0.85 >= 0.8: the old search contains the answer
    assert seen == []
    assert max(r["rank"] for r in _table(ws, "neighbors")) == 10
    assert min(p["score_clip"] for p in _table(ws, "pairs")) >= 0.85
    _run(cli, ws, "--low", "0.7")  # a lower floor needs a new search
    assert len(seen) == 3


def test_degenerate_matches_have_their_own_reason_and_diagnostics(ws, cli):
    from PIL import Image

    from clipcurate.core.synth import make_image

    from _overlap_helpers import pool_uid
    from clipcurate.download import write_pool_shard as write_downloaded

    make_workspace(ws.root, plants=[("cifar10", 0, 0, 0, 0.99), ("cifar10", 1, 0, 1, 0.99),
                                    ("cifar10", 2, 0, 2, 0.99), ("cifar10", 3, 0, 3, 0.99)])
    # the downloaded pool images of rows 0-3 of shard 00000: row 3 is a flat grey frame
    write_downloaded(ws, "00000", [{"url": f"http://x/{r}.jpg", "caption": "c", "uid": pool_uid("00000", r),
                                    "image": Image.new("RGB", (64, 64), (128, 128, 128)) if r == 3
                                    else make_image(r, r, "photo")} for r in range(4)])
    imgs = [make_image(i % 10, i, "bench") for i in range(40)]
    imgs[0] = Image.new("RGB", (64, 64), (3, 3, 3))  # a black frame
    imgs[1] = make_image(1, 1, "bench").resize((8, 8))  # tiny
    write_bench_samples(ws.root, "cifar10", imgs, [i % 10 for i in range(40)])
    _run(cli, ws)
    every = _table(ws, "pairs")
    # the planted pairs (other pairs the keypoint or PDQ searches propose are checked elsewhere)
    pairs = {p["bench_index"]: p for p in every if p["pool_uid"] == pool_uid("00000", p["bench_index"])}
    assert pairs[0]["decision"] == "degenerate" and "near-constant" in pairs[0]["reason"]
    assert pairs[1]["decision"] == "degenerate" and "tiny" in pairs[1]["reason"]
    assert pairs[2]["decision"] == "overlap"
    assert pairs[3]["decision"] == "degenerate" and pairs[3]["reason"].startswith("pool image near-constant")
    splits = {(s["benchmark"], s["bench_index"]): s for s in _table(ws, "splits")}
    assert splits[("cifar10", 0)]["split"] == "clean" and "degenerate" in splits[("cifar10", 0)]["reason"]
    assert splits[("cifar10", 2)]["split"] == "overlap"
    assert {r["bench_index"] for r in _table(ws, "review_queue")} == {0, 1, 3}  # shown, not silently counted
    diag = json.loads((ws.root / "overlap" / "diagnostics.json").read_text())["cifar10"]
    assert diag["pairs"]["degenerate"] == 3 and diag["degenerate_samples"] == 3
    assert diag["n_overlap"] == 1
    assert "note" in diag["class_chi2"] or "p_value" in diag["class_chi2"]
    assert diag["images_overlap"]["measured"] == 1 and diag["images_clean"]["measured"] == 39


def test_class_distribution_chi_square_flags_a_skewed_overlap(ws, cli):
    from clipcurate.core.synth import make_image

    # overlap = all of class 0 (10 samples): the chi-square must call the distributions different
    plants = [("cifar10", i, i % 3, i // 3, 0.99) for i in range(0, 100, 10)]
    make_workspace(ws.root, benches={"cifar10": 100}, plants=plants)
    write_bench_samples(ws.root, "cifar10", [make_image(i % 10, i, "bench") for i in range(100)],
                        [i % 10 for i in range(100)])
    _run(cli, ws)
    diag = json.loads((ws.root / "overlap" / "diagnostics.json").read_text())["cifar10"]
    assert diag["n_overlap"] == 10
    assert diag["class_chi2"]["p_value"] < 1e-6 and diag["class_chi2"]["differs_at_0.01"]
    assert diag["class_counts"]["overlap"][0] == 10


# ----------------------------------------------------------------------------------------------
# Errors: one line, exit 1


def _err(cli, ws, *args):
    r = cli("-w", ws.root, "overlap", *args)
    assert r.code == 1, (r.code, r.err)
    lines = [l for l in r.err.strip().splitlines() if l.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.err, r.err
    return lines[0]


def test_error_no_embeddings(ws, cli):
    assert "run `clipcurate embed` first" in _err(cli, ws)


def test_error_bad_thresholds(ws, cli):
    make_workspace(ws.root)
    (ws.root / "clipcurate.toml").write_text("[overlap]\nthresholds = {cifar10 = {hgh = 0.9}}\n")
    assert "unknown key 'hgh'" in _err(cli, ws)
    (ws.root / "clipcurate.toml").write_text("[overlap]\nthresholds = {cifar10 = {high = 0.8, low = 0.9}}\n")
    assert "review band" in _err(cli, ws)


def test_error_dimension_mismatch(ws, cli):
    rng = np.random.default_rng(0)
    make_workspace(ws.root, dim=32)
    write_pool_shard(ws.root, "00009", rng.standard_normal((5, 16)).astype(np.float32), [f"u{i}" for i in range(5)])
    line = _err(cli, ws)
    assert "00009.npy" in line and "dimension 16" in line


def test_error_nan_vectors(ws, cli):
    data = make_workspace(ws.root)
    x = data["pool"][1].copy()
    x[7, 0] = np.nan
    write_pool_shard(ws.root, "00001", x, data["pool_uids"][200:400])
    line = _err(cli, ws)
    assert "00001.npy" in line and "NaN" in line and "[7]" in line
    b = data["bench"]["stl10"].copy()
    b[2, 3] = np.nan
    write_bench(ws.root, "stl10", b)
    line = _err(cli, ws)
    assert "stl10/image.npy" in line and "NaN" in line and "[2]" in line


def test_error_empty_benchmark(ws, cli):
    make_workspace(ws.root)
    write_bench(ws.root, "empty", np.zeros((0, 32), np.float32))
    line = _err(cli, ws)
    assert "'empty'" in line and "no embedded images" in line


def test_error_mismatched_model(ws, cli):
    data = make_workspace(ws.root)
    # a shard written by another model under this tag
    write_pool_shard(ws.root, "00000", data["pool"][0], data["pool_uids"][:200], tag=TAG)
    t = pq.read_table(ws.root / "embed" / TAG / "pool" / "00000.parquet")
    t = t.set_column(0, "model_tag", __import__("pyarrow").array(["other__model"] * t.num_rows))
    pq.write_table(t, ws.root / "embed" / TAG / "pool" / "00000.parquet")
    line = _err(cli, ws)
    assert "other__model" in line
    assert "--model-tag 'nope'" in _err(cli, ws, "--model-tag", "nope")


def test_unfinished_pool_shard_is_left_out_with_a_warning(ws, cli):
    data = make_workspace(ws.root)
    write_pool_shard(ws.root, "00003", data["pool"][0], [f"x{i}" for i in range(200)], done=False)
    r = _run(cli, ws)
    assert "1 pool shard(s)" in r.err
    assert json.loads((ws.root / "overlap" / "_plan.json").read_text())["shards"] == data["shards"]


def test_error_vectors_not_unit_length(ws, cli):
    """A pool .npy scaled by 3 is refused, naming the file, before anything is searched."""
    data = make_workspace(ws.root)
    write_pool_shard(ws.root, "00001", data["pool"][1] * 3, data["pool_uids"][200:400])
    line = _err(cli, ws)
    assert "00001.npy" in line and "not unit length" in line and "norms 3" in line
    assert not ws.path("overlap", "splits.parquet").exists()


def test_deciding_every_pending_pair_settles_every_sample_and_the_bounds_collapse(ws, cli):
    from clipcurate.overlap import split_bounds

    make_workspace(ws.root, plants=PLANTS)
    _run(cli, ws)
    split = {(s["benchmark"], s["bench_index"]): s["split"] for s in _table(ws, "splits")}
    ends = split_bounds(split)
    assert ends["unreviewed_as_overlap"] != ends["unreviewed_as_clean"]  # 2 unreviewed samples: two ends
    r = cli("-w", ws.root, "status", "--format", "json")
    row = [json.loads(x) for x in r.out.splitlines() if json.loads(x)["stage"] == "overlap"][0]
    assert row["note"] == "unreviewed=2 (3 pending pairs)"
    # decide every pending pair: stl10 #1's only pair duplicate, stl10 #2's two pairs not duplicates
    queue = _table(ws, "review_queue")
    dec.append(ws, [{"pair_id": q["pair_id"], "pool_uid": q["pool_uid"], "benchmark": q["benchmark"],
                     "bench_index": q["bench_index"], "reviewer": "ana",
                     "decision": "duplicate" if q["bench_index"] == 1 else "not_duplicate"} for q in queue])
    r = cli("-w", ws.root, "overlap", "refresh", "--format", "json")
    assert r.code == 0, r.err
    rows = {(s["benchmark"], s["bench_index"]): s for s in _table(ws, "splits")}
    assert rows[("stl10", 1)]["split"] == "overlap" and rows[("stl10", 2)]["split"] == "clean"
    assert rows[("stl10", 2)]["decided_by"] == "human" and "2 rejected; 0 pending" in rows[("stl10", 2)]["reason"]
    assert not [s for s in rows.values() if s["split"] == "unreviewed" or s["pending_pairs"]]
    ends = split_bounds({k: s["split"] for k, s in rows.items()})
    assert ends["unreviewed_as_overlap"] == ends["unreviewed_as_clean"]  # the bounds collapse to one figure
    # the rejected pairs' pool samples left the decontam list, the confirmed one is on it as human
    de = {(d["benchmark"], d["bench_index"]): d["reason"] for d in _table(ws, "decontam")}
    assert ("stl10", 2) not in de and de[("stl10", 1)] == "human: duplicate"
    with pytest.raises(Exception, match="split value 'maybe'"):
        split_bounds({0: "maybe"})


def test_refresh_after_a_threshold_edit_changes_the_splits_without_searching(ws, cli, monkeypatch):
    make_workspace(ws.root, plants=PLANTS)
    _run(cli, ws)
    before = {(s["benchmark"], s["bench_index"]): s["split"] for s in _table(ws, "splits")}
    assert before[("stl10", 1)] == "unreviewed" and before[("cifar10", 17)] == "overlap"
    r = cli("-w", ws.root, "overlap", "refresh")
    assert r.code == 0 and "reused the search" in r.err and "(thresholds unchanged, 0 decision(s) changed)" in r.err
    # a threshold edit in clipcurate.toml: stl10's high comes down to 0.89, cifar10's goes up to 0.96
    (ws.root / "clipcurate.toml").write_text(
        "[overlap]\nthresholds = {stl10 = {high = 0.89}, cifar10 = {high = 0.96}}\n")
    monkeypatch.setattr(overlap, "SearchRun", None)  # a search would fail
    r = cli("-w", ws.root, "overlap", "refresh", "--format", "json")
    assert r.code == 0, r.err
    assert "recomputed the decisions of 6 stored pair(s) with the current thresholds (thresholds changed, " \
           "2 decision(s) changed)" in r.err
    after = {(s["benchmark"], s["bench_index"]): s for s in _table(ws, "splits")}
    assert after[("stl10", 1)]["split"] == "overlap" and after[("stl10", 1)]["decided_by"] == "rule"  # 0.90 >= 0.89
    assert after[("cifar10", 17)]["split"] == "unreviewed"  # 0.955 < 0.96: in the band now
    queue = {(q["benchmark"], q["bench_index"]) for q in _table(ws, "review_queue")}
    assert ("cifar10", 17) in queue and ("stl10", 1) not in queue
    assert json.loads((ws.root / "overlap" / "run.json").read_text())["thresholds"]["stl10"]["clip"] == [0.89, 0.85]
    # a lower low than the search floor needs pairs the search never kept: refused, naming the command
    (ws.root / "clipcurate.toml").write_text("[overlap]\nlow = 0.8\n")
    r = cli("-w", ws.root, "overlap", "refresh")
    assert r.code == 1 and "below the search floor 0.85" in r.err and "`clipcurate overlap`" in r.err
    assert "Traceback" not in r.err
    (ws.root / "clipcurate.toml").write_text("[overlap]\nk = 5\n")
    r = cli("-w", ws.root, "overlap", "refresh")
    assert r.code == 1 and "top 10" in r.err
