"""What Ray costs and gives on one machine: the executor's overhead per shard, and the overlap
search with `--executor ray` against the local loop, on the same inputs in the same run.

    python benchmarks/ray_executor.py                       # 2 Ray CPUs (the dev box)
    python benchmarks/ray_executor.py --cpus 16 --pool-shards 32 --rows 50000

Prints (1) Ray start-up seconds, (2) milliseconds per no-op shard (the marker is still written,
with its fsync) for the local loop and for Ray tasks — the floor of what a shard costs, (3) the
overlap search seconds local vs Ray and their ratio, after checking that both wrote identical
pairs / splits / neighbours.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TAG = "bench-model__random"


def write_embeddings(root: Path, shards: int, rows: int, bench: int, d: int, seed: int = 0) -> None:
    """The embed stage's layout with random unit vectors (and a few planted copies)."""
    from clipcurate.core.uid import make_uid

    rng = np.random.default_rng(seed)

    def unit(n):
        x = rng.standard_normal((n, d)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def meta(source, name, uids, index):
        n = len(uids)
        return pa.table({"model_tag": [TAG] * n, "source": [source] * n, "name": [name] * n,
                         "row": pa.array(np.arange(n), pa.int64()), "uid": uids,
                         "index": pa.array(index, pa.int64())})

    e = root / "embed" / TAG
    (e / "pool").mkdir(parents=True)
    (e / "bench" / "bench").mkdir(parents=True)
    (e / "model.json").write_text(json.dumps({"model": "bench", "pretrained": "random", "tag": TAG,
                                              "dim": d, "kind": "clip"}))
    b = unit(bench)
    np.save(e / "bench" / "bench" / "image.npy", b.astype(np.float16))
    pq.write_table(meta("bench", "bench", [make_uid("bench", "bench", i, "") for i in range(bench)],
                        list(range(bench))), e / "bench" / "bench" / "image.parquet")
    (e / "bench" / "bench.done").write_text("{}")
    for s in range(shards):
        x = unit(rows)
        x[s % rows] = b[s % bench]  # one exact copy per shard
        name = f"{s:05d}"
        np.save(e / "pool" / f"{name}.npy", x.astype(np.float16))
        pq.write_table(meta("pool", name, [make_uid("pool", name, r) for r in range(rows)], [None] * rows),
                       e / "pool" / f"{name}.parquet")
        (e / "pool" / f"{name}.done").write_text("{}")


def read_outputs(root: Path) -> dict:
    return {n: pq.read_table(root / "overlap" / f"{n}.parquet").to_pylist()
            for n in ("pairs", "splits", "neighbors")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--noop-shards", type=int, default=200)
    ap.add_argument("--pool-shards", type=int, default=8)
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--bench", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=256)
    args = ap.parse_args()

    import ray

    from clipcurate import overlap
    from clipcurate.core.console import set_quiet
    from clipcurate.core.executor import get_executor
    from clipcurate.core.workspace import Workspace

    set_quiet(True)
    tmp = Path(tempfile.mkdtemp(prefix="clipcurate-ray-bench-"))
    t = time.perf_counter()
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING)
    t_start = time.perf_counter() - t
    local, on_ray = get_executor("local"), get_executor("ray")

    # 1. Overhead per shard: a no-op shard that still writes its marker.
    shards = [f"{i:05d}" for i in range(args.noop_shards)]
    noop = (lambda s: {"n": 1})
    on_ray.map_shards(noop, shards[:4], folder=tmp / "warm")  # start the workers once
    t = time.perf_counter()
    local.map_shards(noop, shards, folder=tmp / "noop-local")
    t_local = time.perf_counter() - t
    t = time.perf_counter()
    on_ray.map_shards(noop, shards, folder=tmp / "noop-ray")
    t_ray = time.perf_counter() - t

    # 2. The overlap search, local vs Ray, on the same embeddings.
    times = {}
    for name, ex in (("local", None), ("ray", on_ray)):
        ws = Workspace(tmp / f"ws-{name}")
        write_embeddings(ws.root, args.pool_shards, args.rows, args.bench, args.dim)
        t = time.perf_counter()
        res = overlap.run(ws, {"k": 10, "backend": "numpy"}, executor=ex)
        times[name] = (time.perf_counter() - t, res.search)
    same = read_outputs(tmp / "ws-local") == read_outputs(tmp / "ws-ray")
    ray.shutdown()

    pairs = times["local"][1]["pairs_scored"]
    print(f"ray start-up (local, {args.cpus} CPUs): {t_start:.1f} s")
    print(f"no-op shards ({args.noop_shards}, each writes its marker with fsync): local loop {1000 * t_local / args.noop_shards:.2f} "
          f"ms/shard, ray tasks {1000 * t_ray / args.noop_shards:.2f} ms/shard (ratio local/ray {t_local / t_ray:.2f}x)")
    print(f"overlap {args.bench} x {args.pool_shards * args.rows} (d={args.dim}, {pairs:.3g} pairs, numpy): "
          f"local {times['local'][0]:.2f} s, ray {times['ray'][0]:.2f} s, "
          f"ratio local/ray {times['local'][0] / times['ray'][0]:.2f}x; identical outputs: {same}")
    if not same:
        sys.exit("outputs differ")


if __name__ == "__main__":
    main()
