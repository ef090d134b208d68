"""GPU check of curate → train → eval with the documented recipe's model (ViT-B-32, AMP).

Builds a synthetic pool (seeded shapes, JPEG, 224 px), curates it, trains ViT-B-32 from scratch with
`clipcurate.train.stage` (open_clip_train in process, webdataset shards), and evaluates the checkpoint with
`clipcurate.eval.stage`. The baseline, measured in the same run: stock ``python -m open_clip_train.main
--dataset-type synthetic`` (no decoding, no I/O — the compute-bound ceiling) with the same model,
batch and precision. The ratio ours / synthetic says how much of the GPU the webdataset path keeps.

    python benchmarks/train_gpu.py --out /tmp/train_gpu            # on a GPU (the train part of benchmarks/gpu.sh)
    python benchmarks/train_gpu.py --small --device cpu            # 1-minute smoke run on a laptop

Prints one JSON object (and writes it to OUT/train_gpu.json). Installs nothing, downloads nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_RATE = re.compile(r"Batch \(t\): [0-9.]+, ([0-9.]+)/s")


def _rates(log: Path) -> list[float]:
    return [float(m.group(1)) for m in _RATE.finditer(log.read_text())] if log.is_file() else []


def _steady(rates: list[float]) -> float:
    """Median samples/s after dropping the first two logged windows (warm-up, cudnn autotune)."""
    r = rates[2:] or rates
    return statistics.median(r) if r else float("nan")


def _shard(args):
    root, shard, start, n, size = args
    from clipcurate import download  # noqa: F401  (registers the pool manifest)
    from clipcurate.core import synth
    from clipcurate.download import write_pool_shard
    from clipcurate.core.workspace import Workspace

    import numpy as np

    samples = []
    for i in range(start, start + n):
        label = i % len(synth.CLASSES)
        rng = np.random.default_rng(i)
        samples.append({"url": f"http://synthetic/{i}.jpg", "caption": synth.caption_for(label, rng),
                        "image": synth.jpeg_bytes(synth.make_image(label, i, "photo", size), quality=90)})
    write_pool_shard(Workspace(root), shard, samples)
    return n


def _memory_probe(model_name: str, batch: int, device: str, steps: int = 3) -> dict:
    """Peak GPU memory and step time of `batch` ViT-B-32 training steps at AMP (the recipe's batch)."""
    import open_clip
    import torch
    from open_clip.loss import ClipLoss

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = open_clip.create_model(model_name, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.2)
    scaler = torch.amp.GradScaler(device="cuda")
    loss_fn = ClipLoss()
    size = model.visual.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    x = torch.randn(batch, 3, *size, device=device)
    t = torch.randint(0, 49408, (batch, 77), device=device)
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        s = time.time()
        with torch.autocast("cuda", dtype=torch.float16):
            f_i, f_t, scale = model(x, t)
            loss = loss_fn(f_i, f_t, scale)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        torch.cuda.synchronize()
        times.append(time.time() - s)
    peak = torch.cuda.max_memory_allocated() / 2**30
    del model, opt, x, t
    torch.cuda.empty_cache()
    return {"batch": batch, "peak_gib": round(peak, 1), "step_s": round(min(times), 3),
            "samples_per_s": round(batch / min(times), 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/train_gpu"))
    ap.add_argument("--samples", type=int, default=16384)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--model", default="ViT-B-32")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--precision", default="amp")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--small", action="store_true", help="tiny model, 256 samples at 32 px")
    ap.add_argument("--probe-batch", type=int, default=4096, help="recipe batch for the memory probe (0: skip)")
    a = ap.parse_args()
    if a.small:
        a.samples, a.size, a.model, a.batch_size, a.workers, a.precision = 256, 32, "clipcurate-tiny", 32, 2, "fp32"
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="train_gpu_"))
    res: dict = {"model": a.model, "samples": a.samples, "image_size": a.size, "batch_size": a.batch_size,
                 "precision": a.precision, "workers": a.workers}
    try:
        import torch

        res["device_name"] = torch.cuda.get_device_name(0) if a.device.startswith("cuda") else "cpu"
        from clipcurate import download  # noqa: F401
        from clipcurate.curate import curate
        from clipcurate.eval import evaluate
        from clipcurate.train import train
        from clipcurate.core.workspace import Workspace

        ws = Workspace(work / "ws").create()
        if a.device.startswith("cuda") and a.probe_batch:
            import torch

            try:
                res["recipe_batch_probe"] = _memory_probe(a.model, a.probe_batch, a.device)
            except torch.OutOfMemoryError as exc:
                res["recipe_batch_probe"] = {"batch": a.probe_batch, "oom": str(exc).splitlines()[0][:200]}
            import gc

            gc.collect()
            torch.cuda.empty_cache()

        # 1. a synthetic pool, 1024 samples per shard, made in parallel
        per = 1024 if not a.small else 64
        jobs = [(str(ws.root), f"{s:05d}", s * per, min(per, a.samples - s * per), a.size)
                for s in range(-(-a.samples // per))]
        t = time.time()
        with Pool(min(16, os.cpu_count() or 1)) as p:
            p.map(_shard, jobs)
        res["pool_seconds"] = round(time.time() - t, 2)

        # 2. curate (streaming tar → tar)
        t = time.time()
        c = curate(ws, shard_size=per, decontam=False)
        dt = time.time() - t
        res["curate_samples_per_s"] = round(c.samples / dt, 1)

        # 3. baseline: stock open_clip_train on synthetic data, same model / batch / precision
        steps = max(8, a.samples // a.batch_size)
        cmd = [sys.executable, "-m", "open_clip_train.main", "--dataset-type", "synthetic",
               "--train-num-samples", str(steps * a.batch_size), "--model", a.model,
               "--batch-size", str(a.batch_size), "--epochs", "1", "--lr", "5e-4", "--warmup", "10",
               "--precision", a.precision, "--workers", str(a.workers), "--device", a.device,
               "--logs", str(work / "synthetic"), "--name", "synthetic", "--log-every-n-steps", "2",
               "--save-frequency", "0"]
        if a.small:
            cmd += ["--force-image-size", str(a.size)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        pre = "import sys; from clipcurate.core.models import register_configs; register_configs(); " \
              "from open_clip_train.main import main; main(sys.argv[1:])"
        t = time.time()
        r = subprocess.run([sys.executable, "-c", pre, *cmd[3:]], env=env, capture_output=True, text=True)
        res["baseline_seconds"] = round(time.time() - t, 1)
        base_log = work / "synthetic" / "synthetic" / "out.log"
        res["baseline_samples_per_s"] = round(_steady(_rates(base_log)), 1)
        if r.returncode:
            res["baseline_error"] = (r.stderr or r.stdout)[-600:]

        # 4. ours: clipcurate.train.stage on the curated shards (the documented recipe's settings, shortened)
        t = time.time()
        tr = train(ws, "recipe", model=a.model, batch_size=a.batch_size, epochs=a.epochs, lr=5e-4, wd=0.2,
                   warmup=10, precision=a.precision, workers=a.workers, device=a.device, log_every=2,
                   save_frequency=0, quiet=True)
        res["train_seconds"] = round(time.time() - t, 1)
        res["train_samples_per_s"] = round(_steady(_rates(tr.run_dir / "train.log")), 1)
        res["loss_first"] = tr.losses[0]["loss"] if tr.losses else None
        res["loss_last"] = tr.losses[-1]["loss"] if tr.losses else None
        res["loss_steps_logged"] = len(tr.losses)
        res["ratio_train_vs_synthetic"] = round(res["train_samples_per_s"] / res["baseline_samples_per_s"], 3)
        shutil.copy(tr.run_dir / "train.log", out / "train_out.log")
        if base_log.is_file():
            shutil.copy(base_log, out / "synthetic_out.log")

        # 5. eval: the checkpoint back through embed + eval on a small benchmark with a fake split
        from tests._curate_helpers import make_class_bench, write_splits

        make_class_bench(ws, work, "shapes", per_class=20, n_classes=10, size=a.size)
        write_splits(ws, {"shapes": set(range(0, 200, 10))})
        t = time.time()
        ev = evaluate(ws, checkpoint=str(tr.checkpoint), device=a.device, workers=min(8, a.workers))
        res["eval_seconds"] = round(time.time() - t, 1)
        res["eval_acc_all"] = ev.rows[0]["acc_all"]
        shutil.copy(ev.folder / "report.md", out / "report.md")
        shutil.copy(ev.folder / "figure17.png", out / "figure17.png")
    finally:
        (out / "train_gpu.json").write_text(json.dumps(res, indent=2))
        print(json.dumps(res, indent=2))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
