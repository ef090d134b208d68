"""Key press → next pair drawn in `clipcurate review`, at 100 and at 100,000 queued pairs.

For each queue size this builds a workspace from the stage contracts (pool tars + manifest,
benchmark Parquet with image bytes, overlap/review_queue.parquet; see tests/_review_helpers.py),
opens the real ReviewApp headless with Textual's Pilot at 160×45, and presses ``n`` (vote "not a
duplicate": appended to the decision log, fsynced in the background as `clipcurate review` does,
then move on) repeatedly. The latency of one press
is from just before ``pilot.press`` to the moment the app reports the new pair complete on screen
(its images and texts set and a screen refresh done: ``ReviewApp.drawn_at``).

The UI thread's CPU time per press (the Pilot runs in the app's thread) is printed too: unlike wall
clock it is not inflated by other processes on a busy machine.

The 100-pair run is the baseline of the same run; the script prints the 100,000 / 100 ratio, and
the same measure with prefetch turned off (``--prefetch 0``) to show what prefetching buys.
Goal: under 100 ms at both sizes.

    python benchmarks/review.py                 # 100 and 100,000 pairs, 40 presses each
    python benchmarks/review.py --sizes 100 --presses 10
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from _review_helpers import build  # noqa: E402

from clipcurate.core.imageload import MediaLoader  # noqa: E402
from clipcurate.review import ReviewSession  # noqa: E402
from clipcurate.review import ReviewApp  # noqa: E402


async def measure(ws, presses: int, prefetch: int, images: str, key: str, think: float) -> dict:
    t0 = time.perf_counter()
    session = ReviewSession(ws, "bench", background_fsync=True)  # as `clipcurate review` opens it
    t_session = time.perf_counter() - t0
    app = ReviewApp(session, MediaLoader(ws, decode_images=images != "none"), images=images, prefetch=prefetch)
    lat, cpu = [], []
    drawn = asyncio.Event()
    shown = app._drawn

    def hooked(pid):  # wake the benchmark the moment the app reports a pair drawn (no polling)
        shown(pid)
        drawn.set()

    app._drawn = hooked

    async def wait_drawn(after: float, before_pid=None):
        while not (app.drawn_pair_id == session.pair_id != before_pid and app.drawn_at >= after):
            drawn.clear()
            await drawn.wait()

    async with app.run_test(size=(160, 45)) as pilot:
        await wait_drawn(0.0)
        t_first = time.perf_counter() - t0
        while not app.warmed.done():  # the background indexing of every tar (a second or two at 100k)
            await asyncio.sleep(0.01)
        t_warm = time.perf_counter() - t0
        for _ in range(presses):
            if think:
                await asyncio.sleep(think)  # the reviewer looks at the pair
            before = session.pair_id
            t, c = time.perf_counter(), time.thread_time()
            await pilot.press(key)
            await wait_drawn(t, before)
            lat.append((app.drawn_at - t) * 1000)
            cpu.append((app.drawn_cpu - c) * 1000)
        await pilot.press("q")
    lat_sorted = sorted(lat)
    return {"open_s": t_first, "warm_s": t_warm, "session_s": t_session, "median_ms": statistics.median(lat),
            "p90_ms": lat_sorted[int(0.9 * (len(lat) - 1))], "max_ms": lat_sorted[-1],
            "ui_cpu_ms": statistics.median(cpu)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100, 100_000])
    ap.add_argument("--presses", type=int, default=40)
    ap.add_argument("--images", default="halfcell", choices=["halfcell", "none"])
    ap.add_argument("--key", default="n", help="n (vote and move on) or j (just move)")
    ap.add_argument("--think", type=float, default=0.25,
                    help="seconds the reviewer looks at each pair before the next key (the burst run uses 0)")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="review-bench-") as tmp:
        for n in args.sizes:
            t = time.perf_counter()
            ws = build(Path(tmp) / f"ws{n}", n, variants=min(n, 256), image_size=64, shuffle=True)
            built = time.perf_counter() - t
            for prefetch, think in ((4, args.think), (0, args.think), (4, 0.0)):
                # a fresh decision log for each run, so every run starts at the first pair
                log = ws.root / "review" / "decisions.jsonl"
                log.unlink(missing_ok=True)
                r = asyncio.run(measure(ws, args.presses, prefetch, args.images, args.key, think))
                results[(n, prefetch, think)] = r
                print(f"{n:>7} pairs  prefetch {prefetch}  think {think:.2f} s  key {args.key!r}  images {args.images}: "
                      f"press→drawn median {r['median_ms']:.1f} ms  p90 {r['p90_ms']:.1f} ms  max {r['max_ms']:.1f} ms  "
                      f"UI-thread CPU median {r['ui_cpu_ms']:.1f} ms"
                      f"   (first pair drawn {r['open_s']:.2f} s after start, of which queue+log {r['session_s']:.2f} s; "
                      f"all tars indexed {r['warm_s']:.2f} s; "
                      f"workspace built in {built:.1f} s)", flush=True)
    base, th = args.sizes[0], args.think
    for n in args.sizes[1:]:
        a, b = results[(n, 4, th)], results[(base, 4, th)]
        print(f"ratio {n:,} / {base:,} pairs (prefetch 4, think {th} s): median {a['median_ms'] / b['median_ms']:.2f}x  "
              f"p90 {a['p90_ms'] / b['p90_ms']:.2f}x")
    for n in args.sizes:
        a, b = results[(n, 4, th)], results[(n, 0, th)]
        print(f"{n:,} pairs: prefetch 4 vs 0: median {a['median_ms']:.1f} vs {b['median_ms']:.1f} ms "
              f"({b['median_ms'] / a['median_ms']:.2f}x slower without prefetch)")
    worst = max(r["p90_ms"] for (n, p, t), r in results.items() if p == 4 and t == th)
    print(f"goal < 100 ms: {'met' if worst < 100 else 'NOT met'} (worst p90 with prefetch, think {th} s: {worst:.1f} ms)")


if __name__ == "__main__":
    main()
