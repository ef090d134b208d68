"""GPU throughput of `clipcurate embed` (the embed part of benchmarks/gpu.sh), plus exact search.

Steps, each timed and printed (one JSON line at the end holds every figure):

1. make N JPEGs (clipcurate.core.synth, SIZE px, three styles) with a multiprocessing pool, written as
   webdataset shards of SHARD samples into a temporary workspace;
2. model only: encode_image on a resident random batch (no data loading) — the ceiling;
3. decode only: the DataLoader workers of clipcurate.embed.stage (read tar, PIL decode, resize/crop,
   tokenise captions) drained without a model — the other ceiling;
4. `embed_pool` end to end, images + captions as the stage does, then images only, then images
   only with ``decode="torch"`` (torchvision.io.decode_jpeg on the GPU = nvJPEG, resize on the
   GPU); with the time spent in the model (for torch decode: decode + resize too; copy in,
   normalise, forward, copy out, synchronised) split from the rest;
5. exact search: benchmark x pool cosine by torch matmul + running top-k over pool chunks, in bf16
   and fp32 (TF32 off), as pairs/s — the figure the overlap cost model needs.

Environment: DEVICE (cuda), MODEL (ViT-B-32), PRECISION (bf16), N (30000), SIZE (256), SHARD (1000),
BATCH (512), REPS (timed model-only batches), WORKERS (-1: cores - 1), SEARCH_POOL (1000000), SEARCH_QUERIES (10000), DIM (512),
K (10), SKIP_SEARCH (0). With DEVICE=cpu the search defaults to 200 x 20,000. Everything is random-init and generated: no downloads.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def env(name: str, default):
    v = os.environ.get(name)
    return default if v in (None, "") else type(default)(v)


def _make_shard(args):
    """One webdataset shard of generated JPEGs (runs in a worker process)."""
    from clipcurate.core.synth import caption_for, jpeg_bytes, make_image
    from clipcurate.core.uid import pair_uid

    path, shard, start, n, size = args
    rng = np.random.default_rng(shard)
    tmp = path + ".part"
    with tarfile.open(tmp, "w") as tf:
        for i in range(start, start + n):
            cap = caption_for(i, rng)
            uid = pair_uid(f"http://gpu.bench/{i}.jpg", cap)
            key = f"{i:09d}"
            for ext, data in (("jpg", jpeg_bytes(make_image(i % 10, i, ("photo", "bench", "texture")[i % 3], size=size))),
                              ("txt", cap.encode()), ("json", json.dumps({"uid": uid}).encode())):
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    os.replace(tmp, path)
    return n


def main() -> None:
    import torch

    from clipcurate.embed import encoders, feed, layout, reader
    from clipcurate.embed import stage as embed
    from clipcurate.core import models
    from clipcurate.core.console import set_quiet
    from clipcurate.core.workspace import Workspace

    set_quiet(True)
    device = env("DEVICE", "cuda")
    model = env("MODEL", "ViT-B-32")
    precision = env("PRECISION", "bf16")
    n = env("N", 30000)
    size = env("SIZE", 256)
    shard = env("SHARD", 1000)
    batch = env("BATCH", 512)
    workers = env("WORKERS", -1)
    report: dict = {"device": device, "model": model, "precision": precision, "images": n, "jpeg_px": size,
                    "batch_size": batch, "cpu_cores": feed.cpu_count(), "torch": torch.__version__}
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            sys.exit("embed_gpu: DEVICE=cuda but torch sees no GPU; run with DEVICE=cpu for a dry run")
        report["gpu"] = torch.cuda.get_device_name(0)
        torch.backends.cuda.matmul.allow_tf32 = True  # the model path; search sets its own
        torch.backends.cudnn.allow_tf32 = True
    try:
        st = os.statvfs("/dev/shm")
        report["dev_shm_gib"] = round(st.f_blocks * st.f_frsize / 2**30, 1)
    except OSError:
        report["dev_shm_gib"] = None
    print(f"embed_gpu: {json.dumps(report)}", flush=True)
    if report["dev_shm_gib"] is not None and report["dev_shm_gib"] < 4:
        print(f"embed_gpu: warning: /dev/shm is {report['dev_shm_gib']} GiB; DataLoader workers pass batches "
              f"through it (lower BATCH or WORKERS if workers die with a bus error)", flush=True)

    tmp = Path(tempfile.mkdtemp(prefix="clipcurate-gpu-bench-"))
    try:
        # 1. Generate the pool ------------------------------------------------------------
        ws = Workspace(tmp / "ws").create()
        shards_dir = ws.path("pool", "shards")
        shards_dir.mkdir(parents=True)
        jobs = [(str(shards_dir / f"{s:05d}.tar"), s, s * shard, min(shard, n - s * shard), size)
                for s in range(-(-n // shard))]
        t = time.perf_counter()
        with mp.get_context("fork").Pool(max(1, feed.cpu_count())) as pool:
            made = sum(pool.map(_make_shard, jobs))
        report["generate_s"] = round(time.perf_counter() - t, 2)
        print(f"1. generated {made} JPEGs of {size}px in {len(jobs)} shards: {report['generate_s']}s", flush=True)

        # 2. Model only -------------------------------------------------------------------
        t = time.perf_counter()
        enc = embed.clip_encoder(models.ModelSpec(model, "random"), device, precision)
        report["model_load_s"] = round(time.perf_counter() - t, 2)
        h, w = enc.lm.image_size
        x = torch.randn(batch, 3, h, w, device=device)
        if device.startswith("cuda"):
            x = x.contiguous(memory_format=torch.channels_last)
        for _ in range(3):
            enc.encode_tensors(x)
        _sync(device)
        reps = env("REPS", max(3, min(50, 20000 // batch)))  # timed batches of the model-only figures
        t = time.perf_counter()
        for _ in range(reps):
            enc.encode_tensors(x)
        _sync(device)
        report["model_only_images_per_s"] = round(reps * batch / (time.perf_counter() - t), 1)
        tokens = enc.tokenizer(["a photo of a circle on a gradient background"] * batch).to(device)
        enc.encode_tokens(tokens)
        _sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            enc.encode_tokens(tokens)
        _sync(device)
        report["text_only_captions_per_s"] = round(reps * batch / (time.perf_counter() - t), 1)
        print(f"2. model only: {report['model_only_images_per_s']} images/s, "
              f"{report['text_only_captions_per_s']} captions/s", flush=True)

        # 3. Decode only (the DataLoader workers, no model) ----------------------------------
        from torch.utils.data import DataLoader

        parts = [reader.Part(f"pool/{Path(j[0]).stem}", 0, 1, j[0]) for j in jobs]
        nw = min(feed.auto_workers(workers), len(parts))
        report["workers"] = nw
        ds = reader.dataset_cls()(parts, enc.preprocess, encoders.split_preprocess(enc.preprocess), enc.tokenizer, batch)
        t = time.perf_counter()
        seen = 0
        try:
            for item in DataLoader(ds, batch_size=None, num_workers=nw, pin_memory=device.startswith("cuda"),
                                   prefetch_factor=2 if nw else None):
                if not item["end"]:
                    seen += len(item["uids"])
            dt = time.perf_counter() - t
            report["decode_only_images_per_s"] = round(seen / dt, 1)
            print(f"3. decode only ({nw} workers: read tar, PIL decode + resize/crop, tokenise): "
                  f"{report['decode_only_images_per_s']} images/s", flush=True)
        except Exception as exc:  # e.g. a small /dev/shm: keep going, say why
            report["decode_only_error"] = f"{exc.__class__.__name__}: {str(exc)[:200]}"
            print(f"3. decode only: FAILED {report['decode_only_error']}", flush=True)

        # 4. End to end ---------------------------------------------------------------------
        runs = [("images+captions, PIL decode", enc, "pil", "e2e_with_text"),
                ("images only, PIL decode", _ImagesOnly(enc), "pil", "e2e_images_only"),
                ("images only, torchvision.io decode on the device", _ImagesOnly(enc), "torch",
                 "e2e_images_only_torch_decode")]
        for label, e, decode, key in runs:
            shutil.rmtree(ws.path("embed"), ignore_errors=True)
            timing: dict = {}
            try:
                embed.embed_images(ws, e, pool=True, benchmarks=[], device=enc.device, batch_size=batch,
                                   workers=workers, timing=timing, decode=decode)
            except Exception as exc:  # keep the other figures if one path fails on this machine
                report[key] = {"error": f"{exc.__class__.__name__}: {str(exc)[:200]}"}
                print(f"4. embed_pool, {label}: FAILED {report[key]['error']}", flush=True)
                continue
            ips = timing["images"] / timing["seconds"]
            report[key] = {"images_per_s": round(ips, 1), "seconds": round(timing["seconds"], 2),
                           "model_seconds": round(timing["model_seconds"], 2),
                           "model_share": round(timing["model_seconds"] / timing["seconds"], 3),
                           "images": timing["images"], "startup_seconds": round(timing["startup_seconds"], 2)}
            print(f"4. embed_pool, {label}: {ips:.1f} images/s ({timing['images']} in {timing['seconds']:.2f}s; "
                  f"{'decode+model' if decode == 'torch' else 'model'} {timing['model_seconds']:.2f}s = "
                  f"{100 * report[key]['model_share']:.0f}%, "
                  f"the rest is waiting for decoded batches; {timing['startup_seconds']:.2f}s of it before the "
                  f"first batch)", flush=True)
            if decode == "pil" and e is not enc:
                vecs = [x for _, _, x in layout.iter_pool(ws, e.tag)]
                assert sum(len(v) for v in vecs) == n and all(v.dtype == np.float16 for v in vecs)

        # 5. Exact search -------------------------------------------------------------------
        if not env("SKIP_SEARCH", 0):
            cpu = device == "cpu"  # a dry run on CPU: a small search unless asked otherwise
            report["search"] = search_bench(device, env("SEARCH_POOL", 20_000 if cpu else 1_000_000),
                                            env("SEARCH_QUERIES", 200 if cpu else 10_000), env("DIM", 512), env("K", 10))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("RESULT " + json.dumps(report), flush=True)


class _ImagesOnly:
    """The same encoder without a text tower: embed_images then writes image vectors only."""

    def __init__(self, enc):
        self.enc = enc
        self.kind, self.dim, self.tag, self.info = enc.kind, enc.dim, enc.tag + "-imgonly", enc.info
        self.preprocess, self.device = enc.preprocess, enc.device

    def encode_tensors(self, x):
        return self.enc.encode_tensors(x)


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def search_bench(device: str, n_pool: int, n_q: int, d: int, k: int) -> dict:
    """pairs/s of exact cosine top-k: queries [n_q, d] x pool [n_pool, d], pool streamed in chunks."""
    import torch

    out = {"pool": n_pool, "queries": n_q, "dim": d, "k": k}
    g = torch.Generator(device="cpu").manual_seed(0)
    for dtype_name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        if device == "cpu" and dtype is torch.bfloat16 and n_pool * n_q > 1e10:
            continue
        torch.backends.cuda.matmul.allow_tf32 = False
        pool = torch.nn.functional.normalize(torch.randn(n_pool, d, generator=g), dim=1).to(device, dtype)
        q = torch.nn.functional.normalize(torch.randn(n_q, d, generator=g), dim=1).to(device, dtype)
        chunk = max(1, min(n_pool, int(2e9 // (4 * n_q))))  # keep a score block near 2 GB

        def run():
            best_v = torch.full((n_q, k), -2.0, device=device)
            best_i = torch.zeros((n_q, k), dtype=torch.long, device=device)
            for s in range(0, n_pool, chunk):
                scores = (q @ pool[s:s + chunk].T).float()
                v, i = scores.topk(min(k, scores.shape[1]), dim=1)
                cat_v = torch.cat([best_v, v], 1)
                cat_i = torch.cat([best_i, i + s], 1)
                best_v, j = cat_v.topk(k, dim=1)
                best_i = cat_i.gather(1, j)
            return best_v, best_i

        run()
        _sync(device)
        reps = 3
        t = time.perf_counter()
        for _ in range(reps):
            v, i = run()
        _sync(device)
        dt = (time.perf_counter() - t) / reps
        # check one query against a direct full computation
        ref = (q[:1].float() @ pool.float().T).topk(k, dim=1)
        ok = torch.allclose(v[:1], ref.values, atol=2e-2 if dtype is torch.bfloat16 else 1e-5)
        out[dtype_name] = {"seconds": round(dt, 4), "pairs_per_s": float(f"{n_pool * n_q / dt:.4g}"),
                           "checked_against_direct": bool(ok)}
        print(f"5. exact search {dtype_name}: {n_q} x {n_pool} x d={d}, top-{k}: {dt:.3f}s = "
              f"{n_pool * n_q / dt:.3g} pairs/s (top-k check {'ok' if ok else 'MISMATCH'})", flush=True)
        del pool, q
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    torch.backends.cuda.matmul.allow_tf32 = True
    return out


if __name__ == "__main__":
    main()
