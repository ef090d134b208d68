"""What the overlap stage declares: its manifests, its entry in ``status``, its canned SQL reports
and its ``[overlap]`` options (read with :func:`options`).

The five manifests under ``overlap/``:

- ``pairs``: every (pool, benchmark) pair whose CLIP cosine passes the benchmark's ``low``
  threshold (plus the pairs only the detector or the captions propose), with all its signals and
  its automatic decision;
- ``neighbors``: the exact top-k pool neighbours of every benchmark sample;
- ``splits``: each benchmark sample in Overlap, Clean or Unreviewed, and what decided it;
- ``decontam``: the pool samples to drop before training;
- ``review_queue``: the pairs a human should look at, highest CLIP score first.
"""

from __future__ import annotations

import pyarrow as pa

from clipcurate.core import config
from clipcurate.core import manifest as mf
from clipcurate.core import sql
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.io import publish
from clipcurate.core.workspace import Workspace

FOLDER = "overlap"
# The files the stage publishes as one set (clipcurate.core.io.publish): a kill leaves the old set or
# the new one. SEARCH_OUTPUTS are what only a search remakes; a refresh (new review decisions) keeps
# them and writes the splits, decontam list and diagnostics again.
SEARCH_OUTPUTS = ("pairs.parquet", "neighbors.parquet", "review_queue.parquet", "run.json")
PUBLISHED = (*SEARCH_OUTPUTS, "splits.parquet", "decontam.parquet", "diagnostics.json")

SIGNAL_COLUMNS = [
    ("score_clip", pa.float32(), "CLIP image-image cosine similarity (higher = more alike)"),
    ("score_detector", pa.float32(), "copy-detector similarity (null until the detector runs)"),
    ("phash_dist", pa.int32(), "pHash Hamming distance, 0-64 (null until computed)"),
    ("dhash_dist", pa.int32(), "dHash Hamming distance, 0-64 (null until computed)"),
    ("kp_inliers", pa.int32(), "keypoint RANSAC inliers (null until computed)"),
    ("text_sim", pa.float32(), "caption/label text similarity (null until computed)"),
    ("pdq_dist", pa.int32(), "PDQ Hamming distance, 0-256, smallest over mirror / border-trimmed variants "
                             "(null until computed)"),
    ("kp_ncc", pa.float32(), "correlation of the pair after alignment: its guarded keypoint fit, else a direct ECC fit (null: neither)"),
]
PAIR_KEY = [
    ("pool_uid", pa.string(), "pool sample uid"),
    ("benchmark", pa.string(), "benchmark name"),
    ("bench_index", pa.int64(), "benchmark sample index"),
    ("bench_uid", pa.string(), "benchmark sample uid"),
]
RANK = ("rank", pa.int32(), "1 = nearest pool sample of this benchmark sample by score_clip; null beyond top-k")

mf.register(
    "pairs", version=2, glob="overlap/pairs.parquet", stage="overlap",
    doc="Every (pool, benchmark) pair whose CLIP cosine passes the benchmark's low threshold, with "
        "its signals and automatic decision (complete: not capped by k).",
    columns=[("pair_id", pa.string(), "decisions.pair_id(pool_uid, benchmark, bench_index)"),
             *PAIR_KEY, *SIGNAL_COLUMNS, RANK,
             ("decision", pa.string(), "overlap | review | clean | degenerate (automatic, before human review)"),
             ("reason", pa.string(), "why, e.g. `clip 0.973 >= high 0.95`")])
mf.register(
    "neighbors", version=1, glob="overlap/neighbors.parquet", stage="overlap",
    doc="The exact top-k pool neighbours of every benchmark sample by CLIP cosine (whatever the score).",
    columns=[("benchmark", pa.string(), "benchmark name"),
             ("bench_index", pa.int64(), "benchmark sample index"),
             ("bench_uid", pa.string(), "benchmark sample uid"),
             ("rank", pa.int32(), "1 = nearest; ties broken by pool order (shard name, row)"),
             ("pool_uid", pa.string(), "pool sample uid"),
             ("score", pa.float32(), "CLIP cosine similarity")])
mf.register(
    "splits", version=2, glob="overlap/splits.parquet", stage="overlap",
    doc="Each benchmark sample in the Overlap, Clean or Unreviewed split (All = the three), and what decided it.",
    columns=[("benchmark", pa.string(), "benchmark name"),
             ("bench_index", pa.int64(), "benchmark sample index"),
             ("bench_uid", pa.string(), "benchmark sample uid"),
             ("split", pa.string(), "overlap | clean | unreviewed (band pairs pending, nothing proves overlap)"),
             ("max_score", pa.float32(), "CLIP cosine of the nearest pool sample"),
             ("nearest_pool_uid", pa.string(), "uid of the nearest pool sample"),
             ("decided_by", pa.string(), "rule | human | auto-demo (the demo's automatic reviewer) | none (unreviewed)"),
             ("reason", pa.string(), "why, with the counts: `human: 1 duplicate vote(s) of 3 pair(s); 0 rejected; "
                                     "2 pending`"),
             ("n_pairs", pa.int32(), "pairs of this sample (pairs.parquet, plus decided pairs no longer there)"),
             ("pending_pairs", pa.int32(), "band pairs of this sample no one decided yet")])
mf.register(
    "decontam", version=1, glob="overlap/decontam.parquet", stage="overlap",
    doc="Pool samples to drop before training: near-copies of a benchmark sample.",
    columns=[("pool_uid", pa.string(), "pool sample uid to remove"),
             ("benchmark", pa.string(), "benchmark it copies"),
             ("bench_index", pa.int64(), "benchmark sample index it copies"),
             ("reason", pa.string(), "rule: ..., human: duplicate, auto-demo: duplicate, or unreviewed band pair: ...")])
mf.register(
    "review_queue", version=2, glob="overlap/review_queue.parquet", stage="overlap",
    doc="Pairs in the review band (and degenerate matches), highest CLIP score first, for `clipcurate review`.",
    columns=[("position", pa.int64(), "0-based place in the queue"),
             ("pair_id", pa.string(), "decisions.pair_id(pool_uid, benchmark, bench_index)"),
             *PAIR_KEY, *SIGNAL_COLUMNS, RANK])


sql.report(
    "overlap-rate", "Per benchmark: samples, Overlap, Clean and the overlap percentage (CLIP §5 table).",
    "select benchmark, count(*) as n, count(*) filter (where split = 'overlap') as n_overlap, "
    "count(*) filter (where split = 'clean') as n_clean, "
    "count(*) filter (where split = 'unreviewed') as n_unreviewed, "
    "round(100.0 * count(*) filter (where split = 'overlap') / count(*), 2) as overlap_pct "
    "from splits group by benchmark order by benchmark", needs=("splits",))
sql.report(
    "overlap-decisions", "Per benchmark: pairs by automatic decision, and their score range.",
    "select benchmark, decision, count(*) as pairs, min(score_clip) as min_clip, max(score_clip) as max_clip "
    "from pairs group by 1, 2 order by 1, 2", needs=("pairs",))

config.section("overlap", {
    "model_tag": "",
    "k": 10,
    "high": 0.95,
    "low": 0.85,
    "thresholds": {},
    "signal_thresholds": {},
    "unreviewed_pool": "drop",
    "backend": "auto",
    "block_elems": 0,
    "checkpoint_s": 60.0,
    "degenerate_std": 4.0,
    "degenerate_min_side": 16,
    "diag_sample": 2000,
    "calibration": "auto",
    "expand": True,
}, {
    "model_tag": "embeddings to search (embed/{tag}); default: the only/first CLIP tag present",
    "k": "top-k neighbours kept per benchmark sample (neighbors.parquet)",
    "high": "CLIP cosine at or above which a pair is an overlap (default for every benchmark)",
    "low": "CLIP cosine at or above which a pair is kept and reviewed (the search floor)",
    "thresholds": "per benchmark: {cifar10 = {high = 0.95, low = 0.85, detector = {overlap = 0.9, review = 0.7}}}",
    "signal_thresholds": "defaults for the other signals: {detector = {overlap = 0.9, review = 0.7}}",
    "unreviewed_pool": "pool samples of undecided band pairs: drop (on the decontam list, safe) or keep",
    "backend": "search backend: auto (torch on CUDA, else numpy), numpy, torch, faiss",
    "block_elems": "score block size in elements (0 = automatic)",
    "checkpoint_s": "seconds between search checkpoints (resume point after a kill)",
    "degenerate_std": "grey-level std (0-255) under which an image counts as near-constant",
    "degenerate_min_side": "images with a side shorter than this (pixels) count as tiny",
    "diag_sample": "clean samples whose images are measured for the diagnostics (overlap: all)",
    "calibration": "auto: the rule `overlap calibrate` chose decides overlap when it exists (an explicit --high or "
                   "per-signal thresholds for the run override it); on: it must exist; off: per-signal thresholds",
    "expand": "query expansion under the calibrated rule: a sample's candidates that the same rule takes as copies "
              "of its found copies are overlap too (clipcurate.overlap.expand)",
})


def options(ws: Workspace, overrides: dict | None = None, cfg: config.Config | None = None) -> dict:
    """The ``[overlap]`` options (config file < environment < ``overrides``), checked."""
    cfg = cfg or config.Config.load(ws.root)
    opts = cfg.get("overlap", overrides or {})
    if opts["unreviewed_pool"] not in ("drop", "keep"):
        raise ClipcurateError(f"[overlap] unreviewed_pool {opts['unreviewed_pool']!r}: use drop or keep")
    if int(opts["k"]) < 1:
        raise ClipcurateError(f"--k {opts['k']}: must be at least 1")
    return opts


def publish_outputs(ws: Workspace, keep: tuple[str, ...] = ()):
    """``with publish_outputs(ws) as out:`` write the overlap files into ``out``; they replace the
    published set together when the block ends (:func:`clipcurate.core.io.publish`)."""
    return publish(ws.root / FOLDER, PUBLISHED, keep=keep)
