"""Stage `eval`: zero-shot accuracy vs plain torch, retrieval vs brute force, the §5 table, errors."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest

from tests._curate_helpers import make_caption_bench, make_class_bench, write_splits

OVERLAP = {"shapes": {0, 1, 2, 7, 8, 13}, "capshapes": {3, 4}}


def _tiny_checkpoint(path, seed=7):
    """A tiny model with its own random weights, saved like open_clip_train saves a checkpoint."""
    import open_clip
    import torch

    from clipcurate.core.models import register_configs

    register_configs()
    torch.manual_seed(seed)
    model = open_clip.create_model("clipcurate-tiny")
    torch.save({"epoch": 1, "name": "t", "state_dict": model.state_dict()}, path)
    return path


@pytest.fixture
def evalws(ws, tmp_path):
    make_class_bench(ws, tmp_path, "shapes", per_class=6, n_classes=4)
    make_caption_bench(ws, tmp_path, "capshapes", n=12)
    write_splits(ws, OVERLAP)
    ck = _tiny_checkpoint(tmp_path / "weights.pt")
    return ws, ck


def _plain_torch_zero_shot(ws, ck):
    """The straightforward computation: open_clip model + the checkpoint's weights, PIL → preprocess →
    encode_image, class prompts → encode_text, mean per class, argmax. No pipeline code involved
    except reading the benchmark's files."""
    import open_clip
    import pyarrow.parquet as pq
    import torch
    from PIL import Image

    model, _, preprocess = open_clip.create_model_and_transforms("clipcurate-tiny")
    model.load_state_dict(torch.load(ck, map_location="cpu", weights_only=True)["state_dict"])
    model.eval()
    tok = open_clip.get_tokenizer("clipcurate-tiny")
    folder = ws.path("benchmarks", "shapes")
    classes = json.loads((folder / "classes.json").read_text())
    templates = [t for t in (folder / "templates.txt").read_text().splitlines() if t.strip()]
    t = pq.read_table(folder / "samples.parquet").to_pylist()
    with torch.no_grad():
        x = torch.stack([preprocess(Image.open(io.BytesIO(r["image"])).convert("RGB")) for r in t])
        img = model.encode_image(x)
        img = img / img.norm(dim=-1, keepdim=True)
        w = []
        for c in classes:
            e = model.encode_text(tok([tp.replace("{}", c) for tp in templates]))
            e = e / e.norm(dim=-1, keepdim=True)
            m = e.mean(0)
            w.append(m / m.norm())
        w = torch.stack(w)
    out = {}
    # float32, and the same vectors rounded to float16 — the precision embed stores them at
    for name, (a, b) in {"fp32": (img, w), "fp16": (img.half().float(), w.half().float())}.items():
        logits = a @ b.T
        top2 = logits.topk(2, dim=1).values
        out[name] = ({r["index"]: int(p) for r, p in zip(t, logits.argmax(1))},
                     {r["index"]: float(u - v) for r, (u, v) in zip(t, top2)})
    return out, {r["index"]: r["label"] for r in t}


@pytest.mark.slow
def test_zero_shot_equals_plain_torch_and_table_matches_predictions(evalws):
    from scipy import stats as ss

    from clipcurate.core import manifest as mf
    from clipcurate.eval import evaluate

    ws, ck = evalws
    res = evaluate(ws, model="clipcurate-tiny", pretrained=str(ck), device="cpu", workers=0)
    assert res.tag.startswith("ckpt__")
    preds = [r for r in mf.read_all("predictions", ws.root).to_pylist() if r["benchmark"] == "shapes"]
    ref, ref_label = _plain_torch_zero_shot(ws, ck)
    got = {p["bench_index"]: p["pred"] for p in preds}
    assert {p["bench_index"]: p["label"] for p in preds} == ref_label
    # at the storage precision the straightforward computation agrees sample for sample (barring an
    # exact tie, which the margins rule out) ...
    pred16, margin16 = ref["fp16"]
    assert min(margin16.values()) > 0 and got == pred16
    # ... and with full float32 it agrees wherever float16 rounding (< 2e-3 on a cosine) cannot matter
    pred32, margin32 = ref["fp32"]
    assert all(got[i] == pred32[i] for i in pred32 if margin32[i] > 2e-3)
    ref_acc = 100.0 * sum(pred16[i] == ref_label[i] for i in pred16) / len(pred16)
    row = next(r for r in res.rows if r["benchmark"] == "shapes")
    assert row["acc_all"] == pytest.approx(ref_acc, abs=1e-12)

    # All / Clean / Overlap are groupings of the same predictions; the statistics are scipy's
    ov = [p["correct"] for p in preds if p["split"] == "overlap"]
    cl = [p["correct"] for p in preds if p["split"] == "clean"]
    assert len(ov) == len(OVERLAP["shapes"]) == row["n_overlap"] and row["n"] == len(preds)
    assert row["acc_overlap"] == pytest.approx(100 * sum(ov) / len(ov))
    assert row["acc_clean"] == pytest.approx(100 * sum(cl) / len(cl))
    assert row["overlap_pct"] == pytest.approx(100 * len(ov) / len(preds))
    p = ss.binomtest(sum(ov), len(ov), sum(cl) / len(cl), alternative="greater").pvalue
    assert row["p_value"] == pytest.approx(p, abs=1e-9)
    ci = ss.binomtest(sum(ov), len(ov)).proportion_ci(0.995, method="exact")
    assert row["ci_low"] == pytest.approx(100 * ci.low, abs=1e-7)
    assert row["ci_high"] == pytest.approx(100 * ci.high, abs=1e-7)

    table = mf.read_all("eval", ws.root).to_pylist()
    assert {r["benchmark"] for r in table} == {"shapes", "capshapes"}
    for f in ("report.md", "figure17.png", "eval.parquet", "predictions.parquet", "summary.json"):
        assert (res.folder / f).is_file()
    assert (res.folder / "figure17.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    s = json.loads((res.folder / "summary.json").read_text())
    pcts = sorted(r["overlap_pct"] for r in table)
    assert s["median_overlap_pct"] == pytest.approx(sum(pcts) / 2) and s["mean_overlap_pct"] == pytest.approx(sum(pcts) / 2)


def _brute_recall(image, indices, captions, cap_index, k):
    """Loops, no vectorisation: the reference for image→text and text→image recall@k."""
    img = image.astype(np.float64)
    cap = captions.astype(np.float64)
    hits_i = 0
    for r in range(len(img)):
        order = sorted(range(len(cap)), key=lambda j: (-float(img[r] @ cap[j]), j))[:k]
        hits_i += any(cap_index[j] == indices[r] for j in order)
    hits_t = 0
    for j in range(len(cap)):
        order = sorted(range(len(img)), key=lambda r: (-float(cap[j] @ img[r]), r))[:k]
        hits_t += any(indices[r] == cap_index[j] for r in order)
    return 100 * hits_i / len(img), 100 * hits_t / len(cap)


def test_retrieval_matches_brute_force():
    from clipcurate.eval import retrieval

    rng = np.random.default_rng(0)
    n, d = 15, 8
    image = rng.normal(size=(n, d)).astype(np.float32)
    indices = np.arange(100, 100 + n)
    cap_index = np.repeat(indices, 3)
    captions = (np.repeat(image, 3, axis=0) + rng.normal(scale=1.5, size=(3 * n, d))).astype(np.float32)
    top, rec = retrieval(image, indices, captions, cap_index, chunk=4)
    for k in (1, 5, 10):
        i2t, t2i = _brute_recall(image, indices, captions, cap_index, k)
        assert rec[f"i2t_r{k}"] == pytest.approx(i2t) and rec[f"t2i_r{k}"] == pytest.approx(t2i)
    sim = image @ captions.T
    assert list(top) == [int(cap_index[j]) for j in sim.argmax(1)]


def test_cli_eval_and_errors(evalws, cli):
    ws, ck = evalws
    r = cli("-w", ws.root, "eval", "--model", "clipcurate-tiny", "--pretrained", ck, "--workers", "0",
            "--device", "cpu", "--format", "csv")
    assert r.code == 0, r.err
    header = r.out.splitlines()[0].split(",")
    assert header[:4] == ["benchmark", "kind", "n", "n_overlap"] and len(r.out.splitlines()) == 3

    # missing checkpoint: one line, exit 1
    r = cli("-w", ws.root, "eval", "--checkpoint", ws.root / "train" / "x" / "checkpoints" / "epoch_9.pt")
    assert r.code == 1 and "checkpoint" in r.err and "not found" in r.err and len(r.err.strip().splitlines()) == 1
    # no train run and no --model: names `clipcurate train`
    r = cli("-w", ws.root, "eval")
    assert r.code == 1 and "clipcurate train" in r.err
    # a benchmark whose class names are gone
    ws.path("benchmarks", "shapes", "classes.json").write_text("[]")
    r = cli("-w", ws.root, "eval", "--model", "clipcurate-tiny", "--pretrained", ck, "--workers", "0")
    assert r.code == 1 and "no class names" in r.err and "--classes" in r.err
    assert len(r.err.strip().splitlines()) == 1


def test_missing_splits_names_overlap(ws, tmp_path, cli):
    make_class_bench(ws, tmp_path, "shapes", per_class=2, n_classes=2)
    r = cli("-w", ws.root, "eval", "--model", "clipcurate-tiny", "--pretrained", "random")
    assert r.code == 1 and "clipcurate overlap" in r.err


def test_empty_overlap_and_bonferroni_in_table(evalws):
    """A benchmark with no Overlap samples gets NaN statistics and significant = null."""
    from clipcurate.core import manifest as mf
    from clipcurate.eval import evaluate

    ws, ck = evalws
    write_splits(ws, {"shapes": set(OVERLAP["shapes"])})  # capshapes: all clean
    res = evaluate(ws, model="clipcurate-tiny", pretrained=str(ck), device="cpu", workers=0)
    cap = next(r for r in mf.read_all("eval", ws.root).to_pylist() if r["benchmark"] == "capshapes")
    assert cap["n_overlap"] == 0 and cap["significant"] is None
    assert math.isnan(cap["p_value"]) and math.isnan(cap["acc_overlap"])
    assert res.summary["bonferroni_m"] == 1


def test_class_mix_adjustment_equals_pandas():
    """Clean's per-class accuracy applied to Overlap's classes, computed independently with pandas."""
    import pandas as pd

    from clipcurate.eval.table import class_mix

    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(4, 120))
        labels = rng.integers(0, int(rng.integers(2, 8)), n)
        correct = rng.random(n) < rng.uniform(0.1, 0.9)
        split = np.where(rng.random(n) < 0.3, "overlap", np.where(rng.random(n) < 0.1, "unreviewed", "clean"))
        df = pd.DataFrame({"label": labels, "correct": correct.astype(float), "split": split})
        clean, ov = df[df.split == "clean"], df[df.split == "overlap"]
        got = class_mix(labels, correct, split)
        if clean.empty or ov.empty:
            assert all(math.isnan(v) for v in got)
            continue
        per_class = clean.groupby("label")["correct"].mean()
        expected = ov["label"].map(per_class).fillna(clean["correct"].mean()).mean()
        assert got[0] == pytest.approx(100 * expected, abs=1e-9)
        assert got[1] == pytest.approx(100 * (ov["correct"].mean() - expected), abs=1e-9)


def test_unreviewed_bounds_from_hand_made_splits():
    """Unreviewed samples count in All only; the two ends count them all Overlap, then all Clean; with
    none unreviewed both ends are the decided figure."""
    from scipy import stats as ss

    from clipcurate.eval.table import benchmark_row

    rng = np.random.default_rng(8)
    n = 60
    labels = rng.integers(0, 4, n)
    correct = rng.random(n) < 0.5
    split = np.array(["overlap"] * 10 + ["unreviewed"] * 8 + ["clean"] * 42, dtype=object)
    r = benchmark_row("classification", labels, labels, correct, correct, split, 4, 0.025)
    ov, un, cl = split == "overlap", split == "unreviewed", split == "clean"
    assert (r["n"], r["n_overlap"], r["n_clean"], r["n_unreviewed"]) == (60, 10, 42, 8)
    assert r["acc_all"] == pytest.approx(100 * correct.mean())
    assert r["acc_clean"] == pytest.approx(100 * correct[cl].mean())

    def p(o, c):
        return ss.binomtest(int(correct[o].sum()), int(o.sum()), correct[c].mean(), alternative="greater").pvalue

    assert r["amc_if_overlap"] == pytest.approx(100 * (correct.mean() - correct[cl].mean()))
    assert r["p_if_overlap"] == pytest.approx(p(ov | un, cl), abs=1e-12)
    assert r["amc_if_clean"] == pytest.approx(100 * (correct.mean() - correct[cl | un].mean()))
    assert r["p_if_clean"] == pytest.approx(p(ov, cl | un), abs=1e-12)
    # every pending pair decided: the bounds collapse to the decided figure
    decided = np.where(un, "clean", split)
    r2 = benchmark_row("classification", labels, labels, correct, correct, decided, 4, 0.025)
    assert r2["n_unreviewed"] == 0
    assert r2["amc_if_overlap"] == r2["amc_if_clean"] == r2["all_minus_clean"]
    assert r2["p_if_overlap"] == r2["p_if_clean"] == r2["p_value"]


def _html_tables(text):
    """Every <table> of an HTML page as a list of rows of cell texts (stdlib parser: an independent reader)."""
    from html.parser import HTMLParser

    class P(HTMLParser):
        def __init__(self):
            super().__init__()
            self.tables, self.cell = [], None

        def handle_starttag(self, tag, attrs):
            if tag == "table":
                self.tables.append([])
            elif tag == "tr":
                self.tables[-1].append([])
            elif tag in ("td", "th"):
                self.cell = ""

        def handle_endtag(self, tag):
            if tag in ("td", "th"):
                self.tables[-1][-1].append(self.cell)
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    p = P()
    p.feed(text)
    return p.tables


@pytest.mark.slow
def test_report_html_numbers_equal_eval_parquet_and_m_is_the_workspace_s(evalws):
    """report.html is one self-contained file whose §5 and bounds tables say what eval.parquet holds; m
    counts the workspace's benchmarks with Overlap samples whether one or all are evaluated."""
    import re

    from clipcurate.core import manifest as mf
    from clipcurate.eval import evaluate

    ws, ck = evalws
    write_splits(ws, OVERLAP, unreviewed={"shapes": {20, 21, 22}})
    one = evaluate(ws, model="clipcurate-tiny", pretrained=str(ck), device="cpu", workers=0, benchmarks=["shapes"])
    assert one.rows[0]["bonferroni_m"] == 2 and one.rows[0]["threshold"] == pytest.approx(0.025)
    res = evaluate(ws, model="clipcurate-tiny", pretrained=str(ck), device="cpu", workers=0)
    table = {r["benchmark"]: r for r in mf.read(mf.get("eval"), res.folder / "eval.parquet").to_pylist()}
    assert {r["bonferroni_m"] for r in table.values()} == {2} and res.summary["bonferroni_m"] == 2
    assert table["shapes"]["n_unreviewed"] == 3 and table["capshapes"]["n_unreviewed"] == 0

    text = (res.folder / "report.html").read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    imgs = re.findall(r"<img [^>]*src='([^']*)'", text)
    assert len(imgs) == 2 and all(s.startswith("data:image/png;base64,") for s in imgs)
    tables = _html_tables(text)
    s5, bounds = tables[0], tables[1]
    head = s5[0]
    for row in s5[1:]:
        r = table[row[0]]
        cell = dict(zip(head, row))
        assert int(cell["n"]) == r["n"] and int(cell["Overlap n"]) == r["n_overlap"]
        for col, key in (("All", "acc_all"), ("Clean", "acc_clean"), ("Overlap", "acc_overlap"),
                         ("All − Clean", "all_minus_clean"), ("Overlap − Clean", "overlap_minus_clean")):
            assert float(cell[col]) == pytest.approx(r[key], abs=0.005), col
        assert float(cell["p"]) == pytest.approx(r["p_value"], rel=1e-2)
        lo, hi = (float(x) for x in cell["Clean CI"].strip("[]").split(","))
        assert lo == pytest.approx(r["clean_ci_low"], abs=0.05) and hi == pytest.approx(r["clean_ci_high"], abs=0.05)
        if math.isnan(r["amc_ci_low"]):  # an interval for decided splits only: none with unreviewed samples
            assert r["n_unreviewed"] and cell["All − Clean CI"] == "–"
        else:
            lo, hi = (float(x) for x in cell["All − Clean CI"].strip("[]").split(","))
            assert lo == pytest.approx(r["amc_ci_low"], abs=0.005) and hi == pytest.approx(r["amc_ci_high"], abs=0.005)
        assert cell["threshold (m)"] == f"{r['threshold']:.4g} ({r['bonferroni_m']})"
    for row in bounds[1:]:
        r = table[row[0]]
        assert int(row[1]) == r["n_unreviewed"]
        assert float(row[4]) == pytest.approx(r["amc_if_overlap"], abs=0.005)
        assert float(row[6]) == pytest.approx(r["amc_if_clean"], abs=0.005)
    assert (res.folder / "report.md").read_text().count("| shapes |") >= 4


@pytest.mark.slow
def test_compare_pairs_two_runs_on_the_same_samples(evalws, cli):
    """`eval --compare A B`: per benchmark and split, McNemar on the same samples, from both predictions."""
    import pyarrow.parquet as pq
    from scipy import stats as ss

    from clipcurate.core import manifest as mf

    ws, _ = evalws
    for run, seed in (("all", 1), ("clean", 2)):
        d = ws.path("train", run, "checkpoints")
        d.mkdir(parents=True)
        _tiny_checkpoint(d / "epoch_1.pt", seed=seed)
        (d.parent / "run.json").write_text(json.dumps({"model": "clipcurate-tiny", "run": run, "data": run}))
    r = cli("-w", ws.root, "eval", "--compare", "all", "clean", "--workers", "0", "--device", "cpu", "--format", "json")
    assert r.code == 0, r.err
    rows = [json.loads(line) for line in r.out.splitlines()]
    assert {(x["benchmark"], x["split"]) for x in rows} == {(b, s) for b in ("shapes", "capshapes")
                                                           for s in ("overlap", "clean")}
    cmp = pq.read_table(ws.path("eval", "compare-all-vs-clean", "compare.parquet")).to_pylist()
    preds = mf.read_all("predictions", ws.root).to_pylist()
    for c in cmp:
        a = {p["bench_index"]: p["correct"] for p in preds if p["model_tag"] == c["model_a"]
             and p["benchmark"] == c["benchmark"] and p["split"] == c["split"]}
        b = {p["bench_index"]: p["correct"] for p in preds if p["model_tag"] == c["model_b"]
             and p["benchmark"] == c["benchmark"] and p["split"] == c["split"]}
        assert set(a) == set(b) and len(a) == c["n"]
        only_a = sum(a[i] and not b[i] for i in a)
        only_b = sum(b[i] and not a[i] for i in a)
        assert (c["a_only"], c["b_only"]) == (only_a, only_b)
        want = ss.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
        assert c["p_value"] == pytest.approx(want, abs=1e-12)
        assert c["diff"] == pytest.approx(100 * (sum(a.values()) - sum(b.values())) / len(a))
    assert ws.path("eval", "compare-all-vs-clean", "report.html").is_file()
    r = cli("-w", ws.root, "eval", "--compare", "all", "all")
    assert r.code == 1 and "two different train runs" in r.err
