"""The eval report: ``report.md`` and a self-contained ``report.html`` (figures inline, base64, no
network), built from one list of blocks so the two always say the same thing; plus the figures.

Figure 17 of the CLIP paper has two panels, both with the detected overlap (%) on the x axis:

- left: Overlap − Clean of each benchmark, with an interval that carries *both* splits' uncertainty
  (Overlap's 99.5% Clopper-Pearson lower bound − Clean's upper bound, to Overlap's upper − Clean's
  lower);
- right: the overall effect All − Clean = f·(Overlap − Clean), f the overlap fraction, with the
  same interval scaled by f. With single-digit overlap, even a large Overlap − Clean moves All by
  little — CLIP's point.

Benchmarks significant after Bonferroni are drawn in red; each point is labelled with its name and
Overlap n / n, and the legend says which is which. A second figure shows each classification
benchmark's prediction histogram with the 50 % collapse line.
"""

from __future__ import annotations

import base64
import html as htmlmod
import io
import math
from pathlib import Path

from clipcurate.core.io import atomic_path, write_text

COLLAPSE_SHARE = 50.0


def fmt(v, nd=2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def fmt_p(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{v:.3g}"


def ci(lo, hi, nd=1) -> str:
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return "–"
    return f"[{lo:.{nd}f}, {hi:.{nd}f}]"


def overlap_summary(rows: list[dict]) -> dict:
    """Median and mean overlap % across the benchmarks that have samples."""
    vals = sorted(r["overlap_pct"] for r in rows if r["n"] and not math.isnan(r["overlap_pct"]))
    if not vals:
        return {"benchmarks": 0, "median_overlap_pct": math.nan, "mean_overlap_pct": math.nan}
    mid = len(vals) // 2
    median = vals[mid] if len(vals) % 2 else (vals[mid - 1] + vals[mid]) / 2
    return {"benchmarks": len(vals), "median_overlap_pct": median, "mean_overlap_pct": sum(vals) / len(vals)}


# -- the content, once ------------------------------------------------------------------------

def blocks(rows: list[dict], info: dict, summary: dict, alpha: float, level: float, decisions: dict,
           hist: dict[str, list[int]], class_names: dict[str, list[str]]) -> list[tuple]:
    """The report as blocks: ("h", level, text), ("p", text), ("ul", [items]),
    ("table", headers, rows of cells), ("img", file name, alt)."""
    lvl = f"{100 * level:g}%"
    m = summary.get("bonferroni_m")
    out: list[tuple] = [("h", 1, f"Evaluation: {info.get('tag')}"), ("ul", [
        f"model {info.get('model')}, weights {info.get('pretrained')}",
        f"benchmarks: {len(rows)}; overlap across benchmarks: median {fmt(summary['median_overlap_pct'])} %, "
        f"mean {fmt(summary['mean_overlap_pct'])} %",
        f"Bonferroni: m = {m} (the workspace's benchmarks with any Overlap sample, whatever this call "
        f"evaluated), alpha {alpha:g}, threshold p < {alpha / max(1, m or 1):.4g}"])]

    out += [("h", 2, "CLIP §5 table"), ("p",
             "Accuracy (%) on All, Clean and Overlap from the same per-sample predictions (predictions.parquet). "
             f"Intervals: {lvl} Clopper-Pearson, for Clean as well as Overlap. All − Clean's interval combines "
             "both: f·(Overlap low − Clean high) to f·(Overlap high − Clean low), f = the overlap fraction. "
             "p: one-tailed binomial test of Overlap's correct count with Clean's accuracy as the null "
             "(alternative: greater)."),
            ("table", ["benchmark", "n", "Overlap n", "Overlap %", "All", "Clean", "Clean CI", "Overlap",
                       "Overlap CI", "Overlap − Clean", "All − Clean", "All − Clean CI", "p", "threshold (m)",
                       "significant"],
             [[r["benchmark"], r["n"], r["n_overlap"], fmt(r["overlap_pct"]), fmt(r["acc_all"]), fmt(r["acc_clean"]),
               ci(r["clean_ci_low"], r["clean_ci_high"]), fmt(r["acc_overlap"]), ci(r["ci_low"], r["ci_high"]),
               fmt(r["overlap_minus_clean"]), fmt(r["all_minus_clean"]), ci(r["amc_ci_low"], r["amc_ci_high"], 2),
               fmt_p(r["p_value"]), f"{r['threshold']:.4g} ({r['bonferroni_m']})", fmt(r["significant"])]
              for r in rows])]

    out += [("h", 2, "Unreviewed samples: the bounds they allow"), ("p",
             "A benchmark sample whose split still depends on undecided review pairs is unreviewed: it counts "
             "in All only. The two ends count every unreviewed sample Overlap, then every one Clean; if the "
             "conclusion is the same at both ends, more review cannot change it."),
            ("table", ["benchmark", "unreviewed", "All − Clean (decided)", "p (decided)",
                       "All − Clean (all unreviewed Overlap)", "p", "All − Clean (all unreviewed Clean)", "p"],
             [[r["benchmark"], r["n_unreviewed"], fmt(r["all_minus_clean"]), fmt_p(r["p_value"]),
               fmt(r["amc_if_overlap"]), fmt_p(r["p_if_overlap"]), fmt(r["amc_if_clean"]), fmt_p(r["p_if_clean"])]
              for r in rows])]

    out += [("h", 2, "What else could explain Overlap − Clean"), ("p",
             "Chance: 100 / classes (100 / n for captions). Balanced: mean per-class recall. Class mix: Clean's "
             "per-class accuracy applied to Overlap's classes is the Overlap accuracy class mix alone predicts; "
             "the adjusted gap is Overlap minus that. Top class: the share of all predictions that go to the most "
             f"predicted class (collapse above {COLLAPSE_SHARE:g} %)."),
            ("table", ["benchmark", "chance", "top-1 (All)", "top-5", "balanced", "top class (share %)",
                       "Overlap − Clean (raw)", "class mix predicts", "adjusted gap"],
             [[r["benchmark"], fmt(r["chance"]), fmt(r["acc_all"]), fmt(r["top5"]), fmt(r["balanced_acc"]),
               _top_class(r, class_names), fmt(r["overlap_minus_clean"]), fmt(r["expected_overlap"]),
               fmt(r["adjusted_gap"])] for r in rows])]
    collapsed = [r for r in rows if r["collapse"]]
    if collapsed:
        out.append(("p", "WARNING — prediction collapse: " + "; ".join(
            f"{r['benchmark']} predicts {_top_class(r, class_names)} % of the time" for r in collapsed)
            + ". Accuracy differences between splits then mostly reflect which classes each split holds."))

    out += [("h", 2, "Power"), ("p",
             "Smallest significant Overlap accuracy: the fewest correct Overlap samples whose p-value would clear "
             "the Bonferroni threshold at this Overlap n, as a %. Minimum detectable effect: the true Overlap − "
             "Clean that reaches it with 80% probability."),
            ("table", ["benchmark", "Overlap n", "Clean", "smallest significant Overlap", "minimum detectable effect"],
             [[r["benchmark"], r["n_overlap"], fmt(r["acc_clean"]), fmt(r["power_min_acc"]), fmt(r["mde"])]
              for r in rows])]

    out += [("h", 2, "Prediction histograms"), ("img", "histogram.png", "predictions per class")]
    for name, counts in hist.items():
        names = class_names.get(name) or [str(i) for i in range(len(counts))]
        out.append(("p", f"{name}: " + ", ".join(f"{c} {k}" for c, k in zip(names, counts))))

    out += decision_blocks(decisions)
    out += [("h", 2, "Figure 17"), ("img", "figure17.png", "Figure 17"), ("h", 2, "Provenance"),
            ("ul", [f"{k}: {v}" for k, v in info.get("provenance", {}).items()])]
    ret = [r for r in rows if r["kind"] == "captions"]
    if ret:
        out += [("h", 2, "Retrieval (%)"), ("table", ["benchmark", "image→text R@1", "R@5", "R@10",
                                                       "text→image R@1", "R@5", "R@10"],
                 [[r["benchmark"]] + [fmt(r[k]) for k in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10")]
                  for r in ret])]
    skipped = [r for r in rows if r.get("n_skipped")]
    if skipped:
        out.append(("p", "Samples without an embedding (unreadable images, skipped by embed): "
                    + ", ".join(f"{r['benchmark']} {r['n_skipped']}" for r in skipped) + "."))
    out.append(("p", "Every number above is in eval.parquet; per-sample correctness in predictions.parquet."))
    return out


def decision_blocks(decisions: dict) -> list[tuple]:
    """How overlap was decided, per benchmark (clipcurate.eval.provenance.overlap_decisions)."""
    return [("h", 2, "How overlap was decided"), ("table",
             ["benchmark", "thresholds (overlap / review)", "pairs by automatic decision", "samples by split and decider",
              "review band reviewed"],
             [[n, "; ".join(f"{s} {v[0]:.4g} / {v[1]:.4g}" for s, v in d.get("thresholds", {}).items()) or "–",
               ", ".join(f"{k} {v}" for k, v in sorted(d.get("pairs", {}).items())) or "–",
               ", ".join(f"{k} {v}" for k, v in sorted(d.get("samples", {}).items())) or "–",
               f"{d.get('band_reviewed', 0)} of {d.get('band_pairs', 0)} pairs"
               + (f" ({100 * d['band_reviewed'] / d['band_pairs']:.0f} %)" if d.get("band_pairs") else "")
               + (f"; {d['pending_pairs']} pending" if "pending_pairs" in d else "")]
              for n, d in decisions.items()])]



def _top_class(r: dict, class_names: dict[str, list[str]]) -> str:
    if r.get("top_pred") is None:
        return "–"
    names = class_names.get(r["benchmark"]) or []
    name = names[r["top_pred"]] if 0 <= r["top_pred"] < len(names) else str(r["top_pred"])
    return f"{name} ({r['top_pred_share']:.1f})"


# -- two renderers ----------------------------------------------------------------------------

def to_markdown(bl: list[tuple]) -> str:
    lines: list[str] = []
    for b in bl:
        if b[0] == "h":
            lines += ["#" * b[1] + " " + b[2], ""]
        elif b[0] == "p":
            lines += [b[1], ""]
        elif b[0] == "ul":
            lines += [f"- {x}" for x in b[1]] + [""]
        elif b[0] == "table":
            lines.append("| " + " | ".join(b[1]) + " |")
            lines.append("|" + " --- |" * len(b[1]))
            lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in b[2]]
            lines.append("")
        elif b[0] == "img":
            lines += [f"![{b[2]}]({b[1]})", ""]
    return "\n".join(lines)


def to_html(bl: list[tuple], images: dict[str, bytes], title: str) -> str:
    """One HTML file: styles inline, every figure a data: URI — it opens with no network."""
    e = htmlmod.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
             "body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 7px;"
             "font-size:13px}td{text-align:right}td:first-child{text-align:left}img{max-width:100%}"
             "</style></head><body>"]
    for b in bl:
        if b[0] == "h":
            parts.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            parts.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "ul":
            parts.append("<ul>" + "".join(f"<li>{e(str(x))}</li>" for x in b[1]) + "</ul>")
        elif b[0] == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in b[1])
            body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in b[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif b[0] == "img" and b[1] in images:
            data = base64.b64encode(images[b[1]]).decode("ascii")
            parts.append(f"<img alt='{e(b[2])}' src='data:image/png;base64,{data}'>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


# -- figures ----------------------------------------------------------------------------------

def _pyplot():
    import matplotlib  # matplotlib: 0.6 s to import, only when a figure is drawn

    matplotlib.use("Agg")  # before pyplot is imported
    import matplotlib.pyplot as plt  # matplotlib: 0.6 s to import, only when a figure is drawn

    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    return buf.getvalue()


def figure17(rows: list[dict], title: str = "") -> bytes:
    """Two panels like CLIP's Figure 17 (module docstring), as PNG bytes."""
    plt = _pyplot()
    from matplotlib.lines import Line2D  # matplotlib: already imported above

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    pts = [r for r in rows if r["n_overlap"] and not math.isnan(r["acc_clean"])]
    for ax, which in zip(axes, ("overlap", "all")):
        ax.axhline(0, color="0.6", lw=0.8, zorder=0)
        for r in pts:
            f = r["overlap_pct"] / 100.0
            scale = 1.0 if which == "overlap" else f
            y = scale * r["overlap_minus_clean"]
            lo = scale * (r["ci_low"] - r["clean_ci_high"])
            hi = scale * (r["ci_high"] - r["clean_ci_low"])
            color = "tab:red" if r["significant"] else "tab:blue"
            ax.errorbar([r["overlap_pct"]], [y], yerr=[[max(0.0, y - lo)], [max(0.0, hi - y)]], fmt="o",
                        color=color, ecolor=color, elinewidth=1, capsize=3, ms=5)
            ax.annotate(f"{r['benchmark']} (n {r['n_overlap']}/{r['n']})", (r["overlap_pct"], y),
                        textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set_xlabel("Detected data overlap (%)")
        ax.grid(alpha=0.3)
        ax.set_xlim(0, max([r["overlap_pct"] for r in pts] + [1.0]) * 1.35 + 2)  # room for the labels
    axes[0].set_ylabel("Difference in zero-shot accuracy (%)\nOverlap − Clean")
    axes[1].set_ylabel("Overall accuracy change due to overlap (%)\nAll − Clean")
    if not pts:
        for ax in axes:
            ax.text(0.5, 0.5, "no benchmark has Overlap samples", ha="center", va="center", transform=ax.transAxes)
    handles = [Line2D([], [], color="tab:red", marker="o", ls="-", label="significant after Bonferroni"),
               Line2D([], [], color="tab:blue", marker="o", ls="-", label="not significant"),
               Line2D([], [], color="0.3", ls="-", label="99.5% interval (Overlap's and Clean's)")]
    axes[0].legend(handles=handles, fontsize=8, loc="best")
    fig.suptitle(title or "Accuracy on overlapping vs clean data", fontsize=10)
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def histogram(hist: dict[str, list[int]], class_names: dict[str, list[str]]) -> bytes:
    """One bar chart per classification benchmark: predictions per class, the 50 % collapse line."""
    plt = _pyplot()
    k = max(1, len(hist))
    fig, axes = plt.subplots(1, k, figsize=(5.5 * k, 3.6), squeeze=False)
    for ax, (name, counts) in zip(axes[0], hist.items()):
        names = class_names.get(name) or [str(i) for i in range(len(counts))]
        ax.bar(range(len(counts)), counts, color="tab:gray")
        total = sum(counts) or 1
        ax.axhline(total * COLLAPSE_SHARE / 100, color="tab:red", ls="--", lw=1, label="collapse: 50 % of predictions")
        ax.set_xticks(range(len(counts)), names, rotation=45, ha="right", fontsize=8)
        ax.set_title(f"{name}: predictions per class (n {total})", fontsize=9)
        ax.legend(fontsize=8)
    if not hist:
        axes[0][0].text(0.5, 0.5, "no classification benchmark", ha="center", va="center")
    fig.tight_layout()
    data = _png(fig)
    plt.close(fig)
    return data


def write(folder: Path, rows: list[dict], info: dict, summary: dict, alpha: float, level: float,
          decisions: dict | None = None, hist: dict | None = None, class_names: dict | None = None) -> None:
    """report.md, report.html (self-contained), figure17.png and histogram.png, each atomically."""
    folder = Path(folder)
    hist, class_names = hist or {}, class_names or {}
    images = {"figure17.png": figure17(rows, title=f"{info.get('tag')}: Overlap vs Clean ({100 * level:g}% intervals)"),
              "histogram.png": histogram(hist, class_names)}
    for name, data in images.items():
        with atomic_path(folder / name) as tmp:
            Path(tmp).write_bytes(data)
    bl = blocks(rows, info, summary, alpha, level, decisions or {}, hist, class_names)
    write_text(folder / "report.md", to_markdown(bl))
    write_text(folder / "report.html", to_html(bl, images, f"Evaluation: {info.get('tag')}"))
