"""Ray on a GPU machine: do GPU actors/tasks get the GPU, and do embed and overlap on Ray give the
same outputs as the local run, at what speed? One prepared run (< 4 min on one H200).

    bash benchmarks/gpu.sh --parts ray     # its part of the GPU run; needs ray importable there

Prints: CUDA as seen by a Ray actor with num_gpus=1 and by a task with num_gpus=0; embed images/s
local vs --executor ray (ViT-B-32 random init, bf16, same synthetic pool, outputs compared); overlap
(torch backend) seconds local vs Ray, outputs compared.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import pyarrow.parquet as pq
    import ray
    import torch

    from clipcurate import overlap
    from clipcurate.core.console import set_quiet
    from clipcurate.download import write_pool_shard
    from clipcurate.embed import embed_pool
    from clipcurate.core.executor import get_executor
    from clipcurate.core.models import ModelSpec
    from clipcurate.core.synth import caption_for, make_image
    from clipcurate.core.workspace import Workspace

    shards, per_shard = int(os.environ.get("SHARDS", 8)), int(os.environ.get("PER_SHARD", 1000))
    model = os.environ.get("MODEL", "ViT-B-32")
    # the overlap check's size and backend (a CPU dry run shrinks them: OV_ROWS=2000 OV_BENCH=200 BACKEND=numpy)
    ov_rows, ov_bench = int(os.environ.get("OV_ROWS", 200_000)), int(os.environ.get("OV_BENCH", 20_000))
    backend = os.environ.get("BACKEND", "torch")
    set_quiet(True)
    tmp = Path(tempfile.mkdtemp(prefix="ray-gpu-"))
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING)
    print("cluster:", ray.cluster_resources(), flush=True)

    @ray.remote(num_gpus=1)
    class Probe:
        def see(self):
            import torch
            return os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.is_available()

    @ray.remote(num_gpus=0)
    def probe_task():
        import torch
        return os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.is_available()

    if ray.cluster_resources().get("GPU", 0) >= 1:  # a num_gpus=1 actor would wait forever without one
        print("actor num_gpus=1 sees (CUDA_VISIBLE_DEVICES, cuda):",
              ray.get(Probe.remote().see.remote(), timeout=180), flush=True)
    print("task  num_gpus=0 sees (CUDA_VISIBLE_DEVICES, cuda):", ray.get(probe_task.remote(), timeout=180), flush=True)

    # -- embed ----------------------------------------------------------------------------------
    rng = np.random.default_rng(0)
    base = Workspace(tmp / "base")
    t = time.perf_counter()
    for s in range(shards):
        write_pool_shard(base, f"{s:05d}", [{"url": f"http://x/{s}/{i}", "caption": caption_for(i % 10, rng),
                                             "image": make_image(i % 10, s * per_shard + i, size=96)}
                                            for i in range(per_shard)])
    print(f"pool: {shards} x {per_shard} images written in {time.perf_counter() - t:.1f} s", flush=True)
    import shutil

    res = {}
    for name, ex in (("local", None), ("ray", get_executor("ray"))):
        ws = Workspace(tmp / name)
        shutil.copytree(base.root, ws.root)
        t = time.perf_counter()
        tag = embed_pool(ws, ModelSpec(model, None), device="auto", precision="bf16", batch_size=256,
                         workers=8, executor=ex)
        res[name] = (time.perf_counter() - t, ws.path("embed", tag, "pool"))
    n = shards * per_shard
    worst, same_uids = 0.0, True
    for s in range(shards):
        a = np.load(res["local"][1] / f"{s:05d}.npy").astype(np.float32)
        b = np.load(res["ray"][1] / f"{s:05d}.npy").astype(np.float32)
        worst = max(worst, float(np.abs(a - b).max()))
        same_uids &= pq.read_table(res["local"][1] / f"{s:05d}.parquet").equals(
            pq.read_table(res["ray"][1] / f"{s:05d}.parquet"))
    print(f"embed {model} bf16, {n} images: local {n / res['local'][0]:.0f} img/s ({res['local'][0]:.1f} s), "
          f"ray (1 GPU actor, model load included) {n / res['ray'][0]:.0f} img/s ({res['ray'][0]:.1f} s); "
          f"same uids: {same_uids}, max |diff| {worst:.4f}", flush=True)

    # -- overlap (torch backend on the GPU) -------------------------------------------------------
    import json

    import pyarrow as pa
    from clipcurate.core.uid import make_uid

    def layout(root: Path, d=512, rows=ov_rows, pool_shards=8, bench=ov_bench):
        r = np.random.default_rng(1)
        e = root / "embed" / "g__random"
        (e / "pool").mkdir(parents=True)
        (e / "bench" / "b").mkdir(parents=True)
        (e / "model.json").write_text(json.dumps({"model": "g", "pretrained": "random", "tag": "g__random", "dim": d, "kind": "clip"}))

        def unit(k):
            x = r.standard_normal((k, d)).astype(np.float32)
            return x / np.linalg.norm(x, axis=1, keepdims=True)

        def meta(src, nm, uids, idx):
            k = len(uids)
            return pa.table({"model_tag": ["g__random"] * k, "source": [src] * k, "name": [nm] * k,
                             "row": pa.array(np.arange(k), pa.int64()), "uid": uids, "index": pa.array(idx, pa.int64())})
        bv = unit(bench)
        np.save(e / "bench" / "b" / "image.npy", bv.astype(np.float16))
        pq.write_table(meta("bench", "b", [make_uid("b", i) for i in range(bench)], list(range(bench))), e / "bench" / "b" / "image.parquet")
        (e / "bench" / "b.done").write_text("{}")
        for s in range(pool_shards):
            x = unit(rows)
            x[:5] = bv[s * 5:(s + 1) * 5]
            nm = f"{s:05d}"
            np.save(e / "pool" / f"{nm}.npy", x.astype(np.float16))
            pq.write_table(meta("pool", nm, [make_uid("p", nm, i) for i in range(rows)], [None] * rows), e / "pool" / f"{nm}.parquet")
            (e / "pool" / f"{nm}.done").write_text("{}")

    times, outs = {}, {}
    for name, ex in (("local", None), ("ray", get_executor("ray"))):
        ws = Workspace(tmp / f"ov-{name}")
        layout(ws.root)
        t = time.perf_counter()
        r = overlap.run(ws, {"k": 10, "backend": backend}, executor=ex)
        times[name] = (time.perf_counter() - t, r.search)
        outs[name] = {k: pq.read_table(ws.path("overlap", f"{k}.parquet")).to_pylist() for k in ("pairs", "splits", "neighbors")}
    print(f"overlap {backend}, {ov_bench} x {8 * ov_rows} d=512 ({times['local'][1]['pairs_scored']:.3g} pairs): local {times['local'][0]:.1f} s, "
          f"ray {times['ray'][0]:.1f} s; identical outputs: {outs['local'] == outs['ray']}", flush=True)
    ray.shutdown()


if __name__ == "__main__":
    main()
