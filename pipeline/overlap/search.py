"""Exact, streaming pool ↔ benchmark search on L2-normalised embeddings (CLIP §5, App. C).

The question: for every benchmark sample, which pool samples are near-copies of it? With
normalised vectors the cosine similarity is an inner product, so the whole job is one big matrix
product ``S = B · Pᵀ`` (benchmark rows × pool rows) followed by two reductions over each row of S:

(a) the top-k pool neighbours of every benchmark sample — exact over the whole pool;
(b) every (benchmark, pool) pair whose score passes a floor (the review threshold) — complete,
    not capped by k, because one benchmark image can be copied thousands of times in a web pool.

The pool is far bigger than memory, so it streams: one pool shard at a time is multiplied against
the (small, resident) benchmark matrix, and only a running top-k per benchmark row survives between
shards. Memory is ``benchmark matrix + one shard + one score block + running top-k``, flat in the
pool size.

Both reductions come out of the SAME score block, so each pool shard is multiplied once:

    for each query block Bq and pool block Pp:
        S = Bq · Ppᵀ                                   # the only O(d) work per pair
        thr = min(floor, running k-th best score)      # per query row
        cand = nonzero(S >= thr)                       # usually sparse after the first block
        (b) += cand with score >= floor
        (a)  = merge(running top-k, cand with score > running k-th)

Until a row's running top-k is full its k-th best is -inf, so each such row is first seeded from
a prefix of the block by a dense ``argpartition`` (≥ 1024 columns); after that the mask is sparse.
On a GPU the merge is dense instead: the block's ``topk`` and a stable sort of
``[running | block]`` per row, all on the device. Ties are broken deterministically:
score descending, then pool position ascending (shards in name order, rows in file order), so the
result does not depend on the block sizes, the backend or the number of shards.

Backends (same algorithm, same results up to float32 summation order):

- ``numpy``: float32 BLAS matmul on the CPU (the default without CUDA);
- ``torch``: cuBLAS on CUDA (or torch's CPU BLAS): the float16 inputs are multiplied on tensor
  cores with float32 accumulation and float32 output (``out_dtype``), which is as exact as a float32
  product because a float16 × float16 product is exact in float32; the running top-k stays on the
  device and only the floor pairs (b) leave it;
- ``faiss``: ``faiss.IndexFlatIP`` per shard, ``search`` for (a) and ``range_search`` for (b) —
  two passes over the pool shard; kept as a cross-check and for machines where faiss's BLAS is the
  faster one. faiss-gpu's ``GpuIndexFlatIP`` has no ``range_search``, so on a GPU the one-pass torch
  backend is used (see docs/overlap.md).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable

import numpy as np

from clipcurate.core.errors import ClipcurateError, require

BACKENDS = ("auto", "numpy", "torch", "faiss")

# Score block budget (elements): 2^24 float32 = 64 MiB on the CPU; larger blocks on a GPU.
CPU_BLOCK = 1 << 24
GPU_BLOCK = 1 << 28


def cuda_available() -> bool:
    """True when torch sees a CUDA GPU. Without NVIDIA device nodes torch is not even imported
    (importing it costs ~0.5 GB of RSS, more than the whole CPU search)."""
    if "torch" not in sys.modules and not glob.glob("/dev/nvidia[0-9]*"):
        return False
    try:
        import torch  # torch: 2.6 s and ~0.5 GB to import; only when there are NVIDIA devices
    except ImportError:  # pragma: no cover
        return False
    return bool(torch.cuda.is_available())


def pick_backend(name: str = "auto") -> str:
    """``auto`` → ``torch`` when CUDA is present, else ``numpy``."""
    if name not in BACKENDS:
        raise ClipcurateError(f"search backend {name!r} is not one of {', '.join(BACKENDS)}")
    if name == "auto":
        return "torch" if cuda_available() else "numpy"
    if name == "faiss":
        require("faiss", "faiss-cpu", "the faiss search backend")
    return name


def check_vectors(x: np.ndarray, what: str, dim: int | None = None) -> None:
    """One clear line for the inputs that would silently poison a search."""
    if x.ndim != 2:
        raise ClipcurateError(f"{what}: expected a 2-D array [n, d], got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ClipcurateError(
            f"{what}: vectors have dimension {x.shape[1]} but the benchmark/model has {dim}; "
            f"embed everything with the same model (`clipcurate embed --force`)")
    # a row sum is NaN/inf iff the row holds a NaN/inf (float16 values cannot overflow a float32
    # sum of a few thousand terms); one cheap reduction instead of an elementwise isfinite
    bad = ~np.isfinite(x.sum(axis=1, dtype=np.float32))
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ClipcurateError(
            f"{what}: {len(rows)} vectors contain NaN/inf (first rows {rows[:5].tolist()}); "
            f"rerun `clipcurate embed --force` for it")


# float16 rounding moves a unit vector's norm by ~1e-3; an embedding off by more is not L2-normalised
NORM_TOLERANCE = 0.01


def check_unit_norm(x: np.ndarray, what: str) -> None:
    """Refuse vectors that are not unit length: a cosine search over them scores wrongly without a
    word (a .npy scaled by 3 gives "cosines" up to 3 and a review queue three times as long). Rows
    with NaN/inf are left to :func:`check_vectors`, which names them."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float32)) if x.ndim == 2 else np.ones(0)
    bad = np.isfinite(norms) & (np.abs(norms - 1.0) > NORM_TOLERANCE)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ClipcurateError(
            f"{what}: {len(rows)} vectors are not unit length (norms {float(norms[rows].min()):.3g} to "
            f"{float(norms[rows].max()):.3g}, first rows {rows[:5].tolist()}); cosine search needs L2-normalised "
            f"embeddings: rerun `clipcurate embed --force`")


@dataclasses.dataclass
class TopK:
    """Running top-k: ``scores[i, j]`` / ``pos[i, j]`` = j-th best pool position for query i.

    Empty slots hold score -inf and position -1; rows are always sorted (score desc, pos asc).
    """

    scores: np.ndarray  # float32 [m, k]
    pos: np.ndarray  # int64 [m, k]

    @classmethod
    def empty(cls, m: int, k: int) -> "TopK":
        return cls(np.full((m, k), -np.inf, np.float32), np.full((m, k), -1, np.int64))

    @property
    def k(self) -> int:
        return self.scores.shape[1]


@dataclasses.dataclass
class Pairs:
    """Pairs above the floor: query row, pool position, score (one array each)."""

    query: np.ndarray  # int64
    pos: np.ndarray  # int64
    score: np.ndarray  # float32

    @classmethod
    def concat(cls, parts: list["Pairs"]) -> "Pairs":
        if not parts:
            return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))
        return cls(np.concatenate([p.query for p in parts]), np.concatenate([p.pos for p in parts]),
                   np.concatenate([p.score for p in parts]))

    def __len__(self) -> int:
        return len(self.query)


def merge_topk(top: TopK, rows: np.ndarray | None, cand_row: np.ndarray, cand_pos: np.ndarray,
               cand_score: np.ndarray) -> None:
    """Fold sparse candidates (row, pos, score) into the running top-k, in place. ``rows`` maps
    candidate rows to rows of ``top`` (None: the same).

    The running entries of the touched rows and the candidates are sorted together by
    (row, score desc, pos asc); the first k of each row are kept.
    """
    if len(cand_row) == 0:
        return
    k = top.k
    touched = np.unique(cand_row)
    g_rows = rows[touched] if rows is not None else touched
    # running entries of the touched rows, as triples
    run_s = top.scores[g_rows]
    run_p = top.pos[g_rows]
    run_r = np.repeat(touched, k)
    all_r = np.concatenate([run_r, cand_row])
    all_s = np.concatenate([run_s.ravel(), cand_score.astype(np.float32, copy=False)])
    all_p = np.concatenate([run_p.ravel(), cand_pos])
    order = np.lexsort((all_p, -all_s, all_r))
    all_r, all_s, all_p = all_r[order], all_s[order], all_p[order]
    # a pool position met twice (already in the running top-k and again as a candidate) is the
    # same pair with the same score: the sort made the copies adjacent; keep one
    dup = np.r_[False, (all_r[1:] == all_r[:-1]) & (all_p[1:] == all_p[:-1])]
    if dup.any():
        all_r, all_s, all_p = all_r[~dup], all_s[~dup], all_p[~dup]
    # rank of each entry inside its row
    starts = np.flatnonzero(np.r_[True, all_r[1:] != all_r[:-1]])
    counts = np.diff(np.r_[starts, len(all_r)])
    rank = np.arange(len(all_r)) - np.repeat(starts, counts)
    keep = rank < k
    slot_row = np.searchsorted(touched, all_r[keep])
    new_s = np.full((len(touched), k), -np.inf, np.float32)
    new_p = np.full((len(touched), k), -1, np.int64)
    new_s[slot_row, rank[keep]] = all_s[keep]
    new_p[slot_row, rank[keep]] = all_p[keep]
    top.scores[g_rows] = new_s
    top.pos[g_rows] = new_p


def _dense_candidates(S: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of the top-k columns of each row of S, ties at the k-th value all included
    (so that the merge can break them by position)."""
    m, n = S.shape
    if n <= k:
        return np.divmod(np.arange(m * n), n)
    part = np.argpartition(S, n - k, axis=1)[:, n - k:]
    kth = np.take_along_axis(S, part, axis=1).min(axis=1)
    # >= k per row; more only when the k-th value is tied. (np.flatnonzero on the flat mask is
    # several times faster than a 2-D np.nonzero.)
    return np.divmod(np.flatnonzero(S >= kth[:, None]), n)


_POOL = None


def _threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _ge_rows(S: np.ndarray, thr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, col) of ``S >= thr[row]``. The matmul uses every core (BLAS) but a numpy ufunc only
    one, so on a many-core box the mask would cost more than the product: split the rows over a
    thread pool (numpy releases the GIL in the comparison and in flatnonzero)."""
    global _POOL
    m, n = S.shape
    t = _threads()
    if t == 1 or S.size < (1 << 22):
        return np.divmod(np.flatnonzero(S >= thr[:, None]), n)
    if _POOL is None:
        _POOL = ThreadPoolExecutor(t, thread_name_prefix="search-mask")
    bounds = np.linspace(0, m, min(t, m) + 1).astype(int)

    def work(a: int, b: int):
        r, c = np.divmod(np.flatnonzero(S[a:b] >= thr[a:b, None]), n)
        return r + a, c

    parts = list(_POOL.map(lambda ab: work(*ab), zip(bounds[:-1], bounds[1:])))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class Searcher:
    """Streaming exact search of a fixed query matrix against pool blocks given in pool order.

    ``floor`` is per query row (per-benchmark review thresholds); ``k`` is the top-k size.
    Call :meth:`add` for each pool shard with its first global position; read :attr:`top` at the
    end and collect the returned :class:`Pairs` of each call.
    """

    def __init__(self, queries: np.ndarray, k: int, floor: np.ndarray | float, backend: str = "auto",
                 block_elems: int | None = None, device: str | None = None):
        if k < 1:
            raise ClipcurateError(f"--k {k}: must be at least 1")
        check_vectors(queries, "benchmark embeddings")
        self.backend = pick_backend(backend)
        self.q = np.ascontiguousarray(queries, dtype=np.float32)
        self.m, self.d = self.q.shape
        self.floor = np.broadcast_to(np.asarray(floor, np.float32), (self.m,)).copy()
        self._top = TopK.empty(self.m, k)
        self.k = k
        self.pairs_scored = 0
        if self.backend == "torch":
            import torch  # torch: 2.6 s to import; only the torch backend needs it

            self.torch = torch
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            self.on_gpu = self.device.type == "cuda"
            # float16 copies on the GPU (exact: the embeddings are stored as float16)
            self.q_dev = torch.from_numpy(self.q).to(self.device, torch.float16 if self.on_gpu else torch.float32)
            self.floor_dev = torch.from_numpy(self.floor).to(self.device)
            # the running top-k lives on the device; :attr:`top` copies it out
            self.top_s = torch.from_numpy(self._top.scores).to(self.device)
            self.top_p = torch.from_numpy(self._top.pos).to(self.device)
            self._snap = (self._top.scores.copy(), self._top.pos.copy())
            self._dev_newer = False
            self.block_elems = block_elems or (GPU_BLOCK if self.on_gpu else CPU_BLOCK)
        else:
            self.block_elems = block_elems or CPU_BLOCK

    @property
    def top(self) -> TopK:
        """The running top-k, on the host. Callers may change it in place (``merge_topk``, as the
        Ray executor does); with the torch backend such a change is pushed to the device before
        the next shard."""
        self._sync()
        return self._top

    def set_top(self, scores: np.ndarray, pos: np.ndarray) -> None:
        """Restore a running top-k (a resume point)."""
        self._sync()
        self._top.scores[:] = scores
        self._top.pos[:] = pos

    def _sync(self) -> None:
        """torch backend: the host copy changed since the last sync → push it to the device; else
        the device moved on (a shard was added) → pull it into the host copy."""
        if self.backend != "torch":
            return
        torch = self.torch
        snap_s, snap_p = self._snap
        if not (np.array_equal(self._top.scores, snap_s) and np.array_equal(self._top.pos, snap_p)):
            self.top_s.copy_(torch.from_numpy(self._top.scores))
            self.top_p.copy_(torch.from_numpy(self._top.pos))
        elif self._dev_newer:
            self._top.scores[:] = self.top_s.cpu().numpy()
            self._top.pos[:] = self.top_p.cpu().numpy()
        self._dev_newer = False
        self._snap = (self._top.scores.copy(), self._top.pos.copy())

    # -- one pool shard ---------------------------------------------------------------------
    def add(self, x: np.ndarray, base_pos: int) -> Pairs:
        """Score a pool shard (``x`` float16/32 [n, d], rows at positions base_pos..base_pos+n-1)."""
        n = len(x)
        if n == 0:
            return Pairs.concat([])
        if self.backend != "torch":
            x = np.ascontiguousarray(x, dtype=np.float32)  # once: BLAS has no float16
            check_vectors(x, "pool embeddings", self.d)
        elif x.ndim != 2 or x.shape[1] != self.d:
            check_vectors(x[:0], "pool embeddings", self.d)  # the shape message
        self.pairs_scored += n * self.m
        if self.backend == "faiss":
            return self._add_faiss(x, base_pos)
        if self.backend == "torch":
            return self._add_torch(x, base_pos)
        return self._add_numpy(x, base_pos)

    def _blocks(self, n: int):
        """Query and pool block sizes whose score block fits the budget."""
        pb = min(n, max(1024, self.block_elems // max(1, self.m)))
        qb = min(self.m, max(1, self.block_elems // pb))
        return qb, pb

    def _fold(self, q0: int, r: np.ndarray, c: np.ndarray, s: np.ndarray,
              p0: int, out: list) -> None:
        """Split block candidates into (b) floor pairs and (a) top-k candidates, fold them."""
        rows = q0 + r
        pos = p0 + c.astype(np.int64)
        in_range = s >= self.floor[rows]
        if in_range.any():
            out.append(Pairs(rows[in_range].astype(np.int64), pos[in_range], s[in_range].astype(np.float32)))
        kth = self._top.scores[rows, -1]
        better = (s > kth) | ((s == kth) & (pos < self._top.pos[rows, -1]))
        if better.any():
            merge_topk(self._top, None, rows[better], pos[better], s[better])

    def _add_numpy(self, x: np.ndarray, base_pos: int) -> Pairs:
        x = np.ascontiguousarray(x, dtype=np.float32)
        n = len(x)
        qb, pb = self._blocks(n)
        out: list[Pairs] = []
        for p0 in range(0, n, pb):
            xb = x[p0:p0 + pb]
            for q0 in range(0, self.m, qb):
                S = self.q[q0:q0 + qb] @ xb.T
                ncol = S.shape[1]
                not_full = np.flatnonzero(~np.isfinite(self._top.scores[q0:q0 + qb, -1]))
                if len(not_full):
                    # seed the running top-k of rows that have none yet from a prefix of the block
                    # (a dense argpartition over a few columns), so that the k-th best is finite
                    # and the mask below stays sparse
                    pre = min(ncol, max(1024, 64 * self.k))
                    Sd = S[not_full, :pre]
                    r, c = _dense_candidates(Sd, self.k)
                    merge_topk(self._top, None, q0 + not_full[r], base_pos + p0 + c, Sd[r, c])
                # one mask for both results: above the floor (b) or better than the k-th best (a)
                thr = np.minimum(self.floor[q0:q0 + qb], self._top.scores[q0:q0 + qb, -1])
                r, c = _ge_rows(S, thr)
                self._fold(q0, r, c, S[r, c], base_pos + p0, out)
        return Pairs.concat(out)

    def _mm(self, a, b):
        """float32 scores of a · bᵀ. On CUDA: float16 inputs on tensor cores, float32 accumulation
        and output (``out_dtype``); where this torch lacks ``out_dtype``, a float32 product with
        TF32 off (slower, same accuracy)."""
        torch = self.torch
        if not self.on_gpu:
            return a @ b.T
        if getattr(self, "_out_dtype_ok", True):
            # no float16 partial sums in split-K reductions: the scores must match the CPU's
            reduced = torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
            try:
                return torch.mm(a, b.T, out_dtype=torch.float32)
            except (TypeError, RuntimeError):
                self._out_dtype_ok = False
            finally:
                torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = reduced
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            return a.float() @ b.float().T
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev

    def _add_torch(self, x: np.ndarray, base_pos: int) -> Pairs:
        """Everything on the device: the product, the floor mask (b), the block's top-k and its
        merge into the running top-k (a). Only the floor pairs (few) come back to the host."""
        torch = self.torch
        self._sync()  # a host-side change of the top-k (resume, Ray merge) goes to the device first
        self._dev_newer = True
        n = len(x)
        qb, pb = self._blocks(n)
        dtype = torch.float16 if self.on_gpu else torch.float32
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, dtype, non_blocking=True)
        # the NaN/inf check on the device: one row sum, a few bytes back to the host
        bad = ~torch.isfinite(xt.float().sum(dim=1))
        if bool(bad.any()):
            check_vectors(x, "pool embeddings", self.d)
        out: list[Pairs] = []
        k = self.k
        for p0 in range(0, n, pb):
            xb = xt[p0:p0 + pb]
            ncol = xb.shape[0]
            base = base_pos + p0
            for q0 in range(0, self.m, qb):
                S = self._mm(self.q_dev[q0:q0 + qb], xb)
                q1 = q0 + S.shape[0]
                # (b) every pair above the row's floor
                r, c = torch.nonzero(S >= self.floor_dev[q0:q1, None], as_tuple=True)
                if len(r):
                    out.append(Pairs((q0 + r).cpu().numpy().astype(np.int64), base + c.cpu().numpy().astype(np.int64),
                                     S[r, c].cpu().numpy().astype(np.float32)))
                # (a) the block's top-k; one more to see a tie at the k-th value
                kk = min(k + 1, ncol)
                vals, idx = torch.topk(S, kk, dim=1)
                if kk > k:
                    tied = vals[:, k - 1] == vals[:, k]
                    vals, idx = vals[:, :k], idx[:, :k]
                    if bool(tied.any()):  # rare: exact copies at the boundary; redo those rows exactly
                        vals, idx = vals.clone(), idx.clone()
                        for row in torch.nonzero(tied).flatten().tolist():
                            srow = S[row].cpu().numpy()
                            cols = np.flatnonzero(srow >= srow[int(idx[row, k - 1])])
                            best = cols[np.lexsort((cols, -srow[cols]))][:k]
                            idx[row] = torch.from_numpy(best).to(idx)
                            vals[row] = torch.from_numpy(srow[best]).to(vals)
                # merge: running entries (lower positions) first, block entries in position order,
                # then a stable sort by score: among equal scores the lower position stays first
                idx, perm = torch.sort(idx, dim=1)
                vals = torch.gather(vals, 1, perm)
                cat_s = torch.cat([self.top_s[q0:q1], vals], dim=1)
                cat_p = torch.cat([self.top_p[q0:q1], idx.to(torch.int64) + base], dim=1)
                order = torch.sort(cat_s, dim=1, descending=True, stable=True).indices[:, :k]
                self.top_s[q0:q1] = torch.gather(cat_s, 1, order)
                self.top_p[q0:q1] = torch.gather(cat_p, 1, order)
        return Pairs.concat(out)

    def _add_faiss(self, x: np.ndarray, base_pos: int) -> Pairs:
        import faiss  # an optional backend (faiss-cpu / faiss-gpu), checked by pick_backend

        x = np.ascontiguousarray(x, dtype=np.float32)
        index = faiss.IndexFlatIP(self.d)
        index.add(x)
        kk = min(self.k, len(x))
        out: list[Pairs] = []
        # (a) per-shard top-k; faiss breaks ties by keeping the earlier id, like our order
        D, I = index.search(self.q, kk)
        r = np.repeat(np.arange(self.m), kk)
        ok = I.ravel() >= 0
        cand_r, cand_c, cand_s = r[ok], I.ravel()[ok], D.ravel()[ok]
        # (b) every pair above the lowest floor, then each row's own floor
        lims, Dr, Ir = index.range_search(self.q, float(self.floor.min()))
        rr = np.repeat(np.arange(self.m), np.diff(lims.astype(np.int64)))
        keep = Dr >= self.floor[rr]
        rr, Ir, Dr = rr[keep], Ir[keep], Dr[keep]
        if len(rr):
            out.append(Pairs(rr.astype(np.int64), base_pos + Ir.astype(np.int64), Dr.astype(np.float32)))
        pos = base_pos + cand_c.astype(np.int64)
        kth = self._top.scores[cand_r, -1]
        better = (cand_s > kth) | ((cand_s == kth) & (pos < self._top.pos[cand_r, -1]))
        merge_topk(self._top, None, cand_r[better], pos[better], cand_s[better])
        return Pairs.concat(out)


def search(queries: np.ndarray, shards: Iterable[np.ndarray], k: int, floor, backend: str = "auto",
           block_elems: int | None = None) -> tuple[TopK, Pairs]:
    """All of it in one call (shards in pool order): ``(top-k, pairs above floor)``."""
    s = Searcher(queries, k, floor, backend=backend, block_elems=block_elems)
    base = 0
    parts = []
    for x in shards:
        parts.append(s.add(x, base))
        base += len(x)
    return s.top, Pairs.concat(parts)


def brute_force(queries: np.ndarray, pool: np.ndarray, k: int, floor) -> tuple[TopK, Pairs]:
    """The reference: one dense float32 matmul, a stable sort per row (score desc, position asc)."""
    q = np.asarray(queries, np.float32)
    S = q @ np.asarray(pool, np.float32).T
    order = np.argsort(-S, axis=1, kind="stable")[:, :k]
    top = TopK.empty(len(q), k)
    kk = order.shape[1]
    top.scores[:, :kk] = np.take_along_axis(S, order, axis=1)
    top.pos[:, :kk] = order
    floor = np.broadcast_to(np.asarray(floor, np.float32), (len(q),))
    r, c = np.nonzero(S >= floor[:, None])
    return top, Pairs(r.astype(np.int64), c.astype(np.int64), S[r, c].astype(np.float32))
