"""Splits and decontamination: the automatic decisions, overridden by human ones; the diagnostics.

Each benchmark sample lands in one of three splits (``splits.parquet``):

- **overlap**: one of its pairs is a duplicate — a human confirmed it (``review/decisions.jsonl``)
  or the rule decided it and no human rejected it (human verdicts override the rule both ways);
- **unreviewed**: nothing proves it overlap yet, but ``pending_pairs`` of its pairs sit in the review
  band undecided — its fate depends on them, so no global default decides it;
- **clean**: every pair that could make it overlap was rejected, or none reached the band.

``decided_by`` names what decided (``rule``, ``human``, ``auto-demo`` — the demo's automatic
reviewer — or ``none`` for unreviewed) and ``reason`` gives the counts behind it, e.g.
``human: 1 duplicate vote(s) of 3 pair(s); 0 rejected; 2 pending``. :func:`split_bounds` turns the
splits into the two ends of the §5 bounds (every unreviewed sample overlap, or every one clean).

The decontamination list holds the pool uids of the pairs that make a sample overlap, and — with
``unreviewed_pool = "drop"``, the default — those of every pending band pair, so that a possible
copy never reaches training before a human clears it (``keep`` leaves them in the pool).

:func:`refresh_splits` recomputes ``splits``, ``decontam`` and ``diagnostics.json`` from ``pairs``,
``neighbors`` and the decisions, without searching again — what ``overlap refresh`` and the review
screen (:func:`refresh_after_review`) call after new decisions.

The diagnostics answer CLIP's second caveat (Overlap and Clean can differ in distribution): per
benchmark, the class distribution Overlap vs Clean (chi-square) and simple image statistics.
"""

from __future__ import annotations

from typing import Mapping, TypeVar

import numpy as np
import pyarrow.compute as pc

from clipcurate.core import manifest as mf
from clipcurate.core import registry
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.io import write_json
from clipcurate.core.workspace import Workspace
from clipcurate.overlap.images import bench_image_stats, bench_samples
from clipcurate.overlap.rules import DECISIONS
from clipcurate.overlap.schema import FOLDER, options
from clipcurate.review import effective_decisions

K = TypeVar("K")


def _samples(ws: Workspace, pairs: list[dict], eff: dict) -> dict[tuple[str, int], dict]:
    """Every benchmark sample, with its nearest neighbour (rank 1) and its pairs — those of
    pairs.parquet and those a human decided that are no longer there (e.g. thresholds raised)."""
    folder = ws.root / FOLDER
    nb = mf.read("neighbors", folder / "neighbors.parquet",
                 columns=["benchmark", "bench_index", "bench_uid", "rank", "pool_uid", "score"])
    nb = nb.filter(pc.equal(nb.column("rank"), 1))  # the nearest neighbour of every benchmark sample
    samples: dict[tuple[str, int], dict] = {}
    for r in nb.to_pylist():
        key = (r["benchmark"], int(r["bench_index"]))
        s = samples.setdefault(key, {"bench_uid": r["bench_uid"], "max_score": None, "nearest": None, "pairs": []})
        if r["rank"] == 1:
            s["max_score"], s["nearest"] = r["score"], r["pool_uid"]
    seen_ids = set()
    for p in pairs:
        key = (p["benchmark"], int(p["bench_index"]))
        if key in samples:
            samples[key]["pairs"].append(p)
            seen_ids.add(p["pair_id"])
    # human decisions on pairs no longer in pairs.parquet (e.g. thresholds raised) still count
    for pid, v in eff.items():
        if pid in seen_ids or v.get("benchmark") is None:
            continue
        key = (v["benchmark"], int(v["bench_index"]))
        if key in samples:
            samples[key]["pairs"].append({"pair_id": pid, "pool_uid": v["pool_uid"], "benchmark": key[0],
                                          "bench_index": key[1], "score_clip": None, "decision": "clean",
                                          "reason": "decided in review"})
    return samples


def _sort_pairs(s: dict, eff: dict) -> dict[str, list]:
    """A sample's pairs by what decides them: a human (or the demo's automatic reviewer) vote,
    the rule's overlap, a band pair still pending, a degenerate match, the rule's clean."""
    out: dict[str, list] = {"human_dup": [], "rejected": [], "auto_dup": [], "pending": [], "degenerate": []}
    for p in s["pairs"]:
        v = eff.get(p["pair_id"])
        if v is not None:
            src = "auto-demo" if v["source"] == "auto-demo" else "human"
            out["human_dup" if v["verdict"] == "duplicate" else "rejected"].append((p, src))
        elif p["decision"] == "overlap":
            out["auto_dup"].append(p)
        elif p["decision"] == "review":
            out["pending"].append(p)
        elif p["decision"] == "degenerate":
            out["degenerate"].append(p)
    return out


def _split_sample(bench: str, index: int, s: dict, eff: dict, unreviewed_pool: str,
                  decontam: list[tuple]) -> dict:
    """One benchmark sample's split row; appends its decontam entries (human > rule > pending).

    The sample is Overlap as soon as one pair is a confirmed or automatic duplicate; else
    Unreviewed while a band pair is undecided (no global default decides it); else Clean. The
    reason spells out the counts behind the split."""
    g = _sort_pairs(s, eff)
    n, pending = len(s["pairs"]), len(g["pending"])
    by_vote = g["human_dup"][0][1] if g["human_dup"] else (g["rejected"][0][1] if g["rejected"] else None)
    tail = f" of {n} pair(s); {len(g['rejected'])} rejected; {pending} pending"
    for p, src in g["human_dup"]:
        decontam.append((p["pool_uid"], bench, index, f"{src}: duplicate"))
    for p in g["auto_dup"]:
        decontam.append((p["pool_uid"], bench, index, f"rule: {p['reason']}"))
    if unreviewed_pool == "drop":  # a possible copy never reaches training until a human clears it
        for p in g["pending"]:
            decontam.append((p["pool_uid"], bench, index, f"unreviewed band pair: {p['reason']}"))
    if g["human_dup"]:
        split, by = "overlap", by_vote
        reason = f"{by}: {len(g['human_dup'])} duplicate vote(s)" + tail
    elif g["auto_dup"]:
        split, by = "overlap", "rule"
        reason = f"rule: {g['auto_dup'][0]['reason']} ({len(g['auto_dup'])} automatic overlap pair(s)" + tail + ")"
    elif pending:
        split, by = "unreviewed", "none"
        reason = f"none: {pending} band pair(s) pending" + tail.replace(f"; {pending} pending", "")
    elif g["rejected"]:
        split, by = "clean", by_vote
        reason = f"{by}: every pair that could make it overlap rejected ({len(g['rejected'])}" + tail + ")"
    elif g["degenerate"]:
        split, by = "clean", "rule"
        reason = f"rule: degenerate match only ({g['degenerate'][0]['reason']}; {len(g['degenerate'])} of {n} pair(s))"
    else:
        split, by = "clean", "rule"
        ms = s["max_score"]
        reason = f"rule: no pair in the review band or above ({n} pair(s))" + \
            (f"; max clip {ms:.3f}" if ms is not None else "")
    return {"benchmark": bench, "bench_index": index, "bench_uid": s["bench_uid"], "split": split,
            "max_score": s["max_score"], "nearest_pool_uid": s["nearest"], "decided_by": by, "reason": reason,
            "n_pairs": n, "pending_pairs": pending}


SPLITS = ("overlap", "clean", "unreviewed")


def split_bounds(split: Mapping[K, str]) -> dict[str, dict[K, str]]:
    """The two ends of the §5 bounds: every ``unreviewed`` sample counted as ``overlap``, and every
    one counted as ``clean``. ``split`` maps any key (a bench_index, a (benchmark, index) pair) to
    its split from splits.parquet; the result has the same keys with overlap/clean only. With no
    unreviewed sample both ends are the same mapping (the bounds collapse to one figure)."""
    bad = sorted({v for v in split.values() if v not in SPLITS})
    if bad:
        raise ClipcurateError(f"split value {bad[0]!r}: expected one of {', '.join(SPLITS)}")
    return {f"unreviewed_as_{end}": {k: (end if v == "unreviewed" else v) for k, v in split.items()}
            for end in ("overlap", "clean")}


def refresh_splits(ws: Workspace, opts: dict | None = None) -> list[dict]:
    """Recompute splits.parquet + decontam.parquet + diagnostics.json from pairs, neighbors and the
    review decisions, without searching again. Returns one summary row per benchmark."""
    folder = ws.root / FOLDER
    for name in ("pairs", "neighbors"):
        if not (folder / f"{name}.parquet").is_file():
            raise MissingUpstream(f"overlap {name} ({folder / (name + '.parquet')})", "clipcurate overlap")
    opts = opts or options(ws)
    pairs = mf.read("pairs", folder / "pairs.parquet").to_pylist()
    eff = effective_decisions(ws)
    samples = _samples(ws, pairs, eff)
    split_rows, decontam = [], []
    for (bench, index), s in sorted(samples.items()):
        split_rows.append(_split_sample(bench, index, s, eff, opts["unreviewed_pool"], decontam))
    # one decontam row per (pool uid, benchmark sample), first reason wins (human > rule > pending)
    seen, drows = set(), []
    for uid, bench, index, reason in decontam:
        if (uid, bench, index) not in seen:
            seen.add((uid, bench, index))
            drows.append({"pool_uid": uid, "benchmark": bench, "bench_index": index, "reason": reason})
    drows.sort(key=lambda r: (r["benchmark"], r["bench_index"], r["pool_uid"]))
    mf.write("splits", split_rows, folder / "splits.parquet")
    mf.write("decontam", drows, folder / "decontam.parquet")
    per = diagnostics(ws, split_rows, pairs, opts)
    return per


def unreviewed_note(ws: Workspace) -> str:
    """`clipcurate status`'s line for overlap: how many benchmark samples are still unreviewed."""
    try:
        t = mf.read("splits", ws.root / FOLDER / "splits.parquet", columns=["split", "pending_pairs"])
    except ClipcurateError as exc:  # an older splits file: say what to run, never fail `status`
        return f"splits unreadable ({exc})"
    un = pc.equal(t.column("split"), "unreviewed")
    n = pc.sum(un.cast("int64")).as_py() or 0
    pending = pc.sum(pc.filter(t.column("pending_pairs"), un)).as_py() or 0
    return f"unreviewed={n} ({pending} pending pairs)"


registry.status_note("overlap", unreviewed_note)


def refresh_after_review(ws: Workspace) -> str:
    """Let the splits reflect new review decisions (:func:`refresh_splits`); returns a one-line note.
    Never raises: the decisions are safe in the log whatever happens here."""
    try:
        refresh_splits(ws)
    except ClipcurateError as exc:
        return f"decisions saved; splits not refreshed: {exc}"
    except Exception as exc:  # the decisions are safe in the log whatever happens here
        return (f"decisions saved; refreshing the splits failed ({exc.__class__.__name__}: {exc}); "
                f"rerun `clipcurate overlap` to apply them")
    return "decisions saved; overlap splits and decontam list refreshed"


# ----------------------------------------------------------------------------------------------
# Diagnostics (CLIP's second caveat)


def _class_chi2(ws: Workspace, bench: str, ov: list[int], cl: list[int]) -> dict:
    """Class distribution Overlap vs Clean: the counts and a chi-square test of independence."""
    from scipy.stats import chi2_contingency  # scipy.stats: 0.9 s to import; only overlap's last step pays it

    d: dict = {}
    lab = bench_samples(ws, bench, ["index", "label", "label_name"])
    if lab is None or "label" not in lab.column_names:
        d["class_chi2"] = {"note": "no labels (caption benchmark or samples.parquet missing)"}
        return d
    label_of = dict(zip(lab.column("index").to_pylist(), lab.column("label").to_pylist()))
    classes = sorted({v for v in label_of.values() if v is not None})
    if not (classes and ov and cl):
        d["class_chi2"] = {"note": "no labels, or one split empty"}
        return d
    ci = {c: i for i, c in enumerate(classes)}
    table = np.zeros((2, len(classes)), np.int64)
    for row_i, idxs in enumerate((ov, cl)):
        for i in idxs:
            lbl = label_of.get(i)
            if lbl is not None:
                table[row_i, ci[lbl]] += 1
    used = table.sum(axis=0) > 0
    t = table[:, used]
    if t.shape[1] >= 2 and (t.sum(axis=1) > 0).all():
        chi2, p, dof, _ = chi2_contingency(t)
        d["class_chi2"] = {"chi2": float(chi2), "p_value": float(p), "dof": int(dof), "classes": int(t.shape[1]),
                           "differs_at_0.01": bool(p < 0.01)}
    else:
        d["class_chi2"] = {"note": "fewer than two classes present in both splits"}
    d["class_counts"] = {"classes": [int(c) for c in np.array(classes)[used]],
                         "overlap": t[0].tolist(), "clean": t[1].tolist()}
    return d


def diagnostics(ws: Workspace, split_rows: list[dict], pairs: list[dict], opts: dict) -> list[dict]:
    """Per benchmark: counts, chi-square of the class distribution Overlap vs Clean, image statistics
    of both splits, degenerate matches. Written to overlap/diagnostics.json; returns the summary."""
    rng = np.random.default_rng(0)
    by_bench: dict[str, list[dict]] = {}
    for r in split_rows:
        by_bench.setdefault(r["benchmark"], []).append(r)
    out, summary = {}, []
    for bench, rows in sorted(by_bench.items()):
        n = len(rows)
        ov = [r["bench_index"] for r in rows if r["split"] == "overlap"]
        cl = [r["bench_index"] for r in rows if r["split"] == "clean"]
        un = [r for r in rows if r["split"] == "unreviewed"]
        bp = [p for p in pairs if p["benchmark"] == bench]
        dec_counts = {d: sum(p["decision"] == d for p in bp) for d in DECISIONS}
        d: dict = {"n": n, "n_overlap": len(ov), "n_clean": len(cl), "n_unreviewed": len(un),
                   "pending_pairs": sum(r["pending_pairs"] for r in un),
                   "overlap_pct": round(100.0 * len(ov) / n, 3) if n else 0.0,
                   "pairs": dec_counts,
                   "degenerate_samples": len({p["bench_index"] for p in bp if p["decision"] == "degenerate"}),
                   "decided_by": {k: sum(r["decided_by"] == k for r in rows) for k in ("rule", "human", "auto-demo", "none")}}
        d.update(_class_chi2(ws, bench, ov, cl))
        # image statistics: every overlap sample, a seeded sample of clean ones
        n_clean = min(len(cl), int(opts["diag_sample"]))
        cl_s = sorted(rng.choice(cl, n_clean, replace=False).tolist()) if n_clean else []
        st = bench_image_stats(ws, bench, set(ov) | set(cl_s))
        for split, idxs in (("overlap", ov), ("clean", cl_s)):
            vals = [st[i] for i in idxs if i in st]
            if vals:
                d[f"images_{split}"] = {"measured": len(vals), **{
                    f"{k}_mean": round(float(np.mean([v[k] for v in vals])), 3) for k in ("mean", "std", "width", "height")}}
        out[bench] = d
        summary.append({"benchmark": bench, "n": n, "n_overlap": len(ov), "n_clean": len(cl), "n_unreviewed": len(un),
                        "pending_pairs": d["pending_pairs"],
                        "overlap_pct": d["overlap_pct"], "review_pairs": dec_counts["review"],
                        "degenerate_pairs": dec_counts["degenerate"],
                        "class_p": d.get("class_chi2", {}).get("p_value")})
    write_json(ws.root / FOLDER / "diagnostics.json", out)
    return summary
