"""``overlap --executor ray``: runs of consecutive pool shards searched by Ray tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from clipcurate.core.errors import ClipcurateError
from clipcurate.core.executor import Executor
from clipcurate.core.io import atomic_open
from clipcurate.overlap import search
from clipcurate.overlap import stage as overlap


RUNS_PER_SLOT = 4  # overlap on Ray: about this many runs of consecutive shards per parallel slot


def overlap_search_shards(executor: Executor, srun, searcher, todo: Sequence[int], folded: list[str],
                          advance) -> None:
    """``overlap --executor ray``: runs of consecutive pool shards searched by Ray tasks, merged here.

    A task streams its shards through the stage's own Searcher (same backend, block sizes and
    floors as the driver's), exactly as the local loop does, writes each shard's floor pairs where
    the local run writes them (``overlap/search/pairs/{shard}.parquet``) and the run's top-k next to
    them (``overlap/search/ray_topk/{first}-{last}.npz``), then its marker there. The driver folds
    those top-ks into the running one **in pool order** with ``merge_topk``: every row of a top-k is
    sorted by (score desc, pool position asc) — a total order, positions being unique — so the top-k
    of the union is the top-k of the parts, and the result equals the local streaming run. Then one
    checkpoint (state + the stage's ``{shard}.done`` markers), as the local loop does.

    A top-k is m × k entries (1M benchmark rows × k=10 → 120 MB) whatever the size of the run, so a
    task takes several shards when there are many: about four runs per parallel slot.
    """
    if not todo:
        return
    gpu = searcher.backend == "torch"  # the torch backend searches on a GPU: one per task when present
    per_task = max(1, len(todo) // (RUNS_PER_SLOT * executor.parallelism(gpu=gpu)))
    groups = [list(todo[i:i + per_task]) for i in range(0, len(todo), per_task)]
    name_of = {f"{srun.shards[g[0]].name}-{srun.shards[g[-1]].name}": g for g in groups}
    tdir = srun.sdir / "ray_topk"
    fn = _SearchShards(searcher.q, searcher.k, searcher.floor, searcher.backend, srun.block_elems,
                       {n: [(srun.shards[i].name, str(srun.shards[i].npy), int(srun.offsets[i])) for i in g]
                        for n, g in name_of.items()},
                       str(srun.sdir / "pairs"), str(tdir))
    executor.map_shards(fn, list(name_of), folder=tdir, description="overlap search on ray", advance=advance,
                        weights={n: len(g) for n, g in name_of.items()}, gpu=gpu)
    for name in name_of:  # pool order: a deterministic merge
        with np_load(tdir / f"{name}.npz") as z:
            scores, pos = z["scores"], z["pos"]
            searcher.pairs_scored += int(z["pairs_scored"])
        rows, cols = np.nonzero(pos >= 0)
        search.merge_topk(searcher.top, None, rows.astype(np.int64), pos[rows, cols], scores[rows, cols])
    names = [srun.shards[i].name for i in todo]
    folded += names
    srun._checkpoint(searcher.top, folded, names)


def np_load(path):
    return np.load(path, allow_pickle=False)


class _SearchShards:
    """A run of consecutive pool shards against all benchmark vectors, inside a Ray task."""

    def __init__(self, q, k, floor, backend, block_elems, groups: dict, pairs_dir: str, topk_dir: str):
        self.q, self.k, self.floor, self.backend, self.block_elems = q, k, floor, backend, block_elems
        self.groups, self.pairs_dir, self.topk_dir = groups, pairs_dir, topk_dir

    def __call__(self, name: str) -> dict:
        # Ray hands numpy arrays over read-only (zero-copy from its object store); torch wants to own one.
        q = self.q if self.q.flags.writeable else self.q.copy()
        s = search.Searcher(q, self.k, self.floor, backend=self.backend, block_elems=self.block_elems)
        pairs = 0
        for shard, npy, offset in self.groups[name]:
            x = np.load(npy)
            try:
                part = s.add(x, offset)
            except ClipcurateError as exc:
                raise ClipcurateError(f"{npy}: {exc}") from None
            overlap._write_part(Path(self.pairs_dir) / f"{shard}.parquet", part)
            pairs += len(part)
            del x
        with atomic_open(Path(self.topk_dir) / f"{name}.npz", "wb") as fh:
            np.savez(fh, scores=s.top.scores, pos=s.top.pos, pairs_scored=np.int64(s.pairs_scored))
        return {"shards": len(self.groups[name]), "pairs": pairs, "pairs_scored": int(s.pairs_scored)}
