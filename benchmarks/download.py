"""Benchmark `clipcurate download` against the rate at which plain concurrent GETs drain the same
loopback server, measured in the same run.

    python benchmarks/download.py --n 4000 --threads 64

1. A loopback image server (tests/_download_server.py) runs in its own process, serving N
   generated JPEGs.
2. Baseline: a thread pool of plain urllib GETs fetches all N images once (no decoding, no
   writing) — the rate the server can be drained at. It gets as many concurrent connections as
   the download opens: processes × threads (img2dataset runs `--threads` fetches per process).
   One Python client with that many threads can be slower than with fewer (GIL), so it is also
   timed with `--threads` connections, and the faster of the two is the baseline.
3. `clipcurate download --allow-private` fetches the same N images into a fresh workspace (as a
   subprocess, like a user runs it): images/s end to end (start-up included), and the steady rate
   between the first and the last shard completion marker (start-up excluded).

Prints both rates and their ratio to the baseline. Never asserts times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

SERVER = """
import sys, time
sys.path[:0] = [{repo!r}, {tests!r}]
from _download_server import ImageServer
srv = ImageServer(image_size={size}).start()
for i in range({n}):  # pre-encode 256 distinct images: the server's cost per request is then just HTTP
    srv._cache[(i, "jpg")] = srv.image(i % 256, "jpg")
print(srv.port, flush=True)
while True:
    time.sleep(3600)
"""


def start_server(n: int, size: int):
    code = SERVER.format(repo=str(REPO), tests=str(REPO / "tests"), n=n, size=size)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    port = int(proc.stdout.readline())
    return proc, port


def plain_gets(urls: list[str], threads: int) -> float:
    def get(u):
        with urllib.request.urlopen(u, timeout=30) as r:
            return len(r.read())

    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(get, urls))
    dt = time.perf_counter() - t
    assert total > 0
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000, help="images")
    ap.add_argument("--threads", type=int, default=64)
    ap.add_argument("--processes", type=int, default=0, help="clipcurate --processes (0 = one per core)")
    ap.add_argument("--samples-per-shard", type=int, default=1000)
    ap.add_argument("--server-image-size", type=int, default=256, help="side of the served JPEGs")
    ap.add_argument("--image-size", type=int, default=256, help="clipcurate --image-size")
    ap.add_argument("--resize-mode", default="border")
    ap.add_argument("--skip-reencode", action="store_true", help="clipcurate --skip-reencode")
    args = ap.parse_args()

    from _download_server import write_urls

    proc, port = start_server(args.n, args.server_image_size)
    tmp = Path(tempfile.mkdtemp(prefix="clipcurate-bench-download-"))
    try:
        urls = [f"http://127.0.0.1:{port}/img/{i}.jpg" for i in range(args.n)]
        write_urls(tmp / "urls.parquet", [(u, f"caption {i}") for i, u in enumerate(urls)])
        # The same number of concurrent connections as the download: it runs one img2dataset
        # process per core (at most one per shard) with --threads fetches each.
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        n_proc = args.processes or min(cores, -(-args.n // args.samples_per_shard))
        conns = n_proc * args.threads
        plain_gets(urls[: min(200, args.n)], conns)  # warm up the server
        base_times = {c: plain_gets(urls, c) for c in dict.fromkeys((conns, args.threads))}
        conns, base_s = min(base_times.items(), key=lambda kv: kv[1])

        env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPCURATE_")}
        cmd = [sys.executable, "-m", "cli.app", "-q", "-w", str(tmp / "ws"), "download", "--input",
               str(tmp / "urls.parquet"), "--allow-private", "--threads", str(args.threads),
               "--processes", str(args.processes), "--samples-per-shard", str(args.samples_per_shard),
               "--image-size", str(args.image_size), "--resize-mode", args.resize_mode, "--format", "json"]
        if args.skip_reencode:
            cmd.append("--skip-reencode")
        t = time.perf_counter()
        t_wall = time.time()
        res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        ours_s = time.perf_counter() - t
        if res.returncode != 0:
            raise SystemExit(f"clipcurate download failed:\n{res.stderr}")
        counts = {d["status"]: d["rows"] for d in map(json.loads, res.stdout.splitlines())}
        marks = sorted(json.loads(p.read_text())["finished_at"] for p in (tmp / "ws" / "pool").glob("*.done"))
        n_shards = len(marks)
        steady = None
        if n_shards >= 2:  # rows finished between the first and the last marker, over that time
            steady = (args.n * (n_shards - 1) / n_shards) / max(marks[-1] - marks[0], 1e-9)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    base_rate = args.n / base_s
    ours_rate = counts.get("success", 0) / ours_s
    print(f"images: {args.n}  success: {counts.get('success', 0)}  shards: {n_shards}  threads: {args.threads}  "
          f"processes: {n_proc}  cores: {cores}  resize: {args.resize_mode}"
          f"{' skip-reencode' if args.skip_reencode else ''}")
    print(f"plain concurrent GETs (baseline): {base_rate:8.1f} images/s  ({base_s:.2f} s, {conns} connections; "
          + ", ".join(f"{c}: {args.n / t:.0f}/s" for c, t in base_times.items()) + ")")
    print(f"clipcurate download, end to end:  {ours_rate:8.1f} images/s  ({ours_s:.2f} s, start-up included)"
          f"  ratio {ours_rate / base_rate:.2f}x")
    if steady:
        print(f"clipcurate download, steady:      {steady:8.1f} images/s  (first to last shard marker)"
              f"  ratio {steady / base_rate:.2f}x")
    print(f"started {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(t_wall))} UTC")


if __name__ == "__main__":
    main()
