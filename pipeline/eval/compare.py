"""``clipcurate eval --compare RUN_A RUN_B``: the counterfactual — two models, the same samples.

CLIP §5 could only compare one model's accuracy on Overlap with its accuracy on Clean: different
samples, so class mix, difficulty and chance all enter the gap. clipcurate trains twice with one
recipe and seed — on the pool as downloaded ("all", run A) and on the decontaminated pool ("clean",
run B) — and asks what contamination did to *the same* benchmark samples:

1. both checkpoints are evaluated on the same splits (:func:`clipcurate.eval.evaluate`, reused);
2. per benchmark and split, the two models' per-sample correctness is paired by sample and
   compared with the exact McNemar test (clipcurate.eval.stats.mcnemar): acc(A) − acc(B) with its
   conditional exact interval, and the p-value, significant below alpha / m (m as in the §5 table);
3. besides, CLIP's All − Clean for each model (with its interval), so the two readings sit side by side.

If contamination helps, A beats B on Overlap (significantly) and the two models are close on Clean.
Output in ``eval/compare-{A}-vs-{B}/``: ``compare.parquet`` [compare], ``report.md`` and a
self-contained ``report.html``.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pyarrow as pa

from clipcurate.core import manifest as mf
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.io import write_text
from clipcurate.core.workspace import Workspace
from clipcurate.eval import report, stats
from clipcurate.eval.stage import FOLDER, EvalResult, evaluate

COMPARE = mf.register(
    "compare", version=1, glob=f"{FOLDER}/compare-*/compare.parquet", stage="eval",
    doc="The counterfactual: two trained models on the same benchmark samples, per benchmark and split.",
    columns=[
        ("run_a", pa.string(), "train run of model A (e.g. trained on the pool as downloaded)"),
        ("run_b", pa.string(), "train run of model B (e.g. trained on the decontaminated pool)"),
        ("model_a", pa.string(), "model tag of A's checkpoint (eval/{model_a}/)"),
        ("model_b", pa.string(), "model tag of B's checkpoint (eval/{model_b}/)"),
        ("benchmark", pa.string(), "benchmark name"),
        ("split", pa.string(), "overlap | clean: the same samples for both models"),
        ("n", pa.int64(), "paired samples"),
        ("acc_a", pa.float64(), "accuracy of A on them (in %)"),
        ("acc_b", pa.float64(), "accuracy of B on them (in %)"),
        ("diff", pa.float64(), "acc_a − acc_b (percentage points)"),
        ("diff_low", pa.float64(), "conditional exact interval of diff at the test's level, 1 − threshold "
                                   "(97.5% for m = 2), lower (points)"),
        ("diff_high", pa.float64(), "the same interval, upper (points)"),
        ("a_only", pa.int64(), "samples right by A only (discordant)"),
        ("b_only", pa.int64(), "samples right by B only (discordant)"),
        ("p_value", pa.float64(), "exact McNemar test (two-sided binomial on the discordant samples)"),
        ("threshold", pa.float64(), "alpha / m, m as in the §5 table"),
        ("significant", pa.bool_(), "p_value < threshold; null without samples"),
        ("amc_a", pa.float64(), "CLIP's All − Clean of model A (points)"),
        ("amc_b", pa.float64(), "CLIP's All − Clean of model B (points)"),
    ],
)


@dataclasses.dataclass
class CompareResult:
    folder: Path
    rows: list[dict]
    a: EvalResult
    b: EvalResult


def _correct(ws: Workspace, tag: str) -> dict[tuple[str, int], tuple[bool, str]]:
    t = mf.read(mf.get("predictions"), ws.path(FOLDER, tag, "predictions.parquet"),
                columns=["benchmark", "bench_index", "correct", "split"])
    return {(b, int(i)): (bool(c), s) for b, i, c, s in zip(t["benchmark"].to_pylist(), t["bench_index"].to_pylist(),
                                                           t["correct"].to_pylist(), t["split"].to_pylist())}


def paired_rows(run_a: str, run_b: str, a: EvalResult, b: EvalResult, pa_: dict, pb: dict, alpha: float) -> list[dict]:
    """Per benchmark and split (overlap, clean): the McNemar comparison of A and B."""
    rows = []
    amc_a = {r["benchmark"]: r for r in a.rows}
    amc_b = {r["benchmark"]: r for r in b.rows}
    for bench in [r["benchmark"] for r in a.rows]:
        ra = amc_a[bench]
        threshold = ra["threshold"]
        for split in ("overlap", "clean"):
            keys = sorted(k for k, (_, s) in pa_.items() if k[0] == bench and s == split)
            if any(k not in pb or pb[k][1] != split for k in keys):
                raise ClipcurateError(f"benchmark {bench!r}: the two evaluations used different splits; "
                                      f"rerun `clipcurate eval --compare {run_a} {run_b}`")
            # the interval at the level the test uses (1 − alpha / m): it excludes 0 when the
            # difference is significant, rather than at §5's fixed 99.5 %
            res = stats.mcnemar([pa_[k][0] for k in keys], [pb[k][0] for k in keys], level=1 - threshold)
            rows.append({"run_a": run_a, "run_b": run_b, "model_a": a.tag, "model_b": b.tag, "benchmark": bench, "split": split, "n": res["n"],
                         "acc_a": res["acc_a"], "acc_b": res["acc_b"], "diff": res["diff"],
                         "diff_low": res["diff_low"], "diff_high": res["diff_high"], "a_only": res["a_only"],
                         "b_only": res["b_only"], "p_value": res["p_value"], "threshold": threshold,
                         "significant": None if math.isnan(res["p_value"]) else bool(res["p_value"] < threshold),
                         "amc_a": ra["all_minus_clean"], "amc_b": amc_b[bench]["all_minus_clean"],
                         "_amc_a_ci": (ra["amc_ci_low"], ra["amc_ci_high"]),
                         "_amc_b_ci": (amc_b[bench]["amc_ci_low"], amc_b[bench]["amc_ci_high"]),
                         "_p_a": ra["p_value"], "_p_b": amc_b[bench]["p_value"]})
    return rows


def compare_blocks(rows: list[dict], run_a: str, run_b: str, a: EvalResult, b: EvalResult) -> list[tuple]:
    f, fp, ci = report.fmt, report.fmt_p, report.ci
    return [
        ("h", 1, f"Counterfactual: {run_a} vs {run_b}"),
        ("ul", [f"A = train run {run_a} ({a.tag}), B = train run {run_b} ({b.tag}); same recipe and seed",
                f"per-model reports: ../{a.tag}/report.html, ../{b.tag}/report.html"]),
        ("p", "Per benchmark and split, the two models on the same samples. Difference: acc(A) − acc(B) in "
              "points, conditional exact interval at the test's level (1 − threshold); p: exact McNemar test on "
              "the samples only one model "
              "gets right. If contamination helps, A beats B on Overlap and the two are close on Clean."),
        ("table", ["benchmark", "split", "n", "A", "B", "A − B", "interval", "right by A only", "right by B only",
                   "p (McNemar)", "threshold", "significant"],
         [[r["benchmark"], r["split"], r["n"], f(r["acc_a"]), f(r["acc_b"]), f(r["diff"]),
           ci(r["diff_low"], r["diff_high"]), r["a_only"], r["b_only"], fp(r["p_value"]), f"{r['threshold']:.4g}",
           f(r["significant"])] for r in rows]),
        ("h", 2, "CLIP's reading of each model: All − Clean"),
        ("table", ["benchmark", f"All − Clean ({run_a})", "interval", "p (Overlap vs Clean)",
                   f"All − Clean ({run_b})", "interval", "p (Overlap vs Clean)"],
         [[r["benchmark"], f(r["amc_a"]), ci(*r["_amc_a_ci"], 2), fp(r["_p_a"]), f(r["amc_b"]),
           ci(*r["_amc_b_ci"], 2), fp(r["_p_b"])] for r in rows if r["split"] == "overlap"]),
    ]


def compare(ws: Workspace, run_a: str, run_b: str, *, alpha: float = stats.ALPHA, **options) -> CompareResult:
    """Evaluate the latest checkpoints of two train runs and compare them sample by sample."""
    for r in (run_a, run_b):
        if not re.fullmatch(r"[A-Za-z0-9._-]+", r or ""):
            raise ClipcurateError(f"run name {r!r} must use letters, digits, '.', '_' or '-' only")
    if run_a == run_b:
        raise ClipcurateError(f"--compare needs two different train runs (got {run_a!r} twice)")
    a = evaluate(ws, run=run_a, alpha=alpha, **options)
    b = evaluate(ws, run=run_b, alpha=alpha, **options)
    rows = paired_rows(run_a, run_b, a, b, _correct(ws, a.tag), _correct(ws, b.tag), alpha)
    folder = ws.path(FOLDER, f"compare-{run_a}-vs-{run_b}")
    folder.mkdir(parents=True, exist_ok=True)
    mf.write(COMPARE, [{c.name: r.get(c.name) for c in COMPARE.columns} for r in rows], folder / "compare.parquet")
    bl = compare_blocks(rows, run_a, run_b, a, b)
    write_text(folder / "report.md", report.to_markdown(bl))
    write_text(folder / "report.html", report.to_html(bl, {}, f"Counterfactual: {run_a} vs {run_b}"))
    return CompareResult(folder=folder, rows=rows, a=a, b=b)
