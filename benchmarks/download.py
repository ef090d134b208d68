"""Benchmark `clipcurate download` against stock img2dataset with the same options on the same
URLs, interleaved in the same run, at 0 ms and at a simulated latency.

    python benchmarks/download.py                    # 2000 images, shards of 500, 3 runs each at 0 and 200 ms
    python benchmarks/download.py --quick            # 300 images, 1 run each: a smoke run (~1 min)
    python benchmarks/download.py --latencies 200 --repeats 5
    python benchmarks/download.py --breakdown        # also: CPU per image of each step of a stored image

1. A loopback image server (tests/_download_server.py) runs in its own process, bound to
   127.0.0.1 only, serving N generated 256 px JPEGs (256 distinct images, pre-encoded, so the
   server's cost per request is just HTTP). It stops by itself: when this script exits (it watches
   its parent) and in any case after ``--server-lifetime`` seconds. ``--latencies`` lists the
   simulated delays (ms) before each image answer: a sleep in that request's own server thread
   (one thread per connection), so it holds back no other request and costs no CPU. With latency
   X, C connections complete at most C · 1000 / X images/s; at 0 ms everything is CPU-bound.
2. The two contenders, each as a user runs it (a subprocess: start-up included), each into a
   fresh output folder, with the same options: output format webdataset, ``--image-size`` /
   ``--resize-mode`` / encode quality 95, shards of ``--samples-per-shard`` rows,
   ``--processes`` × ``--threads`` fetches, timeout 10 s, no retries:
   - ``clipcurate download --allow-private`` (its URL policy refuses loopback otherwise);
   - stock img2dataset (``python -m img2dataset.main``, its command line) with
     ``--extract_exif False`` (clipcurate stores no EXIF) and its default ``compute_hash sha256``
     (clipcurate stores a sha256 per image too).
   Runs alternate (A B, B A, A B, ...) so a change of load on the shared machine hits both.
3. Per run: wall time, successes (clipcurate's counts; img2dataset's ``*_stats.json``), and CPU
   seconds of the whole process tree (getrusage of reaped children; this process is made the
   subreaper, so workers orphaned at the end are counted too). images/s = successes / wall.

Prints, per latency, the median of each contender, the clipcurate / img2dataset ratios of images/s
and of CPU per image, and the success counts. The rate at which plain urllib GETs drain the same
server (no decode, no write) is printed as a ceiling only. Never asserts times.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

# The server process. It exits when its parent (this script) is gone or after `lifetime` seconds,
# whichever comes first, so no run can leave it behind.
SERVER = """
import os, sys, threading, time
sys.path[:0] = [{repo!r}, {tests!r}]
from _download_server import ImageServer
parent, deadline = os.getppid(), time.monotonic() + {lifetime}
def watchdog():
    while os.getppid() == parent and time.monotonic() < deadline:
        time.sleep(0.5)
    os._exit(0)
threading.Thread(target=watchdog, daemon=True).start()
srv = ImageServer(image_size={size}, image_delay={delay!r}).start()  # binds 127.0.0.1 only
for i in range({n}):  # pre-encode 256 distinct images: the server's cost per request is then just HTTP
    srv._cache[(i, "jpg")] = srv.image(i % 256, "jpg")
print(srv.port, flush=True)
while True:
    time.sleep(3600)
"""


def start_server(n: int, size: int, latency_ms: float, lifetime: float):
    code = SERVER.format(repo=str(REPO), tests=str(REPO / "tests"), n=n, size=size, delay=latency_ms / 1000,
                         lifetime=lifetime)
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


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def become_subreaper() -> None:
    """Orphans of a contender (pool workers of a runner killed at the end) are re-parented to us."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(36, 1)  # PR_SET_CHILD_SUBREAPER


def reap_orphans(keep: int) -> None:
    """Wait for exited orphans (so their CPU lands in RUSAGE_CHILDREN); leaves ``keep`` (the server)."""
    deadline = time.monotonic() + 5.0
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


def run_timed(cmd: list[str], server_pid: int, limit: float) -> tuple[float, float, subprocess.CompletedProcess]:
    """Run ``cmd`` in its own process group: (wall s, CPU s of its whole tree, result). Killed at ``limit``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPCURATE_")}
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"  # albumentations would query PyPI on import (both sides import it)
    cpu0 = children_cpu()
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\n(killed after {limit:.0f} s)"
    wall = time.perf_counter() - t
    reap_orphans(keep=server_pid)
    return wall, children_cpu() - cpu0, subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def clipcurate_cmd(urls: Path, out: Path, a) -> list[str]:
    cmd = [sys.executable, "-m", "clipcurate", "-q", "-w", str(out), "download", "--input", str(urls),
           "--allow-private", "--processes", str(a.processes), "--threads", str(a.threads),
           "--samples-per-shard", str(a.samples_per_shard), "--image-size", str(a.image_size),
           "--resize-mode", a.resize_mode, "--format", "json"]
    return cmd + (["--skip-reencode"] if a.skip_reencode else [])


def img2dataset_cmd(urls: Path, out: Path, a) -> list[str]:
    cmd = [sys.executable, "-m", "img2dataset.main", "--url_list", str(urls), "--input_format", "parquet",
           "--url_col", "url", "--caption_col", "caption", "--output_format", "webdataset",
           "--output_folder", str(out), "--processes_count", str(a.processes), "--thread_count", str(a.threads),
           "--number_sample_per_shard", str(a.samples_per_shard), "--image_size", str(a.image_size),
           "--resize_mode", a.resize_mode, "--encode_quality", "95", "--timeout", "10", "--retries", "0",
           "--extract_exif", "False", "--enable_wandb", "False"]
    return cmd + (["--skip_reencode", "True"] if a.skip_reencode else [])


def clipcurate_successes(res: subprocess.CompletedProcess, out: Path) -> int:
    counts = {d["status"]: d["rows"] for d in map(json.loads, res.stdout.splitlines()) if "status" in d}
    return int(counts.get("success", 0))


def img2dataset_successes(res: subprocess.CompletedProcess, out: Path) -> int:
    return sum(int(json.loads(p.read_text()).get("successes", 0)) for p in out.glob("*_stats.json"))


CONTENDERS = {"clipcurate": (clipcurate_cmd, clipcurate_successes),
              "img2dataset": (img2dataset_cmd, img2dataset_successes)}


def one_run(name: str, urls: Path, tmp: Path, a, server_pid: int, i: int) -> dict:
    make_cmd, successes = CONTENDERS[name]
    out = tmp / f"{name}-{i}"  # a fresh output folder every run
    wall, cpu, res = run_timed(make_cmd(urls, out, a), server_pid, a.run_timeout)
    ok = successes(res, out) if res.returncode == 0 else 0
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"  {name} run {i}: exit {res.returncode}: {tail[:200]}", flush=True)
    shutil.rmtree(out, ignore_errors=True)
    run = {"wall": wall, "cpu": cpu, "ok": ok, "rate": ok / wall, "cpu_ms": 1000 * cpu / max(ok, 1)}
    print(f"  {name:11s} run {i}: {run['rate']:7.1f} images/s  {wall:6.2f} s  {ok} ok  "
          f"{run['cpu_ms']:.2f} ms CPU/image  (load {os.getloadavg()[0]:.2f})", flush=True)
    return run


def measure_latency(latency: float, a, tmp: Path) -> dict:
    """Interleaved runs of both contenders against one server at ``latency`` ms."""
    from _download_server import write_urls

    proc, port = start_server(a.n, a.server_image_size, latency, a.server_lifetime)
    try:
        urls = [f"http://127.0.0.1:{port}/img/{i}.jpg" for i in range(a.n)]
        url_file = tmp / f"urls-{latency:g}.parquet"
        write_urls(url_file, [(u, f"caption {i}") for i, u in enumerate(urls)])
        conns = a.processes * a.threads
        plain_gets(urls[: min(200, a.n)], conns)  # warm up the server
        ceiling = a.n / plain_gets(urls, conns)
        print(f"latency {latency:g} ms: bare GETs ({conns} connections, no decode, no write): {ceiling:.0f} images/s",
              flush=True)
        runs = {name: [] for name in CONTENDERS}
        for i in range(a.repeats):
            order = list(CONTENDERS) if i % 2 == 0 else list(CONTENDERS)[::-1]
            for name in order:
                runs[name].append(one_run(name, url_file, tmp, a, proc.pid, i))
    finally:
        proc.kill()
        proc.wait()
    return {"latency": latency, "ceiling": ceiling, "runs": runs}


def summarize(res: dict, a) -> None:
    med = {name: {k: statistics.median(r[k] for r in runs) for k in ("rate", "wall", "cpu_ms", "ok")}
           for name, runs in res["runs"].items()}
    ours, stock = med["clipcurate"], med["img2dataset"]
    lat = res["latency"]
    print(f"\n== latency {lat:g} ms (simulated), {a.n} images, {a.repeats} interleaved runs each, medians ==")
    print(f"{'':12s} {'images/s':>9s} {'wall s':>7s} {'successes (all runs)':>28s} {'ms CPU/image':>13s}")
    for name, m in med.items():
        oks = ",".join(str(r["ok"]) for r in res["runs"][name])
        print(f"{name:12s} {m['rate']:9.1f} {m['wall']:7.2f} {oks:>28s} {m['cpu_ms']:13.2f}")
    diff = 100 * (ours["ok"] - stock["ok"]) / max(stock["ok"], 1)
    print(f"ratio clipcurate / img2dataset: images/s {ours['rate'] / stock['rate']:.2f}x, "
          f"CPU per image {ours['cpu_ms'] / stock['cpu_ms']:.2f}x, successes {diff:+.2f}%")
    ceiling = f"bare-GET ceiling {res['ceiling']:.0f} images/s"
    if lat:
        ceiling += f"; latency ceiling {a.processes * a.threads * 1000 / lat:.0f} images/s"
    print(f"({ceiling}: not a goal, neither decodes nor writes there)")


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
    timed("plain urllib GET (the bare-GET ceiling's work per image)", plain, sample)
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
    ap.add_argument("--n", type=int, default=2000, help="images (urls) per run")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved runs of each contender per latency")
    ap.add_argument("--latencies", default="0,200", help="simulated delays before each image answer, ms")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    ap.add_argument("--processes", type=int, default=cores, help="worker processes of both (default: cores)")
    ap.add_argument("--threads", type=int, default=64, help="concurrent fetches per process, both")
    ap.add_argument("--samples-per-shard", type=int, default=500)
    ap.add_argument("--server-image-size", type=int, default=256, help="side of the served JPEGs")
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--resize-mode", default="border")
    ap.add_argument("--skip-reencode", action="store_true")
    ap.add_argument("--run-timeout", type=float, default=600.0, help="seconds before a run is killed")
    ap.add_argument("--server-lifetime", type=float, default=3600.0, help="the server exits after this long")
    ap.add_argument("--quick", action="store_true", help="300 images, shards of 100, 1 run each")
    ap.add_argument("--breakdown", action="store_true", help="also time each step of a stored image")
    a = ap.parse_args()
    if a.quick:
        a.n, a.samples_per_shard, a.repeats = 300, 100, 1
    latencies = [float(x) for x in a.latencies.split(",") if x.strip()]
    if any(x < 0 for x in latencies) or a.repeats < 1 or a.n < 1:
        ap.error("--latencies must be >= 0, --repeats and --n >= 1")
    become_subreaper()
    print(f"$ uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")
    print(f"{a.n} images, shards of {a.samples_per_shard}, {a.processes} processes x {a.threads} threads, "
          f"{a.resize_mode} {a.image_size} px{' skip-reencode' if a.skip_reencode else ''}, {cores} cores, "
          f"started {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="clipcurate-bench-download-"))
    try:
        results = [measure_latency(lat, a, tmp) for lat in latencies]
        for res in results:
            summarize(res, a)
        if a.breakdown:
            proc, port = start_server(a.n, a.server_image_size, 0.0, a.server_lifetime)
            try:
                breakdown([f"http://127.0.0.1:{port}/img/{i}.jpg" for i in range(a.n)], a)
            finally:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"$ uptime: {subprocess.run(['uptime'], capture_output=True, text=True).stdout.strip()}")


if __name__ == "__main__":
    main()
