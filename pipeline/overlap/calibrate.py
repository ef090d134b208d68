"""`clipcurate overlap calibrate`: measure the duplicate detector's precision AND recall.

CLIP admits it could not measure the recall of its duplicate detector. With planted copies we can:

1. take ``copies`` benchmark images (seeded) and make one App. C near-duplicate of each
   (clipcurate.core.augment.app_c_copy: crop/zoom, aspect distortion, down/up-scaling with a random
   interpolation, small rotation, HSV jitter, JPEG re-encoding);
2. mix them among ``distractors`` pool images (real ones from ``pool/shards/*.tar``; synthetic
   photos from clipcurate.core.synth when there is no pool yet — the output says which);
3. embed the benchmark images and the calibration pool with the SAME model as the search
   (``embed/{tag}/model.json`` → clipcurate.core.models.load + its preprocess), stored as float16 like
   the real embeddings, and score every (benchmark, pool) pair with the same search code;
4. a pair is a true duplicate iff the pool image is the planted copy of that benchmark image;
   for every signal, sweep its threshold and count TP / FP / FN → precision and recall;
5. pick, per signal, the threshold with the best recall among those reaching ``target_precision``;
   report the combined decision (:func:`clipcurate.overlap.rules.combine`) at the configured thresholds
   and at the chosen ones.

A real pool may hold true copies of benchmark images that were not planted; they count as false
positives here, so the measured precision is a lower bound.

Signals: each entry of :data:`SCORERS` computes one ``pairs`` column for the calibration pairs
from the images (CLIP cosine from the embeddings; pHash/dHash Hamming distances from imagehash).
The detector issue adds its own (``score_detector``, ``kp_inliers``, ``text_sim``) by adding to
:data:`SCORERS`; :data:`clipcurate.overlap.rules.SIGNALS` says the column and the direction of each.

Outputs: ``overlap/calibration/curve.parquet`` (manifest ``calibration``), ``curve.png`` and
``thresholds.json`` (the chosen thresholds and a config snippet to paste into ``[overlap]``).
"""

from __future__ import annotations

import dataclasses
import io
import tarfile
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from clipcurate.core import config
from clipcurate.core import manifest as mf
from clipcurate.core import models
from clipcurate.core.augment import app_c_copy
from clipcurate.core.console import log, warn
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.io import atomic_path, write_json
from clipcurate.core.synth import make_image, png_bytes
from clipcurate.core.workspace import Workspace
from clipcurate.overlap.inputs import model_info, pick_tag
from clipcurate.overlap.rules import SIGNALS, decide, thresholds_for
from clipcurate.overlap.search import Searcher
from clipcurate.overlap.signals import calibration_scorers

FOLDER = "overlap/calibration"

mf.register(
    "calibration", version=1, glob="overlap/calibration/curve.parquet", stage="overlap",
    doc="Precision and recall of each duplicate signal against its threshold, measured on planted "
        "App. C copies of benchmark images (`clipcurate overlap calibrate`).",
    columns=[("benchmark", pa.string(), "benchmark whose images were planted"),
             ("model_tag", pa.string(), "model of the CLIP signal"),
             ("signal", pa.string(), "signal name (clip, phash, dhash, detector, ...)"),
             ("threshold", pa.float64(), "a pair is predicted duplicate when the signal passes this value"),
             ("precision", pa.float64(), "TP / (TP + FP); null when nothing is predicted"),
             ("recall", pa.float64(), "TP / planted copies"),
             ("tp", pa.int64(), "planted pairs predicted"),
             ("fp", pa.int64(), "other pairs predicted"),
             ("fn", pa.int64(), "planted pairs missed")])

config.section("overlap_calibrate", {
    "model_tag": "", "benchmark": "", "copies": 64, "distractors": 256, "target_precision": 0.95, "seed": 0,
    "strength": 1.0, "device": "auto", "batch_size": 64,
}, {
    "model_tag": "model to calibrate (embed/{tag}); default: as for `overlap`",
    "benchmark": "benchmark whose images are planted; default: the first with samples.parquet",
    "copies": "planted App. C copies (one per sampled benchmark image)",
    "distractors": "pool images mixed with the copies",
    "target_precision": "precision the chosen threshold must reach",
    "seed": "seed for the sampling and the augmentations",
    "strength": "App. C augmentation strength (1.0 = the paper's ranges)",
    "device": "auto, cpu or cuda for the embedding model",
    "batch_size": "images per embedding batch",
})


# ----------------------------------------------------------------------------------------------
# Signal scorers: name → fn(bench_images, pool_images, q, p, emb) → values for pairs (q[i], p[i])


@dataclasses.dataclass
class CalibSet:
    bench_images: list[Image.Image]
    pool_images: list[Image.Image]
    bench_emb: np.ndarray  # float16 [nq, d]
    pool_emb: np.ndarray  # float16 [np, d]
    ws: Workspace | None = None  # for scorers that read the workspace (the detector's descriptors)


def _clip_scores(cs: CalibSet, q: np.ndarray, p: np.ndarray) -> np.ndarray:
    # the same engine as the search, with a floor below any cosine: every pair comes back
    s = Searcher(cs.bench_emb, 1, -2.0, backend="numpy")
    pairs = s.add(cs.pool_emb, 0)
    full = np.full((len(cs.bench_emb), len(cs.pool_emb)), np.nan, np.float32)
    full[pairs.query, pairs.pos] = pairs.score
    return full[q, p]


def _hashes(images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
    import imagehash  # imagehash: 0.2 s to import; only `overlap calibrate` pays it here

    ph = np.array([int(str(imagehash.phash(im)), 16) for im in images], dtype=np.uint64)
    dh = np.array([int(str(imagehash.dhash(im)), 16) for im in images], dtype=np.uint64)
    return ph, dh


def _hash_scorer(which: int) -> Callable:
    def score(cs: CalibSet, q: np.ndarray, p: np.ndarray) -> np.ndarray:
        key = "_hash_cache"
        if not hasattr(cs, key):
            setattr(cs, key, (_hashes(cs.bench_images), _hashes(cs.pool_images)))
        (bph, bdh), (pph, pdh) = getattr(cs, key)
        a, b = (bph, pph) if which == 0 else (bdh, pdh)
        return np.bitwise_count(a[q] ^ b[p]).astype(np.float64)

    return score


SCORERS: dict[str, Callable] = {"clip": _clip_scores, "phash": _hash_scorer(0), "dhash": _hash_scorer(1)}
# The detector issue's signals: detector cosine, keypoint inliers (clipcurate.overlap.signals).
SCORERS.update(calibration_scorers())


# ----------------------------------------------------------------------------------------------
# Curves


def curve(values: np.ndarray, truth: np.ndarray, higher_is_better: bool, thresholds: np.ndarray) -> dict:
    """TP/FP/FN, precision and recall at each threshold (a pair passes when value >= t, or <= t
    for a distance). Pairs whose value is NaN (not computed) never pass."""
    v = np.asarray(values, np.float64)
    ok = ~np.isnan(v)
    v, t_pos = v[ok], truth[ok]
    n_true = int(truth.sum())
    key = v if higher_is_better else -v
    order = np.argsort(-key, kind="stable")
    ks, tp_cum = key[order], np.cumsum(t_pos[order])
    tk = thresholds if higher_is_better else -thresholds
    # number of pairs with key >= tk
    n_pred = np.searchsorted(-ks, -tk, side="right")  # ks is descending
    tp = np.where(n_pred > 0, tp_cum[np.maximum(n_pred - 1, 0)] if len(ks) else 0, 0)
    fp = n_pred - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(n_pred > 0, tp / np.maximum(n_pred, 1), np.nan)
    recall = tp / n_true if n_true else np.full(len(tk), np.nan)
    return {"threshold": thresholds.astype(np.float64), "precision": precision, "recall": recall,
            "tp": tp.astype(np.int64), "fp": fp.astype(np.int64), "fn": (n_true - tp).astype(np.int64)}


def choose(c: dict, target: float, higher_is_better: bool) -> dict:
    """The threshold with the best recall among those whose precision reaches ``target``
    (ties: the strictest threshold)."""
    ok = np.nan_to_num(c["precision"], nan=0.0) >= target
    if not ok.any():
        best = int(np.nanargmax(np.nan_to_num(c["precision"], nan=-1)))
        return {"threshold": None, "precision": _f(c["precision"][best]), "recall": _f(c["recall"][best]),
                "note": f"no threshold reaches precision {target}; best is {_f(c['precision'][best])} at "
                        f"{c['threshold'][best]:.4g}"}
    idx = np.flatnonzero(ok)
    rec = c["recall"][idx]
    cands = idx[rec == rec.max()]
    strict = cands[np.argmax(c["threshold"][cands])] if higher_is_better else cands[np.argmin(c["threshold"][cands])]
    i = int(strict)
    return {"threshold": float(c["threshold"][i]), "precision": _f(c["precision"][i]), "recall": _f(c["recall"][i]),
            "tp": int(c["tp"][i]), "fp": int(c["fp"][i]), "fn": int(c["fn"][i])}


def _f(x) -> float | None:
    return None if x is None or (isinstance(x, float) and np.isnan(x)) or np.isnan(float(x)) else round(float(x), 6)


def grid_for(name: str, values: np.ndarray) -> np.ndarray:
    sig = SIGNALS[name]
    if sig.column.endswith("_dist"):
        return np.arange(0, 65, dtype=np.float64)
    if name == "keypoints":
        return np.arange(0, 201, dtype=np.float64)
    lo = float(np.nanmin(values)) if np.isfinite(values).any() else 0.0
    return np.round(np.arange(min(0.0, np.floor(lo * 100) / 100), 1.0 + 1e-9, 0.005), 4)


# ----------------------------------------------------------------------------------------------
# Images


def bench_images(ws: Workspace, name: str) -> tuple[list[int], list[bytes]]:
    p = ws.root / "benchmarks" / name / "samples.parquet"
    if not p.is_file():
        raise MissingUpstream(f"benchmark {name!r} images ({p})", f"clipcurate bench add {name}")
    t = pq.read_table(p, columns=["index", "image"])
    idx, imgs = t.column("index").to_pylist(), t.column("image").to_pylist()
    keep = [(i, b) for i, b in zip(idx, imgs) if b]
    if not keep:
        raise ClipcurateError(f"{p}: no image bytes stored; re-add the benchmark with `clipcurate bench add {name}`")
    return [k[0] for k in keep], [k[1] for k in keep]


def pool_images(ws: Workspace, n: int, rng: np.random.Generator) -> tuple[list[bytes], str]:
    """Up to ``n`` pool images from the webdataset shards (seeded choice), or synthetic photos."""
    tars = sorted((ws.root / "pool" / "shards").glob("*.tar"))
    found: list[bytes] = []
    for t in tars:
        try:
            with tarfile.open(t, "r:") as tf:
                # by member name, not tar order (the downloader writes members in completion order)
                members = sorted((m for m in tf if m.isfile() and m.name.lower().endswith(
                    (".jpg", ".jpeg", ".png", ".webp"))), key=lambda m: m.name)
                found += [tf.extractfile(m).read() for m in members]
        except (tarfile.TarError, OSError):
            warn(f"calibrate: {t} is not a readable tar; skipped")
        if len(found) >= 4 * n:
            break
    if found:
        pick = sorted(rng.choice(len(found), min(n, len(found)), replace=False).tolist())
        return [found[i] for i in pick], "pool"
    warn("calibrate: no pool images (pool/shards/*.tar); using synthetic photos as distractors")
    return [png_bytes(make_image(int(rng.integers(0, 10)), 10_000 + i, "photo")) for i in range(n)], "synthetic"


def _open(b: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(b))
    return img.convert("RGB")


# ----------------------------------------------------------------------------------------------
# The run


def embedder_for(ws: Workspace, tag: str, device: str, batch_size: int) -> Callable[[list[Image.Image]], np.ndarray]:
    """images → L2-normalised float16 embeddings with the model that made embed/{tag}."""
    info = model_info(ws, tag)
    spec = models.ModelSpec(info.get("model"), info.get("pretrained"))
    lm = models.load(spec, device=models.resolve_device(device))
    if lm.tag != tag:
        warn(f"calibrate: embed/{tag}/model.json loads as model tag {lm.tag!r}")
    if info.get("dim") and lm.dim != info["dim"]:
        raise ClipcurateError(f"embed/{tag}/model.json says dim {info['dim']} but the model gives {lm.dim}")

    def embed(images: list[Image.Image]) -> np.ndarray:
        import torch  # torch: 2.6 s to import at module level; models.load has loaded it by now

        out = []
        for i in range(0, len(images), batch_size):
            px = torch.stack([lm.preprocess(im) for im in images[i:i + batch_size]]).to(lm.device)
            out.append(lm.encode_image(px).cpu().numpy())
        return np.concatenate(out).astype(np.float16)

    return embed


def run(ws: Workspace, overrides: dict | None = None, cfg: config.Config | None = None,
        embed: Callable[[list[Image.Image]], np.ndarray] | None = None) -> dict:
    """Plant, embed, score, sweep, choose; write curve.parquet, curve.png, thresholds.json."""
    ws.require()
    cfg = cfg or config.Config.load(ws.root)
    opts = cfg.get("overlap_calibrate", overrides or {})
    ov = cfg.get("overlap")
    tag = pick_tag(ws, opts["model_tag"] or ov["model_tag"] or None) if embed is None else (opts["model_tag"] or "custom")
    name = opts["benchmark"]
    if not name:
        found = sorted(p.parent.name for p in (ws.root / "benchmarks").glob("*/samples.parquet"))
        if not found:
            raise MissingUpstream(f"benchmarks ({ws.root / 'benchmarks'}/*/samples.parquet)", "clipcurate bench add")
        name = found[0]
    if int(opts["copies"]) < 1 or int(opts["distractors"]) < 0:
        raise ClipcurateError(f"--copies {opts['copies']} / --distractors {opts['distractors']}: need copies >= 1")
    target = float(opts["target_precision"])
    if not 0 < target <= 1:
        raise ClipcurateError(f"--target-precision {target}: must be in (0, 1]")
    rng = np.random.default_rng(int(opts["seed"]))
    idx, raw = bench_images(ws, name)
    n_copies = min(int(opts["copies"]), len(raw))
    src = sorted(rng.choice(len(raw), n_copies, replace=False).tolist())
    b_imgs = [_open(b) for b in raw]
    copies = [app_c_copy(b_imgs[s], int(rng.integers(0, 2**31)), float(opts["strength"])) for s in src]
    dist_bytes, pool_kind = pool_images(ws, int(opts["distractors"]), rng)
    p_imgs = [_open(b) for b in dist_bytes] + copies
    # query set: the planted sources plus as many other benchmark images (negatives), at most 4×copies
    others = [i for i in range(len(raw)) if i not in set(src)]
    extra = sorted(rng.choice(len(others), min(len(others), 3 * n_copies), replace=False).tolist()) if others else []
    q_rows = src + [others[i] for i in extra]
    q_imgs = [b_imgs[i] for i in q_rows]
    log(f"calibrate: {n_copies} App. C copies of {name} among {len(dist_bytes)} {pool_kind} images; "
        f"{len(q_imgs)} benchmark queries; model {tag}")
    if embed is None:
        embed = embedder_for(ws, tag, opts["device"], int(opts["batch_size"]))
    cs = CalibSet(q_imgs, p_imgs, embed(q_imgs), embed(p_imgs), ws)
    # every (query, pool) pair; truth: the pool image is the planted copy of this query
    nq, npool = len(q_imgs), len(p_imgs)
    q = np.repeat(np.arange(nq), npool)
    p = np.tile(np.arange(npool), nq)
    copy_of = np.full(npool, -1)
    copy_of[len(dist_bytes):] = np.arange(n_copies)  # query row j (j < n_copies) is the source of copy j
    truth = copy_of[p] == q
    values = {}
    for sname, fn in SCORERS.items():
        try:
            values[sname] = np.asarray(fn(cs, q, p), np.float64)
        except ClipcurateError as exc:
            warn(f"calibrate: signal {sname} skipped ({exc})")
    rows, chosen = [], {}
    curves = {}
    for sname, v in values.items():
        sig = SIGNALS[sname]
        c = curve(v, truth, sig.higher_is_better, grid_for(sname, v))
        curves[sname] = c
        chosen[sname] = choose(c, target, sig.higher_is_better)
        for i in range(len(c["threshold"])):
            rows.append({"benchmark": name, "model_tag": tag, "signal": sname, "threshold": float(c["threshold"][i]),
                         "precision": _f(c["precision"][i]), "recall": _f(c["recall"][i]), "tp": int(c["tp"][i]),
                         "fp": int(c["fp"][i]), "fn": int(c["fn"][i])})
    combined = _combined_both(values, truth, thresholds_for(ov, name), chosen)
    folder = ws.root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    mf.write("calibration", rows, folder / "curve.parquet")
    _plot(curves, chosen, target, name, tag, folder / "curve.png")
    snippet = {name: {"high": chosen["clip"]["threshold"]}} if chosen.get("clip", {}).get("threshold") is not None else {}
    result = {"benchmark": name, "model_tag": tag, "pool": pool_kind, "copies": n_copies, "distractors": len(dist_bytes),
              "queries": nq, "pairs": int(nq * npool), "target_precision": target, "chosen": chosen,
              "combined": combined, "config_snippet": {"overlap": {"thresholds": snippet}},
              "note": "unplanted true copies in a real pool count as false positives: precision is a lower bound"}
    write_json(folder / "thresholds.json", result)
    return result


def _combined_both(values: dict, truth: np.ndarray, th_conf: dict, chosen: dict) -> dict:
    """The combined decision (clipcurate.overlap.rules.combine) at the configured and at the chosen
    thresholds (a chosen threshold moves the review edge along when it would lie past it)."""
    combined = {"configured": _combined(values, truth, th_conf)}
    th_chosen = dict(th_conf)
    for sname, ch in chosen.items():
        if ch.get("threshold") is not None:
            hi, lo = th_conf[sname]
            t = ch["threshold"]
            th_chosen[sname] = (t, min(lo, t) if SIGNALS[sname].higher_is_better else max(lo, t))
    combined["chosen"] = _combined(values, truth, th_chosen)
    return combined


def _combined(values: dict, truth: np.ndarray, th: dict) -> dict:
    """Precision/recall of the combined decision: `overlap`, and `overlap or review` (caught)."""
    n = len(truth)
    votes = {name: np.full(n, None, dtype=object) for name in values}
    for name, v in values.items():
        sig = SIGNALS[name]
        hi, lo = th[name]
        o = sig.passes(v, hi)
        r = sig.passes(v, lo)
        vv = np.where(o, "overlap", np.where(r, "review", "clean")).astype(object)
        vv[np.isnan(v)] = None
        votes[name] = vv
    # the stage's own decision (clipcurate.overlap.rules.decide: the detector's rule when it scored the pair)
    cols = {SIGNALS[s].column: np.asarray(v, np.float64) for s, v in values.items()}
    decision = np.array([decide({c: (None if np.isnan(v[i]) else float(v[i])) for c, v in cols.items()}, th)[0]
                         for i in range(n)])
    out = {"thresholds": {k: list(v) for k, v in th.items() if k in values}}
    for label, pred in (("overlap", decision == "overlap"), ("overlap_or_review", decision != "clean")):
        tp = int((pred & truth).sum())
        npred = int(pred.sum())
        out[label] = {"precision": _f(tp / npred) if npred else None, "recall": _f(tp / truth.sum()) if truth.sum() else None,
                      "tp": tp, "fp": npred - tp, "fn": int(truth.sum()) - tp}
    return out


def _plot(curves: dict, chosen: dict, target: float, bench: str, tag: str, path: Path) -> None:
    import matplotlib  # matplotlib: 0.6 s to import; only `overlap calibrate` draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # matplotlib: 0.6 s to import, only when a figure is drawn

    n = max(1, len(curves))
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for ax, (name, c) in zip(axes[0], curves.items()):
        ax.plot(c["threshold"], c["precision"], label="precision")
        ax.plot(c["threshold"], c["recall"], label="recall")
        ax.axhline(target, color="grey", lw=0.8, ls=":")
        t = chosen[name].get("threshold")
        if t is not None:
            ax.axvline(t, color="red", lw=0.8, ls="--", label=f"chosen {t:.3g}")
        ax.set_title(f"{name} ({SIGNALS[name].column})", fontsize=9)
        ax.set_xlabel("threshold")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
    fig.suptitle(f"{bench} — planted App. C copies — {tag}", fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
