"""`clipcurate overlap calibrate`: choose the overlap rule on planted copies, measure it on others.

CLIP admits it could not measure the recall of its duplicate detector. With planted copies we can —
as long as no figure is measured on the copies that chose the rule:

1. take ``copies`` benchmark images (seeded; every benchmark's images together unless one is
   named) and make a copy of each: half App. C copies (:func:`clipcurate.core.augment.app_c_copy`),
   half everyday edits (:mod:`clipcurate.overlap.edits`); a benchmark smaller than ``copies`` gets
   two copies per image;
2. mix them among ``distractors`` pool images (real ones from ``pool/shards/*.tar``; synthetic
   photos from clipcurate.core.synth when there is no pool yet — the output says which);
3. embed the benchmark images and the calibration pool with the SAME model as the search
   (``embed/{tag}/model.json``), and score every (benchmark, pool) pair with every signal the stage
   uses (:data:`SCORERS`; keypoints on the same candidates as the stage);
4. split the benchmark images in two halves: the rule (:mod:`clipcurate.overlap.combined`) is
   chosen on one, precision and recall are measured on the other with 95 % Clopper-Pearson
   intervals (:mod:`clipcurate.overlap.honest`); distractor pairs that look like real copies are
   kept out of the precision and reported apart; human review decisions join the choice when
   there are enough of them;
5. write the rule and the figures; ``overlap`` uses the rule by default (:mod:`clipcurate.overlap.policy`).

Outputs: ``overlap/calibration/curve.parquet`` (manifest ``calibration``: per signal, on the
held-apart half), ``curve.png`` and ``thresholds.json`` (the rule, the figures, the verdict).
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
from clipcurate.core.io import atomic_path, read_json, write_json
from clipcurate.core.synth import make_image, png_bytes
from clipcurate.core.workspace import Workspace
from clipcurate.overlap.combined import Rule
from clipcurate.overlap.edits import everyday_copy
from clipcurate.overlap.honest import choose_and_report, decision_pairs, features
from clipcurate.overlap.inputs import model_info, pick_tag
from clipcurate.overlap.rules import SIGNALS
from clipcurate.overlap.search import Searcher
from clipcurate.overlap.signals import calibration_scorers
from clipcurate.review import effective_decisions

FOLDER = "overlap/calibration"

mf.register(
    "calibration", version=1, glob="overlap/calibration/curve.parquet", stage="overlap",
    doc="Precision and recall of each duplicate signal against its threshold, measured on the held-apart "
        "half of the planted copies of benchmark images (`clipcurate overlap calibrate`).",
    columns=[("benchmark", pa.string(), "benchmark(s) whose images were planted (`a+b` for several)"),
             ("model_tag", pa.string(), "model of the CLIP signal"),
             ("signal", pa.string(), "signal name (clip, phash, dhash, detector, ...)"),
             ("threshold", pa.float64(), "a pair is predicted duplicate when the signal passes this value"),
             ("precision", pa.float64(), "TP / (TP + FP); null when nothing is predicted"),
             ("recall", pa.float64(), "TP / planted copies"),
             ("tp", pa.int64(), "planted pairs predicted"),
             ("fp", pa.int64(), "other pairs predicted"),
             ("fn", pa.int64(), "planted pairs missed")])

config.section("overlap_calibrate", {
    "model_tag": "", "benchmark": "", "copies": 200, "distractors": 256, "target_precision": 0.95, "seed": 0,
    "strength": 1.0, "device": "auto", "batch_size": 64, "min_decisions": 20, "use_decisions": True,
}, {
    "model_tag": "model to calibrate (embed/{tag}); default: as for `overlap`",
    "benchmark": "benchmark whose images are planted; default: all of them together (one rule decides for all)",
    "copies": "planted copies, half App. C, half everyday edits (one per sampled benchmark image; two when "
              "the benchmark is smaller); half of them choose the rule, half measure it",
    "distractors": "pool images mixed with the copies",
    "target_precision": "precision the chosen threshold must reach",
    "seed": "seed for the sampling and the augmentations",
    "strength": "App. C augmentation strength (1.0 = the paper's ranges)",
    "device": "auto, cpu or cuda for the embedding model",
    "batch_size": "images per embedding batch",
    "min_decisions": "human review decisions needed before they join the planted copies as labelled pairs (0: never)",
    "use_decisions": "when enough decisions exist, the rule the stage uses is the one chosen with them",
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
    verifier: object | None = None  # keypoint features per image, shared by sets with the same pool images


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


def _plant(b_imgs: list[Image.Image], n_copies: int, rng: np.random.Generator, strength: float
           ) -> tuple[list[int], list[Image.Image], list[str]]:
    """(source row of each copy, copies, kind of each copy): half App. C copies, half everyday edits
    (:mod:`clipcurate.overlap.edits`), each source used once — twice when the benchmark has fewer
    images than ``n_copies`` (one App. C copy and one edit)."""
    n = len(b_imgs)
    per = 2 if n_copies > n else 1
    srcs = sorted(rng.choice(n, min(n, -(-n_copies // per)), replace=False).tolist())
    rows, copies, kinds = [], [], []
    for j, s in enumerate(srcs):
        for k in range(per):
            if len(copies) >= n_copies:
                break
            if (j + k) % 2 == 0:
                copies.append(app_c_copy(b_imgs[s], int(rng.integers(0, 2**31)), strength))
                kinds.append("app_c")
            else:
                kind, img = everyday_copy(b_imgs[s], rng, int(rng.integers(0, 1 << 16)))
                copies.append(img)
                kinds.append(kind)
            rows.append(s)
    return rows, copies, kinds


def run(ws: Workspace, overrides: dict | None = None, cfg: config.Config | None = None,
        embed: Callable[[list[Image.Image]], np.ndarray] | None = None, write: bool = True) -> dict:
    """Plant, embed, score; choose on one half of the benchmark images and report on the other
    (:mod:`clipcurate.overlap.honest`); write curve.parquet, curve.png, thresholds.json (``write``
    false: only return the result, the workspace's calibration stays as it is)."""
    ws.require()
    cfg = cfg or config.Config.load(ws.root)
    opts = cfg.get("overlap_calibrate", overrides or {})
    ov = cfg.get("overlap")
    tag = pick_tag(ws, opts["model_tag"] or ov["model_tag"] or None) if embed is None else (opts["model_tag"] or "custom")
    names = [opts["benchmark"]] if opts["benchmark"] else \
        sorted(p.parent.name for p in (ws.root / "benchmarks").glob("*/samples.parquet"))
    if not names:
        raise MissingUpstream(f"benchmarks ({ws.root / 'benchmarks'}/*/samples.parquet)", "clipcurate bench add")
    name = "+".join(names)
    if int(opts["copies"]) < 2 or int(opts["distractors"]) < 0:
        raise ClipcurateError(f"--copies {opts['copies']} / --distractors {opts['distractors']}: need copies >= 2 "
                              f"(half choose the rule, half measure it)")
    target = float(opts["target_precision"])
    if not 0 < target <= 1:
        raise ClipcurateError(f"--target-precision {target}: must be in (0, 1]")
    rng = np.random.default_rng(int(opts["seed"]))
    # every benchmark's images together (the rule decides for all of them), unless one is named
    raw = [b for n in names for b in bench_images(ws, n)[1]]
    b_imgs = [_open(b) for b in raw]
    src, copies, kinds = _plant(b_imgs, int(opts["copies"]), rng, float(opts["strength"]))
    n_copies = len(copies)
    dist_bytes, pool_kind = pool_images(ws, int(opts["distractors"]), rng)
    p_imgs = [_open(b) for b in dist_bytes] + copies
    # queries: the planted sources, plus as many other benchmark images (negatives only)
    sources = sorted(set(src))
    others = [i for i in range(len(raw)) if i not in set(sources)]
    extra = sorted(rng.choice(len(others), min(len(others), len(sources)), replace=False).tolist()) if others else []
    q_rows = sources + [others[i] for i in extra]
    q_imgs = [b_imgs[i] for i in q_rows]
    # the two halves, by benchmark image: sources split evenly, the other queries too
    held = np.zeros(len(q_rows), bool)
    for part in (np.arange(len(sources)), np.arange(len(sources), len(q_rows))):
        held[rng.permutation(part)[: len(part) // 2]] = True
    log(f"calibrate: {n_copies} copies of {name} ({kinds.count('app_c')} App. C, {n_copies - kinds.count('app_c')} "
        f"everyday edits) among {len(dist_bytes)} {pool_kind} images; {len(q_imgs)} benchmark queries, half held "
        f"apart; model {tag}")
    if embed is None:
        embed = embedder_for(ws, tag, opts["device"], int(opts["batch_size"]))
    cs = CalibSet(q_imgs, p_imgs, embed(q_imgs), embed(p_imgs), ws)
    nq, npool = len(q_imgs), len(p_imgs)
    q = np.repeat(np.arange(nq), npool)
    p = np.tile(np.arange(npool), nq)
    qpos = {r: i for i, r in enumerate(q_rows)}
    copy_of = np.full(npool, -1)
    copy_of[len(dist_bytes):] = [qpos[s] for s in src]
    truth = copy_of[p] == q
    values = {}
    sig_opts = cfg.get("signals")
    off = ({"pdq", "phash", "dhash"} if not sig_opts["hashes"] else set()) | \
          ({"keypoints", "kp_ncc"} if not sig_opts["keypoints"] else set())
    for sname, fn in SCORERS.items():
        if sname in off:  # as in the stage: a signal switched off in [signals] is not calibrated
            continue
        try:
            values[sname] = np.asarray(fn(cs, q, p), np.float64)
        except ClipcurateError as exc:
            warn(f"calibrate: signal {sname} skipped ({exc})")
    extra_pairs, n_dec = _decisions(ws, values, opts)
    # a random-init CLIP is reported, never part of the rule (it is no copy detector)
    never = frozenset({"clip"}) if embed_random(ws, tag) else frozenset()
    rep = choose_and_report(values, truth, q, held, target, never_decide=never, pool=p)
    result = _result(name, tag, pool_kind, n_copies, kinds, dist_bytes, nq, npool, target, rep)
    if extra_pairs is not None:
        with_dec = choose_and_report(values, truth, q, held, target, extra=extra_pairs, never_decide=never, pool=p)
        result["with_decisions"] = {"decisions": n_dec, "rule": with_dec["rule"].to_json(),
                                    "combined": with_dec["combined"], "chosen_on": with_dec["chosen_on"]}
        result["decisions_note"] = _decisions_note(rep, with_dec, n_dec)
        if opts["use_decisions"]:
            result["rule"] = with_dec["rule"].to_json()
            result["combined"] = with_dec["combined"]
    final = Rule.from_json(result["rule"])
    result["query_expansion"] = expansion_check(cs, final, values, truth, q, p, held, rep["strong"], copy_of)
    if write:
        _write(ws, name, tag, values, truth, q, held, rep, target, result)
    return result


def expansion_check(cs: CalibSet, rule: Rule, values: dict, truth: np.ndarray, q: np.ndarray, p: np.ndarray,
                    held: np.ndarray, strong: np.ndarray, copy_of: np.ndarray) -> dict | None:
    """Query expansion (:mod:`clipcurate.overlap.expand`) on the held-apart half: each planted copy
    the rule found for its source queries every other image of the calibration pool with the same
    rule (a pool image scored higher against another query is left to that one). A pool image it
    takes is right when it is a copy of the same source (sources planted twice), wrong otherwise —
    except a distractor left out as a suspected real copy of that source
    (:mod:`clipcurate.overlap.honest`). None when the rule decides nothing."""
    if rule.threshold is None:
        return None
    names = [k for k in rule.weights if k in values]
    feats = features({k: values[k] for k in names})
    found = np.flatnonzero(truth & held[q] & rule.predict(feats))
    if not len(found):
        return {"found_copies": 0, "pairs": 0, "taken": 0, "true": 0, "false": 0}
    cols, src = p[found], q[found]
    sub = CalibSet([cs.pool_images[j] for j in cols], cs.pool_images, cs.pool_emb[cols], cs.pool_emb, cs.ws,
                   cs.verifier)
    nf, npool = len(cols), len(cs.pool_images)
    qq, pp = np.repeat(np.arange(nf), npool), np.tile(np.arange(npool), nf)
    vals = {k: np.asarray(SCORERS[k](sub, qq, pp), np.float64) for k in names}
    took = rule.predict(features(vals)) & (pp != cols[qq])
    z = rule.score(feats).reshape(-1, npool)  # a pool image joins only its best query, as in the stage
    took &= z[src[qq], pp] >= z.max(axis=0)[pp]
    took &= ~strong.reshape(-1, npool)[src[qq], pp]  # suspected real copies of the source: left out
    same = copy_of[pp] == src[qq]
    return {"found_copies": int(nf), "pairs": int(len(qq) - nf), "taken": int(took.sum()),
            "true": int((took & same).sum()), "false": int((took & ~same).sum())}


def _result(name, tag, pool_kind, n_copies, kinds, dist_bytes, nq, npool, target, rep) -> dict:
    rule = rep["rule"]
    reached = rule.threshold is not None
    c = rep["combined"]
    if not reached:
        verdict = (f"no signal and no combination reaches precision {target} on the choose half: `overlap` will "
                   f"decide no pair overlap by itself; pairs the signals flag go to review")
    elif c["precision"] is not None and c["precision"] < target:
        verdict = (f"the rule reached precision {target} on the choose half but {c['precision']:.3f} on the held-apart "
                   f"half: treat its overlap decisions with care (more copies narrow the interval)")
    else:
        verdict = f"`overlap` decides overlap with: {rule.describe()}"
    chosen = {k: {"threshold": v["threshold"], "precision": v["precision"], "recall": v["recall"],
                  "precision_ci": v["precision_ci"], "recall_ci": v["recall_ci"],
                  **({} if v["decisive"] else {"note": f"reaches precision {target} at no threshold: review only"})}
              for k, v in rep["signals"].items()}
    return {"benchmark": name, "model_tag": tag, "pool": pool_kind, "copies": n_copies,
            "copy_kinds": {k: kinds.count(k) for k in sorted(set(kinds))}, "distractors": len(dist_bytes),
            "queries": nq, "pairs": int(nq * npool), "target_precision": target,
            "measured_on": "held-apart half of the benchmark images (thresholds and rule chosen on the other half)",
            "held_apart": rep["held_apart"], "chosen_on": rep["chosen_on"], "chosen": chosen,
            "combined": c, "rule": rule.to_json(), "verdict": verdict,
            "suspected_real_copies": rep["suspected_real_copies"], "suspected_images": rep["suspected_images"],
            "excluded_pairs": rep["excluded_pairs"],
            "note": (f"{rep['suspected_real_copies']} distractor pair(s) look like real copies (PDQ ≤ 31, an aligned "
                     f"keypoint fit, or two signal families placing a distractor's best match among the planted "
                     f"copies), of {rep['suspected_images']} benchmark image(s); as copies recur, every distractor "
                     f"pair of those images ({rep['excluded_pairs']} pairs in all) is left out of the choice and of "
                     f"the precision, reported here apart")}


def _decisions(ws: Workspace, values: dict, opts: dict) -> tuple[tuple | None, int]:
    """Labelled pairs from the human review decisions on ``overlap/pairs.parquet`` (issue: decisions
    teach the rule), or None when there are fewer than ``min_decisions``."""
    p = ws.root / "overlap" / "pairs.parquet"
    if not p.is_file() or int(opts["min_decisions"]) <= 0:
        return None, 0
    verdicts = effective_decisions(ws)
    if not verdicts:
        return None, 0
    rows = mf.read("pairs", p).to_pylist()
    got = decision_pairs(rows, verdicts, [k for k in values if k in SIGNALS], int(opts["min_decisions"]))
    return got, (0 if got is None else len(got[1]))


def _decisions_note(rep: dict, with_dec: dict, n: int) -> str:
    a, b = rep["combined"], with_dec["combined"]

    def f(x):
        return "—" if x is None else f"{x:.3f}"

    return (f"{n} human decisions added to the choose half: held-apart precision {f(a['precision'])} → "
            f"{f(b['precision'])}, recall {f(a['recall'])} → {f(b['recall'])}")


def _write(ws, name, tag, values, truth, q, held, rep, target, result) -> None:
    """curve.parquet (per signal, on the held-apart half), curve.png, thresholds.json."""
    ho = held[q] & ~rep["strong"]
    rows, curves = [], {}
    for sname, v in values.items():
        sig = SIGNALS[sname]
        c = curve(v[ho], truth[ho], sig.higher_is_better, grid_for(sname, v))
        curves[sname] = c
        for i in range(len(c["threshold"])):
            rows.append({"benchmark": name, "model_tag": tag, "signal": sname, "threshold": float(c["threshold"][i]),
                         "precision": _f(c["precision"][i]), "recall": _f(c["recall"][i]), "tp": int(c["tp"][i]),
                         "fp": int(c["fp"][i]), "fn": int(c["fn"][i])})
    folder = ws.root / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    mf.write("calibration", rows, folder / "curve.parquet")
    _plot(curves, result["chosen"], target, name, tag, folder / "curve.png")
    write_json(folder / "thresholds.json", result)


def embed_random(ws: Workspace, tag: str) -> bool:
    """Whether embed/{tag}/model.json names a randomly initialised model (``pretrained = random``)."""
    p = ws.root / "embed" / tag / "model.json"
    return p.is_file() and str(read_json(p).get("pretrained") or "").lower() == "random"


def load_rule(ws: Workspace):
    """The calibrated rule of thresholds.json (:class:`clipcurate.overlap.combined.Rule`), or None."""
    p = ws.root / FOLDER / "thresholds.json"
    if not p.is_file():
        return None
    d = read_json(p)
    return Rule.from_json(d["rule"]) if d.get("rule") else None


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
