"""Benchmark of the overlap search: throughput against a plain matmul, and peak memory vs pool size.

1. **Throughput.** The search scores every (benchmark, pool) pair; its floor is one matrix product
   per pool shard, so the baseline is a plain matmul of the same shapes (benchmark [m, d] × each
   shard [n, d]ᵀ, float32, inputs already converted) timed in the same run. The search does the same
   product plus the top-k merge and the range mask; goal: ≥ 0.5× the matmul's pairs/s.
   On a CUDA machine the torch backend is measured against a torch matmul of the same shapes and
   dtype (float16 in, float32 out) as well.
2. **Memory.** The whole stage (``overlap.run``) on two generated pools 4× apart, each in a fresh
   subprocess that reports its peak RSS (``ru_maxrss``); a subprocess that only imports the same
   modules gives the floor. Goal: flat — the stage holds one shard, not the pool.

    python benchmarks/overlap.py                       # defaults below, ~1-2 min on 2 cores
    python benchmarks/overlap.py --bench 4000 --pool 400000 --dim 512
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def unit(rng, n, d):
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float16)


def throughput(args) -> dict:
    from clipcurate.overlap import search as se

    rng = np.random.default_rng(0)
    q = unit(rng, args.bench, args.dim)
    shards = [unit(rng, args.shard_rows, args.dim) for _ in range(max(1, args.pool // args.shard_rows))]
    pairs = len(q) * sum(len(s) for s in shards)
    out = {"bench": len(q), "pool": sum(len(s) for s in shards), "dim": args.dim, "shard_rows": args.shard_rows,
           "pairs": pairs}
    # baseline: plain float32 matmul of the same shapes. Baseline and search alternate, best of
    # --repeat each, so that a noisy shared machine slows both alike.
    q32 = q.astype(np.float32)
    s32 = [] if args.gpu_only else [s.astype(np.float32) for s in shards]
    backends = ([] if args.gpu_only else ["numpy"]) + (["torch"] if se.cuda_available() else [])
    best = float("nan")
    bestb = {be: 1e9 for be in backends}
    for _ in range(args.repeat):
        if s32:
            t0 = time.perf_counter()
            for s in s32:
                _ = q32 @ s.T
            best = min(best, time.perf_counter() - t0) if best == best else time.perf_counter() - t0
        for be in backends:
            t0 = time.perf_counter()
            se.search(q, shards, args.k, args.low, backend=be)
            bestb[be] = min(bestb[be], time.perf_counter() - t0)
    out["matmul_pairs_per_s"] = pairs / best
    for be in backends:
        out[f"search_{be}_pairs_per_s"] = pairs / bestb[be]
        out[f"search_{be}_vs_matmul"] = best / bestb[be]
    if se.cuda_available():
        import torch

        qd = torch.from_numpy(q).cuda()
        sd = [torch.from_numpy(s).cuda() for s in shards]
        tg = 1e9
        for _ in range(args.repeat):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for s in sd:
                _ = torch.mm(qd, s.T, out_dtype=torch.float32)
            torch.cuda.synchronize()
            tg = min(tg, time.perf_counter() - t0)
        out["torch_matmul_pairs_per_s"] = pairs / tg
        out["search_torch_vs_torch_matmul"] = out["search_torch_pairs_per_s"] / out["torch_matmul_pairs_per_s"]
        out["torch_matmul_tflops"] = 2 * args.dim * pairs / tg / 1e12
        out["search_torch_tflops"] = 2 * args.dim * out["search_torch_pairs_per_s"] / 1e12
        # the same search with the shards already on the GPU is what a real run approaches with
        # pinned-memory prefetch; the number above includes the host→device copy of each shard
    return out


CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from clipcurate.overlap import stage as overlap
from clipcurate.core.workspace import Workspace
if {run!r}:
    t0 = time.perf_counter()
    res = overlap.run(Workspace({ws!r}), {{"checkpoint_s": 1e9}}, force=True)
    secs = time.perf_counter() - t0
else:
    res, secs = None, 0.0
hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")]
print(json.dumps({{"maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "hwm_mib": hwm[0] / 1024 if hwm else None, "seconds": secs}}))
"""


def make_ws(root: Path, shards: int, args) -> None:
    from _overlap_helpers import pool_uid, unit as unit32, write_bench, write_model, write_pool_shard

    rng = np.random.default_rng(1)
    write_model(root, dim=args.dim)
    write_bench(root, "bench", unit32(rng, args.rss_bench, args.dim))
    for i in range(shards):
        name = f"{i:05d}"
        write_pool_shard(root, name, unit32(rng, args.shard_rows, args.dim),
                         [pool_uid(name, r) for r in range(args.shard_rows)])


def child(ws: Path | None, run: bool) -> dict:
    code = CHILD.format(repo=str(REPO), ws=str(ws) if ws else "", run=run)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "CLIPCURATE_WORKSPACE": ""})
    if r.returncode != 0:
        raise SystemExit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def memory(args) -> dict:
    small, large = args.rss_shards, 4 * args.rss_shards
    # ru_maxrss survives exec (Linux keeps the larger of the parent's and the child's peak), so
    # this runs before the throughput part, while this process is small; VmHWM (the child's own
    # address space) is the figure that cannot be inherited, and the one the ratio uses.
    floor = child(None, False)
    out = {"floor_mib": floor["hwm_mib"], "floor_ru_maxrss_mib": floor["maxrss_mib"]}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for n in (small, large):
            ws = Path(tmp) / f"ws{n}"
            make_ws(ws, n, args)
            r = child(ws, True)
            out[f"pool_{n * args.shard_rows}"] = {"shards": n, "maxrss_mib": round(r["hwm_mib"], 1),
                                                  "ru_maxrss_mib": round(r["maxrss_mib"], 1),
                                                  "seconds": round(r["seconds"], 2)}
    a = out[f"pool_{small * args.shard_rows}"]["maxrss_mib"]
    b = out[f"pool_{large * args.shard_rows}"]["maxrss_mib"]
    out["rss_ratio_4x_pool"] = round(b / a, 3)
    out["above_floor_ratio"] = round((b - out["floor_mib"]) / max(1e-9, a - out["floor_mib"]), 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", type=int, default=2000, help="benchmark rows (throughput)")
    ap.add_argument("--pool", type=int, default=200_000, help="pool rows (throughput)")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--shard-rows", type=int, default=20_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3, help="timed repetitions (best of)")
    ap.add_argument("--low", type=float, default=0.85)
    ap.add_argument("--rss-bench", type=int, default=2000, help="benchmark rows (memory)")
    ap.add_argument("--rss-shards", type=int, default=4, help="shards of the smaller pool (the larger has 4×)")
    ap.add_argument("--tmp", default=None, help="folder for the generated workspaces")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--gpu-only", action="store_true", help="only the CUDA search vs the CUDA matmul (big shapes)")
    args = ap.parse_args()
    res = {}
    if not args.skip_memory:
        res["memory"] = memory(args)
    res["throughput"] = t = throughput(args)
    if "search_numpy_pairs_per_s" in t:
        print(f"throughput: {t['bench']} × {t['pool']} × d{t['dim']}: matmul {t['matmul_pairs_per_s']:.3g} pairs/s, "
              f"search(numpy) {t['search_numpy_pairs_per_s']:.3g} pairs/s = {t['search_numpy_vs_matmul']:.2f}× matmul")
    if "search_torch_pairs_per_s" in t:
        print(f"  cuda: torch matmul {t['torch_matmul_pairs_per_s']:.3g} pairs/s ({t['torch_matmul_tflops']:.1f} TFLOP/s), "
              f"search(torch) {t['search_torch_pairs_per_s']:.3g} pairs/s ({t['search_torch_tflops']:.1f} TFLOP/s) "
              f"= {t['search_torch_vs_torch_matmul']:.2f}× torch matmul"
              + (f", {t['search_torch_vs_matmul']:.1f}× CPU matmul" if not args.gpu_only else ""))
    if not args.skip_memory:
        m = res["memory"]
        keys = [k for k in m if k.startswith("pool_")]
        print(f"memory: import floor {m['floor_mib']:.0f} MiB; " + ", ".join(
            f"pool {k[5:]} rows → peak {m[k]['maxrss_mib']:.0f} MiB ({m[k]['seconds']} s)" for k in keys)
              + f"; ratio 4× pool = {m['rss_ratio_4x_pool']:.2f} (above the floor {m['above_floor_ratio']:.2f})")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
