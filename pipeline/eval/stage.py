"""Stage `eval`: zero-shot classification, retrieval, and the CLIP §5 table (All / Clean / Overlap).

For a model — a trained checkpoint (the latest of ``train/`` by default) or any open_clip model and
weights — and every benchmark in the workspace:

1. **Embeddings.** ``clipcurate.embed.embed_benchmarks`` writes (or reuses) the L2-normalised image
   embeddings of each benchmark, the zero-shot class weights (per class, the mean of its normalised
   template-prompt embeddings, renormalised) and the caption embeddings.
2. **Per-sample predictions.**
   - classification: ``pred = argmax_c image · class_c``; correct when ``pred == label``.
   - captions: each image ranks every caption by cosine; correct when its top caption is one of its
     own (image→text R@1). Recall@1/5/10 in both directions come from the same similarity matrix:
     image→text counts an image when any of its captions is in its top K, text→image counts a
     caption when its image is in the caption's top K.
   Each prediction row carries the sample's split from ``overlap/splits.parquet``, so All, Clean and
   Overlap are three groupings of one set of predictions, never three runs.
3. **The §5 table.** Per benchmark: n, n_overlap, overlap %, accuracy on All / Clean / Overlap,
   All − Clean, the one-tailed binomial p-value of Overlap accuracy against Clean, the 99.5%
   Clopper-Pearson interval of Overlap accuracy (clipcurate.eval.stats), and ``significant`` after a
   Bonferroni correction over the benchmarks that have Overlap samples (alpha 0.05).
4. **Outputs** in ``eval/{model_tag}/``: ``predictions.parquet`` [predictions], ``eval.parquet``
   [eval], ``summary.json`` (median / mean overlap across benchmarks, provenance), ``report.md`` and
   ``figure17.png`` (clipcurate.eval.report) — each written atomically, then the tag's marker.

Steps 2-4 are :class:`EvalModel`, a stage on the one runner (clipcurate.core.stage) whose shards are
the evaluated models: the runner writes ``eval/_plan.json``, ``eval/{model_tag}.done`` after the
outputs and ``eval/_SUCCESS`` last. Step 1 comes first: it is the embed stage's work, with its own
folder, markers and progress bars.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import pyarrow.compute as pc

from clipcurate.bench import list_benchmarks
from clipcurate.bench import load as load_benchmark
from clipcurate.core import config
from clipcurate.core import manifest as mf
from clipcurate.core import sql
from clipcurate.core.console import log, warn
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.io import read_json, write_json
from clipcurate.core.models import ModelSpec, deterministic, determinism_settings, file_sha256, pinned_threads
from clipcurate.core.stage import Stage, is_done, marker
from clipcurate.core.workspace import Workspace
from clipcurate.embed import embed_benchmarks, load_bench
from clipcurate.eval import provenance
from clipcurate.eval import report
from clipcurate.eval import stats
from clipcurate.eval import table
from clipcurate.train import latest_checkpoint, run_model

FOLDER = "eval"
RECALL_KS = (1, 5, 10)

PREDICTIONS = mf.register(
    "predictions", version=2, glob=f"{FOLDER}/*/predictions.parquet", stage="eval",
    doc="Per benchmark sample: the model's prediction, whether it is correct, and its Overlap/Clean split.",
    columns=[
        ("model_tag", pa.string(), "the evaluated model (folder embed/{model_tag})"),
        ("benchmark", pa.string(), "benchmark name"),
        ("bench_index", pa.int64(), "benchmark sample index"),
        ("bench_uid", pa.string(), "benchmark sample uid"),
        ("label", pa.int64(), "true class (classification) or the sample's own index (captions)"),
        ("pred", pa.int64(), "argmax class (classification) or the index of the image owning the top caption"),
        ("correct", pa.bool_(), "pred == label (top-1 / image→text R@1)"),
        ("correct_top5", pa.bool_(), "the label is among the 5 best classes (image→text R@5 for captions)"),
        ("split", pa.string(), "overlap | clean | unreviewed, from overlap/splits.parquet"),
    ],
)

_PCT = "in %"
EVAL = mf.register(
    "eval", version=2, glob=f"{FOLDER}/*/eval.parquet", stage="eval",
    doc="The CLIP §5 table, one row per benchmark: accuracy on All / Clean / Overlap and its statistics.",
    columns=[
        ("model_tag", pa.string(), "the evaluated model"),
        ("benchmark", pa.string(), "benchmark name"),
        ("kind", pa.string(), "classification | captions"),
        ("metric", pa.string(), "what 'accuracy' means: zero-shot top-1, or image→text R@1"),
        ("n", pa.int64(), "samples evaluated (All)"),
        ("n_overlap", pa.int64(), "samples in the Overlap split (as decided)"),
        ("n_clean", pa.int64(), "samples in the Clean split (as decided)"),
        ("n_unreviewed", pa.int64(), "samples whose split depends on undecided review pairs (in All only)"),
        ("overlap_pct", pa.float64(), f"100 · n_overlap / n ({_PCT})"),
        ("acc_all", pa.float64(), f"accuracy on All ({_PCT})"),
        ("acc_clean", pa.float64(), f"accuracy on Clean ({_PCT}; NaN when Clean is empty)"),
        ("acc_overlap", pa.float64(), f"accuracy on Overlap ({_PCT}; NaN when Overlap is empty)"),
        ("all_minus_clean", pa.float64(), "acc_all − acc_clean (percentage points)"),
        ("overlap_minus_clean", pa.float64(), "acc_overlap − acc_clean (percentage points)"),
        ("p_value", pa.float64(), "one-tailed binomial test, Overlap correct ~ Binomial(n_overlap, acc_clean), 'greater'"),
        ("ci_low", pa.float64(), f"99.5% Clopper-Pearson lower bound of acc_overlap ({_PCT})"),
        ("ci_high", pa.float64(), f"99.5% Clopper-Pearson upper bound of acc_overlap ({_PCT})"),
        ("clean_ci_low", pa.float64(), f"99.5% Clopper-Pearson lower bound of acc_clean ({_PCT})"),
        ("clean_ci_high", pa.float64(), f"99.5% Clopper-Pearson upper bound of acc_clean ({_PCT})"),
        ("amc_ci_low", pa.float64(), "All − Clean interval, lower: f · (Overlap CI low − Clean CI high) (points)"),
        ("amc_ci_high", pa.float64(), "All − Clean interval, upper: f · (Overlap CI high − Clean CI low) (points)"),
        ("bonferroni_m", pa.int64(), "m: the workspace's benchmarks with any Overlap sample (whatever was evaluated)"),
        ("threshold", pa.float64(), "the p-value threshold used: alpha / m"),
        ("significant", pa.bool_(), "p_value < alpha / m; null without a p-value"),
        ("amc_if_overlap", pa.float64(), "All − Clean with every unreviewed sample counted Overlap (points)"),
        ("p_if_overlap", pa.float64(), "p_value with every unreviewed sample counted Overlap"),
        ("amc_if_clean", pa.float64(), "All − Clean with every unreviewed sample counted Clean (points)"),
        ("p_if_clean", pa.float64(), "p_value with every unreviewed sample counted Clean"),
        ("chance", pa.float64(), f"chance accuracy: 100 / classes (100 / n for captions) ({_PCT})"),
        ("top5", pa.float64(), f"top-5 accuracy on All (image→text R@5 for captions) ({_PCT})"),
        ("balanced_acc", pa.float64(), f"mean per-class recall on All ({_PCT}; NaN for captions)"),
        ("top_pred", pa.int64(), "the most predicted class (null for captions)"),
        ("top_pred_share", pa.float64(), f"share of all predictions that are top_pred ({_PCT})"),
        ("collapse", pa.bool_(), "top_pred_share > 50: the model predicts mostly one class"),
        ("expected_overlap", pa.float64(), f"Overlap accuracy class mix alone predicts: Clean's per-class accuracy on Overlap's classes ({_PCT})"),
        ("adjusted_gap", pa.float64(), "acc_overlap − expected_overlap: the class-mix-adjusted Overlap − Clean (points)"),
        ("power_min_acc", pa.float64(), f"smallest Overlap accuracy that would be significant at this n ({_PCT})"),
        ("mde", pa.float64(), "minimum detectable effect: true Overlap − Clean detected with 80% power (points)"),
        ("i2t_r1", pa.float64(), f"image→text recall@1 ({_PCT}; caption benchmarks)"),
        ("i2t_r5", pa.float64(), f"image→text recall@5 ({_PCT})"),
        ("i2t_r10", pa.float64(), f"image→text recall@10 ({_PCT})"),
        ("t2i_r1", pa.float64(), f"text→image recall@1 ({_PCT})"),
        ("t2i_r5", pa.float64(), f"text→image recall@5 ({_PCT})"),
        ("t2i_r10", pa.float64(), f"text→image recall@10 ({_PCT})"),
        ("n_skipped", pa.int64(), "benchmark samples without an embedding (unreadable images)"),
    ],
)

DEFAULTS = {"model": "", "pretrained": "", "device": "auto", "precision": "auto", "batch_size": 256,
            "workers": -1, "alpha": stats.ALPHA, "benchmarks": []}
config.section("eval", DEFAULTS, {
    "model": "open_clip architecture (empty: the latest train/ checkpoint's)",
    "pretrained": "hub tag, checkpoint file or random (empty: the latest train/ checkpoint)",
    "device": "auto, cpu, cuda or cuda:N",
    "precision": "auto (bf16 on CUDA, fp32 on CPU), fp32, bf16 or fp16",
    "batch_size": "images per forward pass when embedding benchmarks",
    "workers": "decoding worker processes (-1: one per CPU core)",
    "alpha": "family-wise significance level for the Bonferroni correction",
    "benchmarks": "benchmarks to evaluate (empty: all of them)",
})
sql.report("eval-table", "The CLIP §5 table of every evaluated model.",
           "select model_tag, benchmark, n, n_overlap, round(overlap_pct, 2) as overlap_pct, "
           "round(acc_all, 2) as acc_all, round(acc_clean, 2) as acc_clean, round(acc_overlap, 2) as acc_overlap, "
           "round(all_minus_clean, 2) as all_minus_clean, p_value, significant "
           "from eval order by model_tag, benchmark", ("eval",))


@dataclasses.dataclass
class EvalResult:
    tag: str
    folder: Path
    rows: list[dict]  # the §5 table
    summary: dict


# -- which model ------------------------------------------------------------------------------

def find_checkpoint(ws: Workspace, run: str | None = None) -> Path:
    """The latest finished checkpoint of ``run`` (or of the most recently trained run)."""
    root = ws.path("train")
    runs = [root / run] if run else sorted((d for d in root.glob("*") if (d / "checkpoints").is_dir()),
                                           key=lambda d: (d / "checkpoints").stat().st_mtime)
    for d in reversed(runs):
        ck = latest_checkpoint(d / "checkpoints")
        if ck is not None:
            return ck
    if run:
        raise MissingUpstream(f"a checkpoint of run {run!r} ({root / run / 'checkpoints'})",
                              f"clipcurate train --name {run}")
    raise MissingUpstream(f"a trained checkpoint ({root}/*/checkpoints; or pass --model and --pretrained)",
                          "clipcurate train")


def resolve_spec(ws: Workspace, model: str | None = None, pretrained: str | None = None,
                 checkpoint: str | None = None, run: str | None = None):
    """(ModelSpec, checkpoint path or None) from the options; a checkpoint's architecture comes from
    its run's run.json unless --model names it."""
    if checkpoint or run or not (model or pretrained):  # a train checkpoint
        if checkpoint:
            ck = Path(checkpoint)
            if not ck.is_file():
                raise ClipcurateError(f"checkpoint {checkpoint!r} not found: pass an existing file, e.g. "
                                      f"train/RUN/checkpoints/epoch_N.pt (or omit --checkpoint for the latest)")
        else:
            ck = find_checkpoint(ws, run)
        arch = model or run_model(ck)
        if not arch:
            raise ClipcurateError(f"cannot tell which architecture {str(ck)!r} was trained with "
                                  f"(no run.json or params.txt beside it): pass --model")
        return ModelSpec(arch, str(ck)), ck
    if not model:
        raise ClipcurateError("--pretrained needs --model (the open_clip architecture of those weights)")
    if not pretrained:
        raise ClipcurateError(f"--model {model} needs --pretrained TAG|FILE|random (or --checkpoint FILE)")
    return ModelSpec(model, pretrained), None


# -- per-sample predictions -------------------------------------------------------------------

def zero_shot(image: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """argmax over classes of image · class weights (both L2-normalised), in float32."""
    logits = image.astype(np.float32) @ classes.astype(np.float32).T
    return logits.argmax(axis=1)


def retrieval(image: np.ndarray, indices: np.ndarray, captions: np.ndarray, cap_index: np.ndarray,
              ks=RECALL_KS, chunk: int = 1024) -> tuple[np.ndarray, dict]:
    """(per-image index of the image owning its top caption, {i2t_rK, t2i_rK} in %, and "hit5": per
    image whether one of its own captions is in its top 5)."""
    img = image.astype(np.float32)
    cap = captions.astype(np.float32)
    kmax = max(ks)
    pos = {int(ix): r for r, ix in enumerate(indices)}
    cap_owner = np.array([pos.get(int(i), -1) for i in cap_index], dtype=np.int64)  # caption -> image row
    top_pred = np.empty(len(img), dtype=np.int64)
    i2t_hits = {k: 0 for k in ks}
    hit5 = np.zeros(len(img), dtype=bool)  # per image: one of its captions in its top 5 (image→text R@5)
    for s in range(0, len(img), chunk):
        sim = img[s:s + chunk] @ cap.T  # [b, captions]
        k = min(kmax, sim.shape[1])
        top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        owners = cap_owner[top]  # image row of each top caption
        rows = np.arange(s, s + len(sim))[:, None]
        top_pred[s:s + len(sim)] = np.where(owners[:, 0] >= 0, indices[np.clip(owners[:, 0], 0, None)], -1)
        for kk in ks:
            i2t_hits[kk] += int((owners[:, :kk] == rows).any(axis=1).sum())
        hit5[s:s + len(sim)] = (owners[:, :5] == rows).any(axis=1)
    t2i_hits = {k: 0 for k in ks}
    for s in range(0, len(cap), chunk):
        sim = cap[s:s + chunk] @ img.T  # [b, images]
        k = min(kmax, sim.shape[1])
        top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
        own = cap_owner[s:s + len(sim)][:, None]
        for kk in ks:
            t2i_hits[kk] += int((top[:, :kk] == own).any(axis=1).sum())
    out = {"hit5": hit5}
    for kk in ks:
        out[f"i2t_r{kk}"] = 100.0 * i2t_hits[kk] / len(img) if len(img) else math.nan
        out[f"t2i_r{kk}"] = 100.0 * t2i_hits[kk] / len(cap) if len(cap) else math.nan
    return top_pred, out


def _splits(ws: Workspace, name: str) -> dict[int, str]:
    if "splits" not in mf.REGISTRY or not mf.get("splits").files(ws.root):
        raise MissingUpstream("overlap splits (overlap/splits.parquet)", "clipcurate overlap")
    t = mf.read_all("splits", ws.root, columns=["benchmark", "bench_index", "split"])
    t = t.filter(pc.equal(t["benchmark"], name))
    return dict(zip(t["bench_index"].to_pylist(), t["split"].to_pylist()))


def bonferroni_m(ws: Workspace) -> int:
    """m for Bonferroni: how many of the workspace's benchmarks have any Overlap sample in
    overlap/splits.parquet — a property of the workspace, the same whichever benchmarks one call
    evaluates (at least 1)."""
    names = {m["name"] for m in list_benchmarks(ws)}
    t = mf.read_all("splits", ws.root, columns=["benchmark", "split"])
    t = t.filter(pc.equal(t["split"], "overlap"))
    return max(1, len(set(t["benchmark"].to_pylist()) & names))


def _logits_top(image: np.ndarray, classes: np.ndarray, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(argmax class, the k best classes) of image · class weights, in float32."""
    logits = image.astype(np.float32) @ classes.astype(np.float32).T
    top = np.argsort(-logits, axis=1, kind="stable")[:, :min(k, logits.shape[1])]
    return logits.argmax(axis=1), top


def _benchmark_rows(ws: Workspace, tag: str, name: str, threshold: float):
    """(prediction rows, partial §5 row) for one benchmark; ``threshold`` = alpha / m."""
    b = load_benchmark(ws, name, columns=["uid", "index", "label"])
    indices, uids, image, classes, captions, cap_index = load_bench(ws, tag, name)
    split = _splits(ws, name)
    missing = [int(i) for i in indices if int(i) not in split]
    if missing:
        raise ClipcurateError(
            f"benchmark {name!r}: {len(missing)} sample(s) (e.g. index {missing[0]}) have no Overlap/Clean split in "
            f"overlap/splits.parquet: rerun `clipcurate overlap` (the benchmark changed since)")
    n_skipped = b.samples.num_rows - len(indices)
    extra = {f"{d}_r{k}": math.nan for d in ("i2t", "t2i") for k in RECALL_KS}
    n_classes = 0
    if b.kind == "classification":
        if not b.classes or classes is None or len(classes) == 0:
            raise ClipcurateError(
                f"benchmark {name!r} has no class names (benchmarks/{name}/classes.json is empty): re-add it with "
                f"`clipcurate bench add {name} --from SOURCE --classes FILE --force`")
        by_index = dict(zip(b.samples["index"].to_pylist(), b.samples["label"].to_pylist()))
        labels = np.array([by_index[int(i)] for i in indices], dtype=np.int64)
        if len(indices):
            preds, top = _logits_top(image, classes)
            top5 = (top == labels[:, None]).any(axis=1)
        else:
            preds, top5 = np.zeros(0, np.int64), np.zeros(0, bool)
        n_classes = len(classes)
        metric = "zero-shot top-1"
    else:
        if captions is None or cap_index is None or len(captions) == 0:
            raise ClipcurateError(f"caption benchmark {name!r} has no caption embeddings: "
                                  f"rerun `clipcurate embed --force` for it")
        labels = indices.astype(np.int64)
        preds, extra = retrieval(image, indices, captions, cap_index)
        top5 = extra.pop("hit5")
        metric = "image→text R@1"
    correct = preds == labels
    splits = [split[int(i)] for i in indices]
    preds_rows = {"model_tag": [tag] * len(indices), "benchmark": [name] * len(indices),
                  "bench_index": [int(i) for i in indices], "bench_uid": list(uids),
                  "label": labels.tolist(), "pred": [int(p) for p in preds], "correct": correct.tolist(),
                  "correct_top5": [bool(x) for x in top5], "split": splits}
    row = table.benchmark_row(b.kind, labels, preds, correct, top5, splits, n_classes, threshold)
    row.update({"model_tag": tag, "benchmark": name, "kind": b.kind, "metric": metric, "n_skipped": n_skipped,
                **extra})
    return preds_rows, row


# -- the stage --------------------------------------------------------------------------------

class EvalModel(Stage):
    """Steps 2-4 for one model, as a shard of ``eval/``, whose shards are the evaluated models.

    The plan lists the other models already evaluated (those with a marker) besides this one, so
    the plan and ``_SUCCESS`` ("every listed model evaluated") read as they always did; a model
    whose evaluation did not finish is left out (the runner would try to finish it, and only
    ``clipcurate eval`` with that model's options knows how).
    """

    name = FOLDER
    description = FOLDER

    def __init__(self, ws: Workspace, tag: str, names: list[str], spec: ModelSpec, checkpoint: Path | None,
                 alpha: float, device: str = "auto", precision: str = "auto", threads: int = 1):
        super().__init__(ws.path(FOLDER))
        self.reads = ("overlap",)  # the runner checks it is complete and current (the splits)
        self.device, self.precision, self.threads = device, precision, threads
        self.ws, self.tag, self.names, self.spec, self.checkpoint, self.alpha = ws, tag, names, spec, checkpoint, alpha
        self.rows: list[dict] = []
        self.summary: dict = {}

    def provenance(self) -> dict:
        """Model, checkpoint hash, precision, device, templates, class names, code version and the
        reproducibility settings (the training run's, from its run.json, and this evaluation's)."""
        ws, ck = self.ws, self.checkpoint
        out = {"model": self.spec.model, "weights": self.spec.pretrained or "random"}
        if ck:
            out["checkpoint"] = f"{ck} (sha256 {file_sha256(ck)})"
            rj = Path(ck).resolve().parent.parent / "run.json"
            if rj.is_file():
                run = read_json(rj)
                out["training"] = (f"run {run.get('run')}: set {run.get('data', 'clean')}, seed {run.get('seed')}, "
                                   f"{run.get('epochs')} epochs, batch {run.get('batch_size')}, lr {run.get('lr')}, "
                                   f"precision {run.get('precision')}, device {run.get('device')}")
                if run.get("determinism"):
                    out["training determinism"] = json.dumps(run["determinism"], sort_keys=True)
        out["eval precision / device"] = f"{self.precision} / {self.device}"
        for n in self.names:
            b = load_benchmark(ws, n, columns=["uid"])
            tpl = ws.path("benchmarks", n, "templates.txt")
            templates = [t for t in tpl.read_text().splitlines() if t.strip()] if tpl.is_file() else []
            out[f"{n}: templates"] = f"{len(templates)}: " + " | ".join(templates) if templates else "–"
            if b.classes:
                out[f"{n}: class names"] = ", ".join(b.classes)
        out["eval determinism"] = json.dumps(determinism_settings(self.threads), sort_keys=True)
        out["code version"] = provenance.code_version()
        return out

    def shards(self) -> list[str]:
        tags = {d.name for d in self.folder.iterdir()
                if d.is_dir() and (d / "eval.parquet").is_file() and is_done(self.folder, d.name)}
        return sorted(tags | {self.tag})

    def run_shard(self, shard: str) -> dict:
        if shard != self.tag:
            raise ClipcurateError(f"the evaluation of {shard!r} did not finish: rerun `clipcurate eval` for that model")
        ws, tag, names, spec, ck, alpha = self.ws, self.tag, self.names, self.spec, self.checkpoint, self.alpha
        # 2.-3. Predictions and the §5 table, benchmark by benchmark.
        pred_cols: dict[str, list] = {c.name: [] for c in PREDICTIONS.columns}
        rows = []
        m = bonferroni_m(ws)
        for n in names:
            p, r = _benchmark_rows(ws, tag, n, alpha / m)
            for k in pred_cols:
                pred_cols[k] += p[k]
            rows.append(r)
            if r["n_skipped"]:
                warn(f"eval: benchmark {n}: {r['n_skipped']} sample(s) have no embedding (unreadable) and are left out")
        for r, sig in zip(rows, stats.bonferroni([r["p_value"] for r in rows], m, alpha)):
            r["significant"], r["bonferroni_m"], r["threshold"] = sig, m, alpha / m
        summary = {**report.overlap_summary(rows), "model_tag": tag, "model": spec.model,
                   "pretrained": spec.pretrained or "random", "checkpoint": str(ck) if ck else None,
                   "alpha": alpha, "bonferroni_m": m,
                   "ci_level": stats.CI_LEVEL, "evaluated_at": time.time(), "benchmarks": names}

        # 4. Outputs, each atomic; the runner writes the marker last.
        folder = self.folder / tag
        folder.mkdir(parents=True, exist_ok=True)
        mf.write(PREDICTIONS, pred_cols, folder / "predictions.parquet")
        mf.write(EVAL, [{c.name: r.get(c.name) for c in EVAL.columns} for r in rows], folder / "eval.parquet")
        summary["provenance"] = self.provenance()
        write_json(folder / "summary.json", summary)
        class_names, hist = {}, {}
        for n, r in zip(names, rows):
            if r["kind"] == "classification":
                class_names[n] = list(load_benchmark(ws, n, columns=["uid"]).classes)
                preds = [p for b, p in zip(pred_cols["benchmark"], pred_cols["pred"]) if b == n]
                hist[n] = np.bincount(np.asarray(preds, np.int64), minlength=len(class_names[n])).tolist()
        report.write(folder, rows, {"tag": tag, "model": spec.model, "pretrained": spec.pretrained or "random",
                                    "checkpoint": str(ck) if ck else None, "provenance": summary["provenance"]},
                     summary, alpha, stats.CI_LEVEL, provenance.overlap_decisions(ws, names), hist, class_names)
        self.rows, self.summary = rows, summary
        return {"benchmarks": len(rows)}


def _benchmark_names(ws: Workspace, benchmarks: list[str] | None) -> list[str]:
    """The benchmarks to evaluate (default: all), each checked: one clear line per problem."""
    names = list(benchmarks or []) or [m["name"] for m in list_benchmarks(ws)]
    if not names:
        raise MissingUpstream(f"benchmarks ({ws.path('benchmarks')})", "clipcurate bench add NAME --from SOURCE")
    for n in names:
        b = load_benchmark(ws, n, columns=["uid"])  # one clear line for an unknown name
        if b.kind == "classification" and not b.classes:
            raise ClipcurateError(
                f"benchmark {n!r} has no class names (benchmarks/{n}/classes.json is empty): re-add it with "
                f"`clipcurate bench add {n} --from SOURCE --classes FILE --force`")
    return names


def evaluate(ws: Workspace, *, model: str | None = None, pretrained: str | None = None,
             checkpoint: str | None = None, run: str | None = None, benchmarks: list[str] | None = None,
             device: str = "auto", precision: str = "auto", batch_size: int = 256, workers: int = -1,
             alpha: float = stats.ALPHA, force: bool = False) -> EvalResult:
    """Evaluate one model on the workspace's benchmarks; see the module docstring."""
    if not 0 < alpha < 1:
        raise ClipcurateError(f"alpha {alpha!r} must lie strictly between 0 and 1")
    names = _benchmark_names(ws, benchmarks)
    _splits(ws, names[0])  # fail before the (slow) embedding when overlap has not run
    spec, ck = resolve_spec(ws, model, pretrained, checkpoint, run)
    log(f"eval: model {spec.model} weights {spec.pretrained or 'random'}")

    threads = pinned_threads()
    with deterministic(threads):
        # 1. Embeddings (reused when embed already made them for this model).
        tag = embed_benchmarks(ws, spec, names, device=device, precision=precision, batch_size=batch_size,
                               workers=workers, force=force)

        # 2.-4. The model's shard of eval/: always evaluated again (its marker goes), the rest skipped.
        marker(ws.path(FOLDER), tag).unlink(missing_ok=True)
        stage = EvalModel(ws, tag, names, spec, ck, alpha, device, precision, threads)
        stage.run()
    folder = ws.path(FOLDER, tag)
    log(f"eval: {len(stage.rows)} benchmark(s) -> {folder / 'report.md'}")
    return EvalResult(tag=tag, folder=folder, rows=stage.rows, summary=stage.summary)


def read_table(ws: Workspace, tag: str) -> list[dict]:
    p = ws.path(FOLDER, tag, "eval.parquet")
    if not p.is_file():
        raise MissingUpstream(f"eval table of {tag} ({p})", "clipcurate eval")
    return mf.read(EVAL, p).to_pylist()

