"""Benchmark `clipcurate download` against the rate at which plain concurrent GETs drain the same
loopback server, measured in the same run.

    python benchmarks/download.py --n 4000 --threads 64
    python benchmarks/download.py --n 4000 --samples-per-shard 500 --latency-ms 200

1. A loopback image server (tests/_download_server.py) runs in its own process, serving N
   generated JPEGs. `--latency-ms X` (default 0) makes it wait X ms before answering each image
   request — a simulated round trip plus remote server time, as every host on the web has. The
   wait is a sleep in that request's own server thread (one thread per connection), so it delays
   no other request and costs no CPU; it applies alike to the baseline's GETs and to the
   download's (same server, same run). With latency, C connections complete at most
   C · 1000 / X requests per second, so the rate depends on how many connections a client keeps
   busy rather than on CPU; with 0 (a loopback server that answers at once) both sides are
   CPU-bound.
2. Baseline: a thread pool of plain urllib GETs fetches all N images once (no decoding, no
   writing) — the rate the server can be drained at. It gets as many concurrent connections as
   the download opens: processes × threads (img2dataset runs `--threads` fetches per process).
   One Python client with that many threads can be slower than with fewer (GIL), so it is also
   timed with `--threads` connections, and the faster of the two is the baseline.
3. `clipcurate download --allow-private` fetches the same N images into a fresh workspace (as a
   subprocess, like a user runs it): images/s end to end (start-up included), and the steady rate
   between the first and the last shard completion marker (start-up excluded).

Prints both rates and their ratio to the baseline, and the CPU each side spent per image: the
baseline client (this process), the server (its own process), the download's whole process tree
(getrusage of reaped children; this process is made the subreaper, so img2dataset workers whose
runner was killed at the end are counted too). `--breakdown` then times, in this process on the
server's own images, each step a stored image costs (fetch, header check, resize + re-encode, tar
members), with the cached / header-only paths the download's workers install (not with
`--latency-ms`: it fetches one image at a time). Never asserts times.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
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
srv = ImageServer(image_size={size}, image_delay={delay!r}).start()
for i in range({n}):  # pre-encode 256 distinct images: the server's cost per request is then just HTTP
    srv._cache[(i, "jpg")] = srv.image(i % 256, "jpg")
print(srv.port, flush=True)
while True:
    time.sleep(3600)
"""


def start_server(n: int, size: int, latency_ms: float = 0.0):
    code = SERVER.format(repo=str(REPO), tests=str(REPO / "tests"), n=n, size=size, delay=latency_ms / 1000)
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


def server_cpu(proc) -> float:
    """CPU seconds the server process has used (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def become_subreaper() -> None:
    """Orphans of the download (workers of a runner killed at the end) are re-parented to us."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(36, 1)  # PR_SET_CHILD_SUBREAPER


def reap_orphans(keep: int) -> None:
    """Wait for exited orphans (so their CPU lands in RUSAGE_CHILDREN); leaves ``keep`` (the server)."""
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if not any(p.isdigit() and int(p) != keep and _parent(int(p)) == os.getpid()
                       for p in os.listdir("/proc")):
                return
            time.sleep(0.05)


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def breakdown(urls: list[str], args) -> None:
    """CPU ms per image of each step a stored image costs, timed here one image at a time."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import img2dataset.resizer as i2d_resizer

    from clipcurate.download import img2dataset_child as child
    from clipcurate.download import inspect_image, sample_members, TarStream, urlsafety

    sample = urls[: min(len(urls), 1000)]
    policy = urlsafety.Policy.make(allow_private=True)

    def timed(label, fn, items):
        t = time.process_time()
        out = [fn(x) for x in items]
        ms = 1000 * (time.process_time() - t) / len(items)
        print(f"  {label:58s} {ms:6.3f} ms/image")
        return out

    def plain(u):
        with urllib.request.urlopen(u, timeout=30) as r:
            return r.read()

    print(f"CPU per image, one at a time in this process ({len(sample)} of the server's images):")
    timed("plain urllib GET (what the baseline does per image)", plain, sample)
    bodies = timed("urlsafety.fetch (pinned, checked, deadline, body cap)",
                   lambda u: urlsafety.fetch(u, policy)[0], sample)
    timed("inspect_image (header: bombs, non-images, truncation)", lambda b: inspect_image(b, 89_478_485), bodies)
    if not isinstance(i2d_resizer.A, child._CachedTransforms):
        i2d_resizer.A = child._CachedTransforms(i2d_resizer.A)
    original = getattr(i2d_resizer.Resizer.__call__, "__wrapped__", i2d_resizer.Resizer.__call__)
    fast = child._resizer_call(original, i2d_resizer)
    rz = i2d_resizer.Resizer(args.image_size, args.resize_mode, False, encode_quality=95,
                             skip_reencode=args.skip_reencode)
    stored = timed(f"Resizer {args.resize_mode}{' skip-reencode' if args.skip_reencode else ''} "
                   f"{args.image_size} px (as the workers run it)", lambda b: fast(rz, io.BytesIO(b))[0], bodies)
    import cv2
    import numpy as np

    pixels = timed("for reference: cv2.imdecode of the body alone", lambda b: cv2.imdecode(np.frombuffer(b, np.uint8), -1), bodies)
    timed("for reference: cv2.imencode q95 of those pixels alone", lambda a: cv2.imencode(".jpg", a, [cv2.IMWRITE_JPEG_QUALITY, 95]), pixels)
    row = {"uid": "0" * 32, "url": sample[0], "caption": "caption 0", "width": 256, "height": 256, "query_ids": []}
    sink = TarStream(io.BytesIO())

    def members(b):
        for name, blob in sample_members("000000000", "00000", row, b)[1]:
            sink.add(name, blob)

    timed("sha256 + json + 3 tar members (TarStream)", members, [b for b in stored if b])


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
    ap.add_argument("--breakdown", action="store_true", help="also time each step of a stored image")
    ap.add_argument("--latency-ms", type=float, default=0.0,
                    help="simulated delay before each image response, in ms (default 0: answer at once)")
    args = ap.parse_args()
    if args.latency_ms < 0:
        ap.error("--latency-ms must be >= 0")
    if args.breakdown and args.latency_ms:
        ap.error("--breakdown fetches one image at a time; run it without --latency-ms")
    become_subreaper()

    from _download_server import write_urls

    proc, port = start_server(args.n, args.server_image_size, args.latency_ms)
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
        base_times, base_cpu = {}, {}
        for c in dict.fromkeys((conns, args.threads)):
            cpu0, srv0 = self_cpu(), server_cpu(proc)
            base_times[c] = plain_gets(urls, c)
            base_cpu[c] = (self_cpu() - cpu0, server_cpu(proc) - srv0)
        conns, base_s = min(base_times.items(), key=lambda kv: kv[1])

        env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPCURATE_")}
        cmd = [sys.executable, "-m", "clipcurate", "-q", "-w", str(tmp / "ws"), "download", "--input",
               str(tmp / "urls.parquet"), "--allow-private", "--threads", str(args.threads),
               "--processes", str(args.processes), "--samples-per-shard", str(args.samples_per_shard),
               "--image-size", str(args.image_size), "--resize-mode", args.resize_mode, "--format", "json"]
        if args.skip_reencode:
            cmd.append("--skip-reencode")
        t = time.perf_counter()
        t_wall = time.time()
        cpu0, srv0 = children_cpu(), server_cpu(proc)
        res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        ours_s = time.perf_counter() - t
        reap_orphans(keep=proc.pid)
        ours_cpu, ours_srv = children_cpu() - cpu0, server_cpu(proc) - srv0
        if res.returncode != 0:
            raise SystemExit(f"clipcurate download failed:\n{res.stderr}")
        counts = {d["status"]: d["rows"] for d in map(json.loads, res.stdout.splitlines())}
        marks = sorted(json.loads(p.read_text())["finished_at"] for p in (tmp / "ws" / "pool").glob("*.done"))
        n_shards = len(marks)
        steady = None
        # Rows finished between the first and the last marker, over that time. Needs more shards than
        # processes: shards that run side by side finish together, and the window would be ~0 s.
        if n_shards > n_proc:
            steady = (args.n * (n_shards - 1) / n_shards) / max(marks[-1] - marks[0], 1e-9)
        if args.breakdown:
            breakdown(urls, args)
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)

    base_rate = args.n / base_s
    ours_rate = counts.get("success", 0) / ours_s
    print(f"images: {args.n}  success: {counts.get('success', 0)}  shards: {n_shards}  threads: {args.threads}  "
          f"processes: {n_proc}  cores: {cores}  resize: {args.resize_mode}"
          f"{' skip-reencode' if args.skip_reencode else ''}  latency: {args.latency_ms:g} ms (simulated)")
    print(f"plain concurrent GETs (baseline): {base_rate:8.1f} images/s  ({base_s:.2f} s, {conns} connections; "
          + ", ".join(f"{c}: {args.n / t:.0f}/s" for c, t in base_times.items()) + ")")
    if args.latency_ms:
        print(f"latency ceiling for {conns} connections: {conns * 1000 / args.latency_ms:8.1f} images/s"
              f"  (the baseline reaches {base_rate * args.latency_ms / (conns * 1000):.2f} of it)")
    print(f"clipcurate download, end to end:  {ours_rate:8.1f} images/s  ({ours_s:.2f} s, start-up included)"
          f"  ratio {ours_rate / base_rate:.2f}x")
    if steady:
        print(f"clipcurate download, steady:      {steady:8.1f} images/s  (first to last shard marker)"
              f"  ratio {steady / base_rate:.2f}x")
    if marks:  # where the end-to-end time goes: start-up + first shard, the rest, after the last
        print(f"shard markers: first {marks[0] - t_wall:.2f} s, last {marks[-1] - t_wall:.2f} s after the start;"
              f" exit {ours_s:.2f} s")
    client, server = base_cpu[conns]
    print(f"CPU per image: baseline client {1000 * client / args.n:.3f} ms + server {1000 * server / args.n:.3f} ms"
          f"  |  download (whole process tree, start-up included) {1000 * ours_cpu / args.n:.3f} ms"
          f" + server {1000 * ours_srv / args.n:.3f} ms")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"started {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(t_wall))} UTC")


if __name__ == "__main__":
    main()
