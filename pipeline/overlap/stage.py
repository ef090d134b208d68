"""Stage `overlap`: which pool samples are near-copies of benchmark samples (CLIP §5, App. C).

For every evaluation set, CLIP split the benchmark into **Overlap** (samples with a near-duplicate
in the training data), **Clean** (the rest) and **All**, and compared accuracy on the two. This
stage does that split, and produces the list of pool samples to drop before training:

1. **Search** (pipeline/search.py): stream the pool embedding shards once against all benchmark
   embeddings; keep (a) the exact top-k pool neighbours of every benchmark sample and (b) every
   pair whose CLIP cosine passes the benchmark's ``low`` (review) threshold. The search state is
   checkpointed (``overlap/search/``), so a killed run resumes where it stopped, and a rerun with
   the same inputs does not search again.
2. **Decide** each pair with the signals it has (CLIP cosine now; the detector adds more — see
   :data:`SIGNALS` and :func:`decide`): ``overlap`` past ``high``, ``review`` in the band,
   ``clean`` below; a pair whose benchmark or pool image is near-constant or tiny is
   ``degenerate`` instead (CLIP's Kinetics-700 black frames) and never counts as overlap silently.
3. **Split** (:func:`refresh_splits`): a benchmark sample is Overlap when one of its pairs is an
   overlap — or a human confirmed it (``review/decisions.jsonl``; human verdicts override the
   automatic ones both ways). Unreviewed band pairs count as ``review_default`` says (default
   ``overlap``: the Clean split stays clean). Their pool uids make the decontamination list.
4. **Diagnose**: per benchmark, class distribution Overlap vs Clean (chi-square) and simple image
   statistics, because Overlap and Clean can differ in distribution (CLIP's second caveat).

Outputs (manifests): ``pairs``, ``neighbors``, ``splits``, ``decontam``, ``review_queue`` under
``overlap/``, plus ``overlap/diagnostics.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate.core import config
from clipcurate.review import decisions as dec
from clipcurate.core import manifest as mf
from clipcurate.core import registry
from clipcurate.core import sql
from clipcurate.core.console import log, warn
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.io import clean_temp, read_json, write_json, write_text
from clipcurate.overlap.search import Pairs, Searcher, TopK
from clipcurate.core.stage import PLAN, SUCCESS, mark_done
from clipcurate.core.workspace import Workspace

FOLDER = "overlap"
DECISIONS = ("overlap", "review", "clean", "degenerate")

# ----------------------------------------------------------------------------------------------
# Manifests

SIGNAL_COLUMNS = [
    ("score_clip", pa.float32(), "CLIP image-image cosine similarity (higher = more alike)"),
    ("score_detector", pa.float32(), "copy-detector similarity (null until the detector runs)"),
    ("phash_dist", pa.int32(), "pHash Hamming distance, 0-64 (null until computed)"),
    ("dhash_dist", pa.int32(), "dHash Hamming distance, 0-64 (null until computed)"),
    ("kp_inliers", pa.int32(), "keypoint RANSAC inliers (null until computed)"),
    ("text_sim", pa.float32(), "caption/label text similarity (null until computed)"),
]
PAIR_KEY = [
    ("pool_uid", pa.string(), "pool sample uid"),
    ("benchmark", pa.string(), "benchmark name"),
    ("bench_index", pa.int64(), "benchmark sample index"),
    ("bench_uid", pa.string(), "benchmark sample uid"),
]
RANK = ("rank", pa.int32(), "1 = nearest pool sample of this benchmark sample by score_clip; null beyond top-k")

mf.register(
    "pairs", version=1, glob="overlap/pairs.parquet", stage="overlap",
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
    "splits", version=1, glob="overlap/splits.parquet", stage="overlap",
    doc="Each benchmark sample in the Overlap or the Clean split (All = both), and what decided it.",
    columns=[("benchmark", pa.string(), "benchmark name"),
             ("bench_index", pa.int64(), "benchmark sample index"),
             ("bench_uid", pa.string(), "benchmark sample uid"),
             ("split", pa.string(), "overlap | clean"),
             ("max_score", pa.float32(), "CLIP cosine of the nearest pool sample"),
             ("nearest_pool_uid", pa.string(), "uid of the nearest pool sample"),
             ("decided_by", pa.string(), "auto | human | auto-demo"),
             ("reason", pa.string(), "why, e.g. `human: duplicate` or `no pair above low 0.85`")])
mf.register(
    "decontam", version=1, glob="overlap/decontam.parquet", stage="overlap",
    doc="Pool samples to drop before training: near-copies of a benchmark sample.",
    columns=[("pool_uid", pa.string(), "pool sample uid to remove"),
             ("benchmark", pa.string(), "benchmark it copies"),
             ("bench_index", pa.int64(), "benchmark sample index it copies"),
             ("reason", pa.string(), "auto (score), human, or unreviewed band pair")])
mf.register(
    "review_queue", version=1, glob="overlap/review_queue.parquet", stage="overlap",
    doc="Pairs in the review band (and degenerate matches), highest CLIP score first, for `clipcurate review`.",
    columns=[("position", pa.int64(), "0-based place in the queue"),
             ("pair_id", pa.string(), "decisions.pair_id(pool_uid, benchmark, bench_index)"),
             *PAIR_KEY, *SIGNAL_COLUMNS, RANK])

registry.register_stage("overlap", FOLDER, "clipcurate overlap",
                        manifests=("pairs", "neighbors", "splits", "decontam", "review_queue"))

sql.report(
    "overlap-rate", "Per benchmark: samples, Overlap, Clean and the overlap percentage (CLIP §5 table).",
    "select benchmark, count(*) as n, count(*) filter (where split = 'overlap') as n_overlap, "
    "count(*) filter (where split = 'clean') as n_clean, "
    "round(100.0 * count(*) filter (where split = 'overlap') / count(*), 2) as overlap_pct "
    "from splits group by benchmark order by benchmark", needs=("splits",))
sql.report(
    "overlap-decisions", "Per benchmark: pairs by automatic decision, and their score range.",
    "select benchmark, decision, count(*) as pairs, min(score_clip) as min_clip, max(score_clip) as max_clip "
    "from pairs group by 1, 2 order by 1, 2", needs=("pairs",))

# ----------------------------------------------------------------------------------------------
# Config

config.section("overlap", {
    "model_tag": "",
    "k": 10,
    "high": 0.95,
    "low": 0.85,
    "thresholds": {},
    "signal_thresholds": {},
    "review_default": "overlap",
    "backend": "auto",
    "block_elems": 0,
    "checkpoint_s": 60.0,
    "degenerate_std": 4.0,
    "degenerate_min_side": 16,
    "diag_sample": 2000,
}, {
    "model_tag": "embeddings to search (embed/{tag}); default: the only/first CLIP tag present",
    "k": "top-k neighbours kept per benchmark sample (neighbors.parquet)",
    "high": "CLIP cosine at or above which a pair is an overlap (default for every benchmark)",
    "low": "CLIP cosine at or above which a pair is kept and reviewed (the search floor)",
    "thresholds": "per benchmark: {cifar10 = {high = 0.95, low = 0.85, detector = {overlap = 0.9, review = 0.7}}}",
    "signal_thresholds": "defaults for the other signals: {detector = {overlap = 0.9, review = 0.7}}",
    "review_default": "how unreviewed band pairs count in the splits: overlap (conservative) or clean",
    "backend": "search backend: auto (torch on CUDA, else numpy), numpy, torch, faiss",
    "block_elems": "score block size in elements (0 = automatic)",
    "checkpoint_s": "seconds between search checkpoints (resume point after a kill)",
    "degenerate_std": "grey-level std (0-255) under which an image counts as near-constant",
    "degenerate_min_side": "images with a side shorter than this (pixels) count as tiny",
    "diag_sample": "clean samples whose images are measured for the diagnostics (overlap: all)",
})

# ----------------------------------------------------------------------------------------------
# Signals: one registry, one documented combination rule


@dataclasses.dataclass(frozen=True)
class Signal:
    """A per-pair duplicate signal: its ``pairs`` column and which direction means "duplicate"."""

    name: str
    column: str
    higher_is_better: bool
    overlap: float  # default threshold for an overlap vote
    review: float  # default threshold for a review vote
    doc: str

    def vote(self, value, overlap: float, review: float) -> str | None:
        """``overlap`` / ``review`` / ``clean`` for one value (None when not computed)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if self.higher_is_better:
            return "overlap" if value >= overlap else "review" if value >= review else "clean"
        return "overlap" if value <= overlap else "review" if value <= review else "clean"

    def passes(self, values: np.ndarray, threshold: float) -> np.ndarray:
        return values >= threshold if self.higher_is_better else values <= threshold


SIGNALS: dict[str, Signal] = {
    "clip": Signal("clip", "score_clip", True, 0.95, 0.85, "CLIP image embedding cosine"),
    "detector": Signal("detector", "score_detector", True, 0.9, 0.7, "copy-detector cosine (App. C)"),
    "phash": Signal("phash", "phash_dist", False, 4, 10, "pHash Hamming distance"),
    "dhash": Signal("dhash", "dhash_dist", False, 4, 10, "dHash Hamming distance"),
    "keypoints": Signal("keypoints", "kp_inliers", True, 40, 15, "keypoint RANSAC inliers"),
    "text": Signal("text", "text_sim", True, 0.9, 0.6, "caption/label text similarity"),
}


def combine(votes: list[str]) -> str:
    """The combination rule for the signals a pair has (None votes are left out):

    - no signal says ``clean`` and at least one says ``overlap`` → ``overlap``;
    - every signal says ``clean`` → ``clean``;
    - otherwise (all in the band, or the signals disagree) → ``review`` — a human decides.

    With CLIP alone this is the plain high/low rule.
    """
    if not votes:
        return "clean"
    if "overlap" in votes and "clean" not in votes:
        return "overlap"
    if all(v == "clean" for v in votes):
        return "clean"
    return "review"


def thresholds_for(cfg: dict, benchmark: str) -> dict[str, tuple[float, float]]:
    """signal → (overlap, review) thresholds for one benchmark (config: per benchmark > defaults)."""
    per = (cfg.get("thresholds") or {}).get(benchmark, {}) or {}
    defaults = cfg.get("signal_thresholds") or {}
    for where, keys, known in ((f"thresholds.{benchmark}", per, {"high", "low", *SIGNALS}),
                               ("signal_thresholds", defaults, set(SIGNALS))):
        bad = sorted(set(keys) - known)
        if bad:
            raise ClipcurateError(f"[overlap] {where}: unknown key {bad[0]!r}; known: {', '.join(sorted(known))}")
    out = {}
    for name, sig in SIGNALS.items():
        if name == "clip":
            hi = float(per.get("high", cfg["high"]))
            lo = float(per.get("low", cfg["low"]))
        else:
            d = {**(defaults.get(name) or {}), **(per.get(name) or {})}
            hi, lo = float(d.get("overlap", sig.overlap)), float(d.get("review", sig.review))
        if (sig.higher_is_better and lo > hi) or (not sig.higher_is_better and lo < hi):
            raise ClipcurateError(
                f"[overlap] thresholds for {benchmark!r}: {name} review threshold {lo} is past its overlap "
                f"threshold {hi}; the review band must lie between clean and overlap")
        out[name] = (hi, lo)
    return out


def decide(row: dict, th: dict[str, tuple[float, float]]) -> tuple[str, str]:
    """(decision, reason) for one pair from its signal columns (before the degenerate check)."""
    votes, why, named = [], [], {}
    for name, sig in SIGNALS.items():
        v = row.get(sig.column)
        hi, lo = th[name]
        vote = sig.vote(v, hi, lo)
        if vote is None:
            continue
        votes.append(vote)
        named[name] = vote
        op = (">=" if vote == "overlap" else "in band" if vote == "review" else "<") if sig.higher_is_better else \
             ("<=" if vote == "overlap" else "in band" if vote == "review" else ">")
        ref = hi if vote == "overlap" else f"[{lo}, {hi})" if vote == "review" else lo
        if vote == "review" and not sig.higher_is_better:
            ref = f"({hi}, {lo}]"
        val = f"{v:.3f}" if isinstance(v, float) else str(v)
        why.append(f"{name} {val} {op} {ref}")
    if named.get("detector") is not None:  # the copy detector scored it: its rule (clipcurate.overlap.signals, docs/detector.md)
        from clipcurate.overlap.signals import detector_rule

        return detector_rule(named), "; ".join(why)
    # Hashes, keypoints and caption text can confirm a copy but never veto one: a heavy App. C copy
    # has a far pHash and few inliers (clipcurate.overlap.signals.CONFIRM_ONLY).
    from clipcurate.overlap.signals import CONFIRM_ONLY

    votes = [v for n, v in named.items() if not (v == "clean" and n in CONFIRM_ONLY)]
    return combine(votes), "; ".join(why) or "no signal"


# ----------------------------------------------------------------------------------------------
# Reading the embed stage's files (the file layout is the contract; see docs/design.md)


def embed_root(ws: Workspace) -> Path:
    return ws.root / "embed"


def model_tags(ws: Workspace, kind: str = "clip") -> list[str]:
    """Tags under embed/ whose model.json says ``kind`` (a missing kind counts as clip)."""
    out = []
    for p in sorted(embed_root(ws).glob("*/model.json")):
        try:
            info = read_json(p)
        except (OSError, ValueError):
            continue
        if (info.get("kind") or "clip") == kind:
            out.append(p.parent.name)
    return out


def pick_tag(ws: Workspace, tag: str | None) -> str:
    tags = model_tags(ws)
    # Only models that embedded the pool can be searched (eval embeds benchmarks alone for the
    # checkpoints it evaluates); prefer those, fall back to all so the error names what is missing.
    with_pool = [t for t in tags if any((embed_root(ws) / t / "pool").glob("*.npy"))]
    if not tag and with_pool:
        tags = with_pool
    if tag:
        if not (embed_root(ws) / tag / "model.json").is_file():
            raise ClipcurateError(
                f"--model-tag {tag!r}: no embed/{tag}/model.json; embedded CLIP tags: {', '.join(tags) or 'none'}")
        return tag
    if not tags:
        raise MissingUpstream(f"CLIP embeddings ({embed_root(ws)}/*/model.json)", "clipcurate embed")
    if len(tags) > 1:
        log(f"overlap: several embedded models ({', '.join(tags)}); using {tags[0]} (choose with --model-tag)")
    return tags[0]


@dataclasses.dataclass
class PoolShard:
    name: str
    npy: Path
    meta: Path
    rows: int


@dataclasses.dataclass
class Bench:
    name: str
    vectors: np.ndarray  # float16 [m, d], rows in embedding order
    index: np.ndarray  # int64 benchmark index per row
    uid: np.ndarray  # object (str) benchmark uid per row


def _npy_shape(path: Path) -> tuple[int, ...]:
    try:
        return np.load(path, mmap_mode="r").shape
    except Exception as exc:
        raise ClipcurateError(f"{path}: not a readable .npy ({exc.__class__.__name__}); rerun `clipcurate embed --force`") from None


def model_info(ws: Workspace, tag: str) -> dict:
    """embed/{tag}/model.json (the embed stage's reader)."""
    from clipcurate import embed

    return embed.model_info(ws, tag)


def pool_shards(ws: Workspace, tag: str) -> tuple[list[PoolShard], int]:
    """Finished pool shards (``.done`` present) in name order, and how many are unfinished."""
    folder = embed_root(ws) / tag / "pool"
    shards, unfinished = [], 0
    for npy in sorted(folder.glob("*.npy")):
        name = npy.name[:-len(".npy")]
        if "." in name or name.startswith("."):  # e.g. {shard}.text.npy
            continue
        if not (folder / f"{name}.done").exists():
            unfinished += 1
            continue
        shape = _npy_shape(npy)
        shards.append(PoolShard(name, npy, folder / f"{name}.parquet", int(shape[0])))
    return shards, unfinished


def _read_meta(path: Path, tag: str, n_rows: int, columns=("row", "uid", "index", "model_tag")) -> pa.Table:
    try:
        tbl = pq.read_table(path, columns=list(columns))
    except FileNotFoundError:
        raise ClipcurateError(f"{path}: missing (the rows ↔ uids of its .npy); rerun `clipcurate embed --force`") from None
    except Exception as exc:
        raise ClipcurateError(f"{path}: unreadable ({exc.__class__.__name__}); rerun `clipcurate embed --force`") from None
    tags = set(tbl.column("model_tag").unique().to_pylist())
    if tags - {tag}:
        raise ClipcurateError(
            f"{path}: made by model {sorted(tags - {tag})[0]!r}, not {tag!r}; embed everything with one model "
            f"(`clipcurate embed --force`)")
    rows = tbl.column("row").to_numpy()
    if tbl.num_rows != n_rows or (n_rows and (rows.min() != 0 or rows.max() != n_rows - 1)):
        raise ClipcurateError(
            f"{path}: {tbl.num_rows} rows for a .npy of {n_rows} vectors; rerun `clipcurate embed --force`")
    return tbl.take(pa.array(np.argsort(rows, kind="stable")))


def pool_uids(shard: PoolShard, tag: str) -> np.ndarray:
    return np.asarray(_read_meta(shard.meta, tag, shard.rows).column("uid").to_pylist(), dtype=object)


def bench_names(ws: Workspace, tag: str) -> tuple[list[str], list[str]]:
    """Embedded benchmarks (``bench/{name}.done`` present), and the unfinished ones."""
    folder = embed_root(ws) / tag / "bench"
    found = sorted(p.parent.name for p in folder.glob("*/image.npy"))
    return [n for n in found if (folder / f"{n}.done").exists()], [n for n in found if not (folder / f"{n}.done").exists()]


def load_bench(ws: Workspace, tag: str, name: str) -> Bench:
    """One benchmark's image embeddings through the embed stage's reader, plus the checks that
    the search needs: not empty, finite, one model."""
    from clipcurate import embed

    indices, uids, image, *_ = embed.load_bench(ws, tag, name)
    npy = embed_root(ws) / tag / "bench" / name / "image.npy"
    if image.ndim != 2 or len(image) == 0:
        raise ClipcurateError(
            f"benchmark {name!r} has no embedded images ({npy} has shape {tuple(image.shape)}): add samples with "
            f"`clipcurate bench add {name}` and rerun `clipcurate embed`")
    _read_meta(npy.with_suffix(".parquet"), tag, len(image))  # same model, rows 0..n-1
    from clipcurate.overlap.search import check_vectors

    try:
        check_vectors(image.astype(np.float32), "benchmark embeddings")
    except ClipcurateError as exc:
        raise ClipcurateError(f"{npy}: {exc}") from None
    return Bench(name, image, np.asarray(indices, np.int64), np.asarray(uids, dtype=object))


# ----------------------------------------------------------------------------------------------
# 1. Search, checkpointed


def _fingerprint(tag: str, benches: list[Bench], shards: list[PoolShard]) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(tag.encode())
    for b in benches:
        h.update(b.name.encode() + b"\0" + str(b.vectors.shape).encode())
        h.update(hashlib.blake2b(np.ascontiguousarray(b.vectors).tobytes(), digest_size=16).digest())
        h.update("\x1f".join(b.uid.tolist()).encode())
    for s in shards:
        st = s.npy.stat()
        h.update(f"{s.name}:{s.rows}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


class SearchRun:
    """The pool pass with its resume point: ``overlap/search/state.npz`` holds the running top-k
    and the shards folded into it; ``overlap/search/pairs/{shard}.parquet`` the floor pairs of each
    shard. Order on every checkpoint: pair parts (already written) → state → ``{shard}.done``
    markers, so a kill at any moment leaves a consistent resume point."""

    def __init__(self, ws: Workspace, tag: str, benches: list[Bench], shards: list[PoolShard], k: int,
                 floors: dict[str, float], backend: str, block_elems: int, checkpoint_s: float, force: bool):
        self.ws, self.tag, self.benches, self.shards = ws, tag, benches, shards
        self.k, self.floors, self.backend = k, floors, backend
        self.block_elems, self.checkpoint_s, self.force = block_elems or None, checkpoint_s, force
        self.folder = ws.root / FOLDER
        self.sdir = self.folder / "search"
        self.offsets = np.cumsum([0] + [s.rows for s in shards]).astype(np.int64)
        self.q_off = np.cumsum([0] + [len(b.vectors) for b in benches]).astype(np.int64)
        self.params = {"tag": tag, "k": k, "floors": floors, "fingerprint": _fingerprint(tag, benches, shards),
                       "shards": [s.name for s in shards]}

    def _compatible(self, old: dict) -> bool:
        """Reuse a previous search when it saw the same data with a k at least as large and floors
        at least as low (its results then contain ours; they are filtered on the way out)."""
        return (old.get("tag") == self.tag and old.get("fingerprint") == self.params["fingerprint"]
                and old.get("k", 0) >= self.k
                and all(old.get("floors", {}).get(b, 9.0) <= f for b, f in self.floors.items()))

    def run(self) -> tuple[TopK, Pairs, dict]:
        import shutil

        self.folder.mkdir(parents=True, exist_ok=True)
        clean_temp(self.folder)
        pfile = self.sdir / "params.json"
        old = read_json(pfile) if pfile.is_file() else None
        if self.force or old is None or not self._compatible(old):
            if old is not None and not self.force:
                log("overlap: inputs or search parameters changed; searching the pool again")
            shutil.rmtree(self.sdir, ignore_errors=True)
            for s in self.folder.glob("*.done"):
                s.unlink()
            (self.folder / SUCCESS).unlink(missing_ok=True)
            (self.sdir / "pairs").mkdir(parents=True, exist_ok=True)
            write_json(pfile, self.params)
            old = self.params
        write_json(self.folder / PLAN, {"stage": "overlap", "shards": [s.name for s in self.shards]})
        k_state = int(old["k"])
        floors_state = old["floors"]
        floor_vec = np.concatenate([np.full(len(b.vectors), floors_state[b.name], np.float32) for b in self.benches])
        queries = np.concatenate([b.vectors for b in self.benches])
        searcher = Searcher(queries, k_state, floor_vec, backend=self.backend, block_elems=self.block_elems)
        folded: list[str] = []
        sfile = self.sdir / "state.npz"
        if sfile.is_file():
            with np.load(sfile, allow_pickle=False) as z:
                searcher.set_top(z["scores"], z["pos"])
                folded = [str(s) for s in z["folded"]]
        done = set(folded)
        todo = [i for i, s in enumerate(self.shards) if s.name not in done]
        if done:
            log(f"overlap: {len(done)}/{len(self.shards)} pool shards already searched (resume point)")
        t_last = time.monotonic()
        t0 = time.perf_counter()
        from clipcurate.core.console import progress

        with progress(f"overlap search ({searcher.backend})", total=len(self.shards)) as advance:
            advance(len(done))
            pending: list[str] = []
            on_ray = getattr(self, "executor", None) is not None and self.executor.kind != "local"
            if on_ray:  # --executor ray: a task per shard, merged here in shard order, one checkpoint
                from clipcurate.overlap.remote import overlap_search_shards
                overlap_search_shards(self.executor, self, searcher, todo, folded, advance)
            for i in ([] if on_ray else todo):
                s = self.shards[i]
                x = np.load(s.npy)
                if x.ndim != 2 or x.shape[1] != searcher.d:
                    raise ClipcurateError(
                        f"{s.npy}: pool vectors of dimension {x.shape[-1] if x.ndim else '?'} but the benchmark "
                        f"vectors have {searcher.d}; embed both with the same model (`clipcurate embed --force`)")
                try:
                    pairs = searcher.add(x, int(self.offsets[i]))
                except ClipcurateError as exc:
                    raise ClipcurateError(f"{s.npy}: {exc}") from None
                del x
                _write_part(self.sdir / "pairs" / f"{s.name}.parquet", pairs)
                _after_shard_hook(s.name)
                pending.append(s.name)
                advance()
                if time.monotonic() - t_last >= self.checkpoint_s:
                    folded += pending
                    self._checkpoint(searcher.top, folded, pending)
                    pending, t_last = [], time.monotonic()
            if pending:
                folded += pending
                self._checkpoint(searcher.top, folded, pending)
        seconds = time.perf_counter() - t0
        parts = [_read_part(self.sdir / "pairs" / f"{s.name}.parquet") for s in self.shards]
        pairs = Pairs.concat(parts)
        # filter to this run's k and floors (the state may come from a wider search)
        final = searcher.top
        top = TopK(final.scores[:, :self.k].copy(), final.pos[:, :self.k].copy())
        floor_now = np.concatenate([np.full(len(b.vectors), self.floors[b.name], np.float32) for b in self.benches])
        keep = pairs.score >= floor_now[pairs.query]
        pairs = Pairs(pairs.query[keep], pairs.pos[keep], pairs.score[keep])
        stats = {"backend": searcher.backend, "pairs_scored": searcher.pairs_scored, "seconds": seconds,
                 "shards_searched": len(todo), "shards_total": len(self.shards)}
        return top, pairs, stats

    def _checkpoint(self, top: TopK, folded: list[str], new: list[str]) -> None:
        from clipcurate.core.io import atomic_path

        with atomic_path(self.sdir / "state.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, scores=top.scores, pos=top.pos, folded=np.array(folded, dtype=str))
        for name in new:
            mark_done(self.folder, name)


def _after_shard_hook(shard: str) -> None:
    """Called after a shard's pairs are written, before its checkpoint; tests make it crash."""


def _write_part(path: Path, p: Pairs) -> None:
    from clipcurate.core.io import atomic_path

    tbl = pa.table({"query": p.query, "pos": p.pos, "score": p.score})
    with atomic_path(path) as tmp:
        pq.write_table(tbl, tmp)


def _read_part(path: Path) -> Pairs:
    if not path.is_file():
        raise ClipcurateError(f"{path} is missing; rerun `clipcurate overlap --force`")
    t = pq.read_table(path)
    return Pairs(t.column("query").to_numpy().astype(np.int64), t.column("pos").to_numpy().astype(np.int64),
                 t.column("score").to_numpy().astype(np.float32))


# ----------------------------------------------------------------------------------------------
# Images: benchmark bytes, pool bytes, statistics, the degenerate flag


def image_stats(data: bytes | None) -> dict | None:
    """Mean grey level, grey std (0-255) and size of an encoded image; None when unreadable."""
    if not data:
        return None
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(data))
        w, h = img.size
        img.draft("L", (128, 128))
        g = np.asarray(img.convert("L"), dtype=np.float32)
    except Exception:
        return None
    return {"mean": float(g.mean()), "std": float(g.std()), "width": int(w), "height": int(h)}


def degenerate_reason(st: dict | None, cfg: dict, side: str) -> str | None:
    if st is None:
        return None
    if min(st["width"], st["height"]) < int(cfg["degenerate_min_side"]):
        return f"{side} image tiny ({st['width']}x{st['height']} < {cfg['degenerate_min_side']} px)"
    if st["std"] < float(cfg["degenerate_std"]):
        return f"{side} image near-constant (grey std {st['std']:.1f} < {cfg['degenerate_std']})"
    return None


def bench_samples(ws: Workspace, name: str, columns: list[str]) -> pa.Table | None:
    """benchmarks/{name}/samples.parquet (the columns that exist), or None."""
    p = ws.root / "benchmarks" / name / "samples.parquet"
    if not p.is_file():
        return None
    pf = pq.ParquetFile(p)
    cols = [c for c in columns if c in pf.schema_arrow.names]
    return pf.read(columns=cols)


def bench_image_stats(ws: Workspace, name: str, wanted: set[int]) -> dict[int, dict]:
    """index → image stats for the wanted benchmark indices (row group by row group)."""
    p = ws.root / "benchmarks" / name / "samples.parquet"
    out: dict[int, dict] = {}
    if not p.is_file() or not wanted:
        return out
    pf = pq.ParquetFile(p)
    if "image" not in pf.schema_arrow.names:
        return out
    for g in range(pf.num_row_groups):
        idx = pf.read_row_group(g, columns=["index"]).column("index").to_pylist()
        hit = [j for j, i in enumerate(idx) if i in wanted]
        if not hit:
            continue
        imgs = pf.read_row_group(g, columns=["image"]).column("image")
        for j in hit:
            st = image_stats(imgs[j].as_py())
            if st is not None:
                out[int(idx[j])] = st
    return out


def pool_image_stats(ws: Workspace, uids: set[str]) -> dict[str, dict]:
    """uid → image stats for pool images: the ``pool`` manifest gives shard and key, the image is
    ``{key}.jpg`` (or .png/.webp) in ``pool/shards/{shard}.tar`` (read by offset)."""
    files = sorted((ws.root / "pool" / "manifest").glob("*.parquet"))
    if not uids or not files:
        return {}
    from clipcurate.core.imageload import TarIndex

    where: dict[str, list[tuple[str, str]]] = {}
    for f in files:
        try:
            t = pq.read_table(f, columns=["uid", "shard", "key", "status"])
        except Exception:  # unreadable manifest: the pool side is simply not checked
            continue
        for uid, shard, key, status in zip(*(t.column(c).to_pylist() for c in ("uid", "shard", "key", "status"))):
            if uid in uids and status == "success":
                where.setdefault(shard, []).append((uid, key))
    out = {}
    for shard, items in sorted(where.items()):
        path = ws.root / "pool" / "shards" / f"{shard}.tar"
        if not path.is_file():
            continue
        tar = TarIndex(path)
        for uid, key in items:
            data = next((d for d in (tar.read(f"{key}{e}") for e in (".jpg", ".jpeg", ".png", ".webp")) if d), None)
            st = image_stats(data)
            if st is not None:
                out[uid] = st
    return out


# ----------------------------------------------------------------------------------------------
# 2. The stage


@dataclasses.dataclass
class Result:
    tag: str
    search: dict
    per_benchmark: list[dict]
    files: dict


def options(ws: Workspace, overrides: dict | None = None, cfg: config.Config | None = None) -> dict:
    cfg = cfg or config.Config.load(ws.root)
    opts = cfg.get("overlap", overrides or {})
    if opts["review_default"] not in ("overlap", "clean"):
        raise ClipcurateError(f"[overlap] review_default {opts['review_default']!r}: use overlap or clean")
    if int(opts["k"]) < 1:
        raise ClipcurateError(f"--k {opts['k']}: must be at least 1")
    return opts


def run(ws: Workspace, overrides: dict | None = None, force: bool = False,
        cfg: config.Config | None = None, executor=None) -> Result:
    """Search, decide, split, diagnose. ``overrides`` are the [overlap] options given on the CLI."""
    ws.require()
    opts = options(ws, overrides, cfg)
    tag = pick_tag(ws, opts["model_tag"] or None)
    names, unfinished_b = bench_names(ws, tag)
    if unfinished_b:
        warn(f"overlap: benchmark(s) {', '.join(unfinished_b)} not finished embedding (no bench/NAME.done) and "
             f"left out; rerun `clipcurate embed`")
    if not names:
        raise MissingUpstream(f"benchmark embeddings (embed/{tag}/bench/*/image.npy)", "clipcurate embed")
    benches = [load_bench(ws, tag, n) for n in names]
    dims = {b.name: b.vectors.shape[1] for b in benches}
    if len(set(dims.values())) > 1:
        raise ClipcurateError(f"benchmark embeddings of different dimensions {dims}; rerun `clipcurate embed --force`")
    shards, unfinished = pool_shards(ws, tag)
    if unfinished:
        warn(f"overlap: {unfinished} pool shard(s) under embed/{tag}/pool are not finished (no .done) and are "
             f"left out; rerun `clipcurate embed` then `clipcurate overlap`")
    if not shards:
        raise MissingUpstream(f"pool embeddings (embed/{tag}/pool/*.npy)", "clipcurate embed")
    d = benches[0].vectors.shape[1]
    for s in shards:  # the .npy headers only: a wrong shard fails before any search
        shape = _npy_shape(s.npy)
        if len(shape) != 2 or shape[1] != d:
            raise ClipcurateError(
                f"{s.npy}: pool vectors of dimension {shape[-1] if shape else '?'} but benchmark vectors of {d}; "
                f"embed both with the same model (`clipcurate embed --force`)")
    ths = {b.name: thresholds_for(opts, b.name) for b in benches}
    floors = {b.name: ths[b.name]["clip"][1] for b in benches}
    log(f"overlap: {len(benches)} benchmark(s), {sum(len(b.vectors) for b in benches)} samples × "
        f"{sum(s.rows for s in shards)} pool samples in {len(shards)} shard(s), model {tag}")
    srun = SearchRun(ws, tag, benches, shards, int(opts["k"]), floors, opts["backend"],
                     int(opts["block_elems"]), float(opts["checkpoint_s"]), force)
    srun.executor = executor  # --executor ray: pool shards searched as Ray tasks
    top, pairs, stats = srun.run()
    files = _write_outputs(ws, opts, tag, benches, shards, srun, top, pairs, ths)
    per = refresh_splits(ws, opts)
    write_text(ws.root / FOLDER / SUCCESS, "")
    return Result(tag, stats, per, files)


def _uids_at(shards: list[PoolShard], offsets: np.ndarray, pos: np.ndarray, tag: str) -> np.ndarray:
    """Pool uid of each global pool position (reads only the uid columns of the shards involved)."""
    out = np.empty(len(pos), dtype=object)
    if len(pos) == 0:
        return out
    which = np.searchsorted(offsets, pos, side="right") - 1
    for si in np.unique(which):
        sel = which == si
        uids = pool_uids(shards[si], tag)
        out[sel] = uids[pos[sel] - offsets[si]]
    return out


def _write_outputs(ws, opts, tag, benches, shards, srun: SearchRun, top: TopK, pairs: Pairs, ths) -> dict:
    folder = ws.root / FOLDER
    q_off = srun.q_off
    bench_of = np.searchsorted(q_off, np.arange(q_off[-1]), side="right") - 1
    all_index = np.concatenate([b.index for b in benches])
    all_uid = np.concatenate([b.uid for b in benches])
    names = np.array([b.name for b in benches], dtype=object)

    # neighbors (a): every benchmark sample × its top-k
    m, k = top.scores.shape
    qq = np.repeat(np.arange(m), k)
    rank = np.tile(np.arange(1, k + 1), m)
    ok = top.pos.ravel() >= 0
    qq, rank, npos, nsc = qq[ok], rank[ok], top.pos.ravel()[ok], top.scores.ravel()[ok]
    nuid = _uids_at(shards, srun.offsets, npos, tag)
    mf.write("neighbors", {"benchmark": names[bench_of[qq]], "bench_index": all_index[qq], "bench_uid": all_uid[qq],
                           "rank": rank.astype(np.int32), "pool_uid": nuid, "score": nsc}, folder / "neighbors.parquet")

    # pairs (b): rank from the top-k, signals, decision
    total_pool = int(srun.offsets[-1])
    key_top = qq.astype(np.int64) * (total_pool + 1) + npos
    order = np.argsort(key_top)
    key_sorted, rank_sorted = key_top[order], rank[order]
    pkey = pairs.query * (total_pool + 1) + pairs.pos
    if len(key_sorted):
        at_c = np.minimum(np.searchsorted(key_sorted, pkey), len(key_sorted) - 1)
        hit = key_sorted[at_c] == pkey
    else:
        at_c, hit = np.zeros(len(pkey), np.int64), np.zeros(len(pkey), bool)
    prank = [int(rank_sorted[a]) if h else None for a, h in zip(at_c, hit)]
    # deterministic order: benchmark, index, score desc, pool position
    o = np.lexsort((pairs.pos, -pairs.score, all_index[pairs.query], bench_of[pairs.query]))
    q, pos, score = pairs.query[o], pairs.pos[o], pairs.score[o]
    prank = [prank[i] for i in o]
    puid = _uids_at(shards, srun.offsets, pos, tag)
    bname = names[bench_of[q]]
    bidx = all_index[q]
    buid = all_uid[q]

    rows = []
    for i in range(len(q)):
        rows.append({"pair_id": dec.pair_id(puid[i], bname[i], int(bidx[i])), "pool_uid": puid[i], "benchmark": bname[i],
                     "bench_index": int(bidx[i]), "bench_uid": buid[i], "score_clip": float(score[i]),
                     "score_detector": None, "phash_dist": None, "dhash_dist": None, "kp_inliers": None,
                     "text_sim": None, "rank": prank[i]})
    # the other signals (detector, hashes, keypoints, captions) and the pairs only the detector or
    # the captions propose (clipcurate.overlap.signals)
    from clipcurate.overlap.signals import fill_pair_signals

    n_search = len(rows)
    rows = fill_pair_signals(ws, tag, rows, ths)
    if len(rows) > n_search:  # added pairs: back to the order benchmark, index, CLIP score desc
        rows.sort(key=lambda r: (r["benchmark"], r["bench_index"], -(r["score_clip"] if r["score_clip"] is not None
                                                                     else -9.0), r["pool_uid"]))
    # image statistics for the degenerate check (benchmark side always, pool side when the tars exist)
    bstats = {b.name: bench_image_stats(ws, b.name, {r["bench_index"] for r in rows if r["benchmark"] == b.name})
              for b in benches}
    pstats = pool_image_stats(ws, {r["pool_uid"] for r in rows})
    for r in rows:
        decision, reason = decide(r, ths[r["benchmark"]])
        if decision != "clean":
            deg = (degenerate_reason(bstats[r["benchmark"]].get(int(r["bench_index"])), opts, "benchmark")
                   or degenerate_reason(pstats.get(r["pool_uid"]), opts, "pool"))
            if deg:
                decision, reason = "degenerate", f"{deg}; {reason}"
        r["decision"], r["reason"] = decision, reason
    mf.write("pairs", rows, folder / "pairs.parquet")
    write_review_queue(ws, rows)
    write_json(folder / "run.json", {"model_tag": tag, "k": int(opts["k"]),
                                     "thresholds": {b: {s: list(v) for s, v in t.items()} for b, t in ths.items()},
                                     "benchmarks": [b.name for b in benches]})
    return {"pairs": str(folder / "pairs.parquet"), "neighbors": str(folder / "neighbors.parquet")}


def write_review_queue(ws: Workspace, rows: list[dict]) -> int:
    """Band pairs and degenerate matches, highest CLIP score first (ties: benchmark, index, pool uid)."""
    band = [r for r in rows if r["decision"] in ("review", "degenerate")]
    band.sort(key=lambda r: (-(r["score_clip"] if r["score_clip"] is not None else -9), r["benchmark"],
                             r["bench_index"], r["pool_uid"]))
    cols = [c.name for c in mf.get("review_queue").columns]
    out = [{**{c: r.get(c) for c in cols}, "position": i} for i, r in enumerate(band)]
    mf.write("review_queue", out, ws.root / FOLDER / "review_queue.parquet")
    return len(out)


# ----------------------------------------------------------------------------------------------
# 3. Splits and decontamination: automatic decisions, overridden by human ones


def refresh_splits(ws: Workspace, opts: dict | None = None) -> list[dict]:
    """Recompute splits.parquet + decontam.parquet + diagnostics.json from pairs, neighbors and the
    review decisions, without searching again. Returns one summary row per benchmark."""
    folder = ws.root / FOLDER
    for name in ("pairs", "neighbors"):
        if not (folder / f"{name}.parquet").is_file():
            raise MissingUpstream(f"overlap {name} ({folder / (name + '.parquet')})", "clipcurate overlap")
    opts = opts or options(ws)
    pairs = mf.read("pairs", folder / "pairs.parquet").to_pylist()
    import pyarrow.compute as pc

    nb = mf.read("neighbors", folder / "neighbors.parquet",
                 columns=["benchmark", "bench_index", "bench_uid", "rank", "pool_uid", "score"])
    nb = nb.filter(pc.equal(nb.column("rank"), 1))  # the nearest neighbour of every benchmark sample
    eff = dec.effective(ws)
    review_default = opts["review_default"]

    # every benchmark sample, with its nearest neighbour (rank 1)
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

    split_rows, decontam = [], []
    for (bench, index), s in sorted(samples.items()):
        split, by, reason = "clean", "auto", None
        human_dup, auto_dup, band, rejected, degenerate = [], [], [], [], []
        for p in s["pairs"]:
            v = eff.get(p["pair_id"])
            if v is not None:
                src = "auto-demo" if v["source"] == "auto-demo" else "human"
                (human_dup if v["verdict"] == "duplicate" else rejected).append((p, src))
            elif p["decision"] == "overlap":
                auto_dup.append(p)
            elif p["decision"] == "review":
                band.append(p)
            elif p["decision"] == "degenerate":
                degenerate.append(p)
        if human_dup:
            split, by = "overlap", human_dup[0][1]
            reason = f"{by}: duplicate confirmed ({len(human_dup)} pool sample(s))"
            for p, src in human_dup:
                decontam.append((p["pool_uid"], bench, index, f"{src}: duplicate"))
        if auto_dup:
            if split == "clean":
                split, by = "overlap", "auto"
                reason = auto_dup[0]["reason"]
            for p in auto_dup:
                decontam.append((p["pool_uid"], bench, index, f"auto: {p['reason']}"))
        if band and review_default == "overlap":
            if split == "clean":
                split, by = "overlap", "auto"
                reason = f"unreviewed band pair ({band[0]['reason']}); review_default = overlap"
            for p in band:
                decontam.append((p["pool_uid"], bench, index, f"unreviewed band pair: {p['reason']}"))
        if split == "clean":
            if rejected:
                by = rejected[0][1]
                reason = f"{by}: {len(rejected)} pair(s) rejected as not duplicates"
            elif band:
                reason = f"{len(band)} unreviewed band pair(s); review_default = clean"
            elif degenerate:
                reason = f"degenerate match only ({degenerate[0]['reason']})"
            else:
                ms = s["max_score"]
                reason = "no pair above the low threshold" + (f" (max clip {ms:.3f})" if ms is not None else "")
        split_rows.append({"benchmark": bench, "bench_index": index, "bench_uid": s["bench_uid"], "split": split,
                           "max_score": s["max_score"], "nearest_pool_uid": s["nearest"], "decided_by": by,
                           "reason": reason})
    # one decontam row per (pool uid, benchmark sample), first reason wins (human > auto > band)
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


# ----------------------------------------------------------------------------------------------
# 4. Diagnostics (CLIP's second caveat)


def diagnostics(ws: Workspace, split_rows: list[dict], pairs: list[dict], opts: dict) -> list[dict]:
    """Per benchmark: counts, chi-square of the class distribution Overlap vs Clean, image statistics
    of both splits, degenerate matches. Written to overlap/diagnostics.json; returns the summary."""
    from scipy.stats import chi2_contingency

    rng = np.random.default_rng(0)
    by_bench: dict[str, list[dict]] = {}
    for r in split_rows:
        by_bench.setdefault(r["benchmark"], []).append(r)
    out, summary = {}, []
    for bench, rows in sorted(by_bench.items()):
        n = len(rows)
        ov = [r["bench_index"] for r in rows if r["split"] == "overlap"]
        cl = [r["bench_index"] for r in rows if r["split"] == "clean"]
        bp = [p for p in pairs if p["benchmark"] == bench]
        dec_counts = {d: sum(p["decision"] == d for p in bp) for d in DECISIONS}
        d: dict = {"n": n, "n_overlap": len(ov), "n_clean": len(cl),
                   "overlap_pct": round(100.0 * len(ov) / n, 3) if n else 0.0,
                   "pairs": dec_counts,
                   "degenerate_samples": len({p["bench_index"] for p in bp if p["decision"] == "degenerate"}),
                   "decided_by": {k: sum(r["decided_by"] == k for r in rows) for k in ("auto", "human", "auto-demo")}}
        # class distribution, Overlap vs Clean
        lab = bench_samples(ws, bench, ["index", "label", "label_name"])
        if lab is not None and "label" in lab.column_names:
            label_of = dict(zip(lab.column("index").to_pylist(), lab.column("label").to_pylist()))
            classes = sorted({v for v in label_of.values() if v is not None})
            if classes and ov and cl:
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
                    d["class_chi2"] = {"chi2": float(chi2), "p_value": float(p), "dof": int(dof),
                                       "classes": int(t.shape[1]),
                                       "differs_at_0.01": bool(p < 0.01)}
                else:
                    d["class_chi2"] = {"note": "fewer than two classes present in both splits"}
                d["class_counts"] = {"classes": [int(c) for c in np.array(classes)[used]],
                                     "overlap": t[0].tolist(), "clean": t[1].tolist()}
            else:
                d["class_chi2"] = {"note": "no labels, or one split empty"}
        else:
            d["class_chi2"] = {"note": "no labels (caption benchmark or samples.parquet missing)"}
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
        summary.append({"benchmark": bench, "n": n, "n_overlap": len(ov), "n_clean": len(cl),
                        "overlap_pct": d["overlap_pct"], "review_pairs": dec_counts["review"],
                        "degenerate_pairs": dec_counts["degenerate"],
                        "class_p": d.get("class_chi2", {}).get("p_value")})
    write_json(ws.root / FOLDER / "diagnostics.json", out)
    return summary
