"""The eval report: Markdown with the CLIP §5 table, and a PNG in the style of CLIP's Figure 17.

Figure 17 of the CLIP paper has two panels, both with the detected overlap (%) on the x axis:

- left: the accuracy difference Overlap − Clean of each benchmark, with its 99.5% Clopper-Pearson
  interval (the interval of the Overlap accuracy, shifted by the Clean accuracy); a benchmark whose
  bar clears 0 is a statistically notable difference;
- right: the overall effect All − Clean. Since All = f·Overlap + (1 − f)·Clean with f the overlap
  fraction, All − Clean = f·(Overlap − Clean), and the same interval scaled by f gives its bar.
  With single-digit overlap, even a large Overlap − Clean moves All by little — CLIP's point.

Benchmarks whose p-value is significant after Bonferroni are drawn in red.
"""

from __future__ import annotations

import math
from pathlib import Path

from clipcurate.core.io import atomic_path, write_text


def _fmt(v, nd=2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def _p(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3g}"


def overlap_summary(rows: list[dict]) -> dict:
    """Median and mean overlap % across the benchmarks that have samples."""
    vals = sorted(r["overlap_pct"] for r in rows if r["n"] and not math.isnan(r["overlap_pct"]))
    if not vals:
        return {"benchmarks": 0, "median_overlap_pct": math.nan, "mean_overlap_pct": math.nan}
    mid = len(vals) // 2
    median = vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2
    return {"benchmarks": len(vals), "median_overlap_pct": median, "mean_overlap_pct": sum(vals) / len(vals)}


def markdown(rows: list[dict], info: dict, summary: dict, alpha: float, level: float) -> str:
    lines = [
        f"# Evaluation: `{info.get('tag')}`",
        "",
        f"- model: `{info.get('model')}`, weights: `{info.get('pretrained')}`",
    ]
    if info.get("checkpoint"):
        lines.append(f"- checkpoint: `{info['checkpoint']}`")
    lines += [
        f"- benchmarks: {len(rows)}; overlap across benchmarks: median {_fmt(summary['median_overlap_pct'])} %, "
        f"mean {_fmt(summary['mean_overlap_pct'])} %",
        "",
        "## CLIP §5 table",
        "",
        "Accuracy (%) on All, Clean and Overlap from the same per-sample predictions "
        "(`predictions.parquet`). p: one-tailed binomial test of the Overlap accuracy with the Clean "
        f"accuracy as the null (alternative: greater). CI: {100 * level:g}% Clopper-Pearson interval of the "
        f"Overlap accuracy. Significant: p < {alpha:g} / m after Bonferroni over the m benchmarks that have "
        "Overlap samples. Caption benchmarks are scored by image→text R@1 per sample.",
        "",
        "| benchmark | kind | n | overlap | overlap % | All | Clean | Overlap | All − Clean | p | CI | significant |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        ci = "–" if math.isnan(r["ci_low"]) else f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}]"
        lines.append(
            f"| {r['benchmark']} | {r['kind']} | {r['n']} | {r['n_overlap']} | {_fmt(r['overlap_pct'])} | "
            f"{_fmt(r['acc_all'])} | {_fmt(r['acc_clean'])} | {_fmt(r['acc_overlap'])} | "
            f"{_fmt(r['all_minus_clean'])} | {_p(r['p_value'])} | {ci} | {_fmt(r['significant'])} |")
    ret = [r for r in rows if r["kind"] == "captions"]
    if ret:
        lines += ["", "## Retrieval (%)", "",
                  "| benchmark | image→text R@1 | R@5 | R@10 | text→image R@1 | R@5 | R@10 |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in ret:
            lines.append(f"| {r['benchmark']} | " + " | ".join(
                _fmt(r[k]) for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")) + " |")
    skipped = [r for r in rows if r.get("n_skipped")]
    if skipped:
        lines += ["", "Samples without an embedding (unreadable images, skipped by `embed`): "
                  + ", ".join(f"{r['benchmark']} {r['n_skipped']}" for r in skipped) + "."]
    lines += ["", "![Figure 17](figure17.png)", "",
              "Every number above is in `eval.parquet`; per-sample correctness in `predictions.parquet`.", ""]
    return "\n".join(lines)


def figure17(rows: list[dict], path: Path, title: str = "") -> None:
    """Two panels like CLIP's Figure 17 (see the module docstring), written atomically as PNG."""
    # matplotlib: 0.6 s to import, and every stage module is imported by `clipcurate status`; the
    # Agg backend must be chosen before pyplot is imported
    import matplotlib  # matplotlib: 0.6 s to import, only when a figure is drawn

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: 0.6 s to import, only when a figure is drawn

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    pts = [r for r in rows if r["n_overlap"] and not math.isnan(r["acc_clean"])]
    for ax, which in zip(axes, ("overlap", "all")):
        ax.axhline(0, color="0.6", lw=0.8, zorder=0)
        for r in pts:
            f = r["overlap_pct"] / 100.0
            scale = 1.0 if which == "overlap" else f
            y = scale * r["overlap_minus_clean"]
            lo = scale * (r["ci_low"] - r["acc_clean"])
            hi = scale * (r["ci_high"] - r["acc_clean"])
            color = "tab:red" if r["significant"] else "tab:blue"
            ax.errorbar([r["overlap_pct"]], [y], yerr=[[max(0.0, y - lo)], [max(0.0, hi - y)]], fmt="o",
                        color=color, ecolor=color, elinewidth=1, capsize=3, ms=5)
            ax.annotate(r["benchmark"], (r["overlap_pct"], y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel("Detected data overlap (%)")
        ax.grid(alpha=0.3)
        ax.set_xlim(left=0)
    axes[0].set_ylabel("Difference in zero-shot accuracy (%)\nOverlap − Clean")
    axes[1].set_ylabel("Overall accuracy change due to overlap (%)\nAll − Clean")
    if not pts:
        for ax in axes:
            ax.text(0.5, 0.5, "no benchmark has Overlap samples", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(title or "Accuracy on overlapping vs clean data (99.5% Clopper-Pearson intervals)", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write(folder: Path, rows: list[dict], info: dict, summary: dict, alpha: float, level: float) -> None:
    folder = Path(folder)
    figure17(rows, folder / "figure17.png", title=f"{info.get('tag')}: Overlap vs Clean (99.5% CP intervals)")
    write_text(folder / "report.md", markdown(rows, info, summary, alpha, level))
