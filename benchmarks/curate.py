"""curate: streaming tar → tar against a naive load-everything reshard, same pool, same run.

The naive baseline reads every pool tar fully into memory (all samples of all shards), filters, and
writes the same output shards. Both produce byte-identical tars (checked). Printed: time ratio and
peak Python memory ratio (tracemalloc) — streaming should hold memory flat in the pool size.

    python benchmarks/curate.py [--samples 4000] [--size 128]
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tarfile
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def naive(ws, plan_rows, shard_size: int, out_dir: Path) -> None:
    """Everything in memory: {(pool shard, key): {ext: bytes}} for the whole pool, then write."""
    from clipcurate.curate import iter_tar_samples

    everything = {}
    for tar in sorted(ws.path("pool", "shards").glob("*.tar")):
        for key, files in iter_tar_samples(tar):
            everything[(tar.stem, key)] = files
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in range(0, len(plan_rows), shard_size):
        with tarfile.open(out_dir / f"{i // shard_size:05d}.tar", "w", format=tarfile.PAX_FORMAT) as tf:
            for uid, pshard, key in plan_rows[i:i + shard_size]:
                files = everything[(pshard, key)]
                ext = next(e for e in ("jpg", "jpeg", "png", "webp") if e in files)
                for name, data in ((f"{uid}.{ext}", files[ext]), (f"{uid}.txt", files["txt"]),
                                   (f"{uid}.json", files.get("json"))):
                    if data is None:
                        continue
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tf.addfile(info, io.BytesIO(data))


def measure(fn):
    tracemalloc.start()
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return dt, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=4000)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--shard-size", type=int, default=500)
    a = ap.parse_args()
    from clipcurate import download  # noqa: F401
    from clipcurate.core import synth
    from clipcurate.curate.stage import _plan, curate
    from clipcurate.download import write_pool_shard
    from clipcurate.core.workspace import Workspace

    work = Path(tempfile.mkdtemp(prefix="bench_curate_"))
    try:
        ws = Workspace(work / "ws").create()
        per = 500
        for s in range(-(-a.samples // per)):
            write_pool_shard(ws, f"{s:05d}", [
                {"url": f"http://x/{i}.jpg", "caption": synth.caption_for(i % 10),
                 "image": synth.jpeg_bytes(synth.make_image(i % 10, i, "photo", a.size))}
                for i in range(s * per, min(a.samples, (s + 1) * per))])
        plan, _ = _plan(ws, False, a.shard_size)
        rows = [r for shard in plan.values() for r in shard]
        t_naive, m_naive = measure(lambda: naive(ws, rows, a.shard_size, work / "naive"))
        t_ours, m_ours = measure(lambda: curate(ws, shard_size=a.shard_size, decontam=False))
        same = all((work / "naive" / f"{s}.tar").read_bytes() == ws.path("curate", "shards", f"{s}.tar").read_bytes()
                   for s in plan)
        pool_mb = sum(p.stat().st_size for p in ws.path("pool", "shards").glob("*.tar")) / 2**20
        print(json.dumps({
            "samples": a.samples, "pool_mb": round(pool_mb, 1), "identical_outputs": same,
            "naive_s": round(t_naive, 2), "curate_s": round(t_ours, 2), "speed_ratio": round(t_naive / t_ours, 2),
            "naive_peak_mb": round(m_naive / 2**20, 1), "curate_peak_mb": round(m_ours / 2**20, 1),
            "memory_ratio": round(m_naive / max(1, m_ours), 1)}, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
