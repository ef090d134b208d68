"""Every GPU measurement of the project in one run, one table (driven by benchmarks/gpu.sh).

    bash benchmarks/gpu.sh --fetch        # on a machine with network: the wheels into .whl/ (once)
    bash benchmarks/gpu.sh                # on the GPU machine, carrying .whl: < 8 min, prints the table
    bash benchmarks/gpu.sh --dry-run      # on CPU with tiny sizes (tests/test_benchmarks_gpu.py)

The parts, in this order, each a subprocess with its own time limit (a part that fails or runs out
of time is a row saying so; the others still run), and all of them within ``--budget`` seconds
(a part that would not fit in what is left is reported as not run):

- ``embed`` (benchmarks/embed_gpu.py): ViT-B-32, random init, bf16, generated 256 px JPEG shards —
  model only (resident batch), decode only (the stage's DataLoader workers, no model), end to end
  with captions, images only with PIL decode, images only with nvJPEG decode
  (``torchvision.io.decode_jpeg`` on cuda).
- ``search`` (benchmarks/overlap.py): the overlap stage's exact top-k search (torch backend on a
  GPU, numpy on a CPU) against the bare matmul of the same shapes, in the same run.
- ``cuda_test``: ``pytest tests/test_search.py::test_cuda_matches_cpu`` (skipped by pytest without CUDA).
- ``detector``: training throughput of the copy detector (``clipcurate.detector.fit``, the ``full``
  preset's network at 128 px on a GPU), pairs/s over the steps after the first two.
- ``train`` (benchmarks/train_gpu.py): curate → train → eval with ViT-B-32 + AMP, against stock
  open_clip_train on synthetic data, same model, batch and precision.
- ``download`` (benchmarks/download.py at 0 ms): `clipcurate download` against stock img2dataset on
  all the machine's cores (needs no GPU; run here because the GPU machine has 16 cores).
- ``ray`` (benchmarks/ray_gpu.py): Ray actors on the GPU; reported as not run when ``import ray`` fails.

``--dry-run`` runs embed, search, cuda_test and detector on the CPU with tiny sizes (< 1 min on 2
cores), and reports train, download and ray as not run (``--all`` runs them too, small).
Everything is random-init and generated: no downloads.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PY = sys.executable


def run_part(cmd: list[str], limit: float, env: dict | None = None) -> tuple[int, str]:
    """(exit code, stdout + stderr) of one part; 124 when it ran past ``limit`` seconds."""
    full_env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                    NO_ALBUMENTATIONS_UPDATE="1", **(env or {}))
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=limit)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        return 124, out + f"\n(killed after {limit:.0f} s)"


def _json_line(out: str, prefix: str = "") -> dict:
    """The last line of ``out`` that is ``prefix`` + a JSON object."""
    for line in reversed(out.splitlines()):
        if line.startswith(prefix) and line[len(prefix):].lstrip().startswith("{"):
            return json.loads(line[len(prefix):])
    raise ValueError("no result line")


def _fail(part: str, code: int, out: str) -> list[tuple]:
    tail = " | ".join(ln.strip() for ln in out.strip().splitlines()[-2:])[:300]
    return [(part, "FAILED" if code != 124 else "TIMED OUT", "", "", f"exit {code}: {tail}")]


# -- the parts: each returns rows (part, figure, value, vs baseline, note) -----------------------------

def part_embed(a) -> list[tuple]:
    env = {"DEVICE": a.device, "SKIP_SEARCH": "1", "N": "20000"}
    if a.dry_run:
        env.update(N="32", MODEL="clipcurate-tiny", SHARD="32", BATCH="16", WORKERS="0", PRECISION="fp32", REPS="3")
    code, out = run_part([PY, "benchmarks/embed_gpu.py"], a.limits["embed"], env)
    if code != 0:
        return _fail("embed", code, out)
    r = _json_line(out, "RESULT ")
    where = f"{r['model']} {r['precision']}, {r['images']} × {r['jpeg_px']} px JPEG, batch {r['batch_size']}"
    rows = [("embed", "model only (resident batch)", f"{r['model_only_images_per_s']:.0f} images/s", "ceiling", where),
            ("embed", "text tower only", f"{r['text_only_captions_per_s']:.0f} captions/s", "", "")]
    if "decode_only_images_per_s" in r:
        rows.append(("embed", f"decode only ({r['workers']} DataLoader workers, PIL)",
                     f"{r['decode_only_images_per_s']:.0f} images/s", "ceiling", ""))
    model = r["model_only_images_per_s"]
    for key, label in (("e2e_with_text", "end to end, images + captions, PIL decode"),
                       ("e2e_images_only", "end to end, images only, PIL decode"),
                       ("e2e_images_only_torch_decode", "end to end, images only, torchvision decode_jpeg on the device (nvJPEG on cuda)")):
        v = r.get(key, {})
        if "images_per_s" in v:
            rows.append(("embed", label, f"{v['images_per_s']:.0f} images/s", f"{v['images_per_s'] / model:.2f}× model only",
                         f"model busy {100 * v['model_share']:.0f}% of the time"))
        else:
            rows.append(("embed", label, "FAILED", "", v.get("error", "")[:200]))
    pil, nv = r.get("e2e_images_only", {}), r.get("e2e_images_only_torch_decode", {})
    if "images_per_s" in pil and "images_per_s" in nv:
        rows.append(("embed", "device decode / PIL decode, images only", f"{nv['images_per_s'] / pil['images_per_s']:.2f}×", "", ""))
    return rows


def part_search(a) -> list[tuple]:
    if a.dry_run:
        args = ["--bench", "200", "--pool", "20000", "--shard-rows", "10000", "--repeat", "1"]
    else:
        args = ["--gpu-only", "--bench", "20000", "--pool", "1000000", "--shard-rows", "250000", "--repeat", "3"]
    code, out = run_part([PY, "benchmarks/overlap.py", "--skip-memory", *args], a.limits["search"])
    if code != 0:
        return _fail("search", code, out)
    t = _json_line(out)["throughput"]
    shape = f"{t['bench']} × {t['pool']} × d{t['dim']}, top-10"
    if "search_torch_pairs_per_s" in t:
        return [("search", "bare torch matmul (fp16 in, fp32 out)", f"{t['torch_matmul_pairs_per_s']:.3g} pairs/s",
                 "baseline", f"{shape}; {t['torch_matmul_tflops']:.0f} TFLOP/s"),
                ("search", "exact search, torch backend (copies included)", f"{t['search_torch_pairs_per_s']:.3g} pairs/s",
                 f"{t['search_torch_vs_torch_matmul']:.2f}× matmul", f"{t['search_torch_tflops']:.0f} TFLOP/s")]
    return [("search", "bare numpy matmul (fp32)", f"{t['matmul_pairs_per_s']:.3g} pairs/s", "baseline", shape),
            ("search", "exact search, numpy backend", f"{t['search_numpy_pairs_per_s']:.3g} pairs/s",
             f"{t['search_numpy_vs_matmul']:.2f}× matmul", "no CUDA: the CPU backend")]


def part_cuda_test(a) -> list[tuple]:
    code, out = run_part([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs",
                          "tests/test_search.py::test_cuda_matches_cpu"], a.limits["cuda_test"])
    summary = next((ln for ln in reversed(out.splitlines()) if re.search(r"\b(passed|failed|skipped|error)", ln)), "")
    verdict = "passed" if " passed" in summary else "skipped" if "skipped" in summary else "FAILED"
    return [("cuda_test", "test_search.py::test_cuda_matches_cpu", verdict, "",
             summary.strip("= ")[:200] if verdict != "passed" else "")]


DETECTOR = r"""
import json, sys, time
from clipcurate.core import synth
from clipcurate.detector import ImageList, fit
n, size, steps, batch, device, preset = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], sys.argv[6]
images = [synth.make_image(i % len(synth.CLASSES), i, ("photo", "bench", "texture")[i % 3], size=size) for i in range(n)]
stamps = []
res = fit(ImageList(images), {"preset": preset, "image_size": size, "steps": steps, "batch_size": batch,
                              "workers": int(sys.argv[7]), "device": device, "checkpoint_every": 10**9},
          on_step=lambda step, loss: stamps.append(time.perf_counter()))
timed = stamps[2:] if len(stamps) > 3 else stamps
rate = batch * (len(timed) - 1) / (timed[-1] - timed[0]) if len(timed) > 1 else float("nan")
print("RESULT " + json.dumps({"pairs_per_s": rate, "steps": res.steps, "seconds": res.seconds, "images": n,
                               "size": size, "batch": batch, "preset": preset, "loss": [res.losses[0], res.losses[-1]]}))
"""


def part_detector(a) -> list[tuple]:
    if a.dry_run:
        args = ["96", "64", "5", "8", a.device, "tiny", "0"]
    else:
        args = ["4096", "128", "40", "256", a.device, "full", str(max(1, (os.cpu_count() or 2) - 2))]
    code, out = run_part([PY, "-c", DETECTOR, *args], a.limits["detector"])
    if code != 0:
        return _fail("detector", code, out)
    r = _json_line(out, "RESULT ")
    loss = r["loss"]
    first, last = (loss[0].get("loss"), loss[-1].get("loss")) if isinstance(loss[0], dict) else (loss[0], loss[-1])
    return [("detector", f"training, preset {r['preset']} at {r['size']} px, batch {r['batch']}",
             f"{r['pairs_per_s']:.0f} pairs/s", "", f"{r['steps']} steps in {r['seconds']:.1f} s (rate after step 2); "
             f"loss {first:.3f} → {last:.3f}")]


def part_train(a) -> list[tuple]:
    out_dir = Path(tempfile.mkdtemp(prefix="clipcurate-gpu-train-"))
    try:
        args = ["--small", "--device", "cpu", "--probe-batch", "0"] if a.dry_run else ["--samples", "4096", "--probe-batch", "0"]
        code, out = run_part([PY, "benchmarks/train_gpu.py", "--out", str(out_dir), *args], a.limits["train"])
        if code != 0 or not (out_dir / "train_gpu.json").exists():
            return _fail("train", code, out)
        r = json.loads((out_dir / "train_gpu.json").read_text())
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    return [("train", "stock open_clip_train, synthetic data", f"{r.get('baseline_samples_per_s', float('nan')):.0f} samples/s",
             "baseline", ""),
            ("train", "the train stage on curated webdataset shards", f"{r.get('train_samples_per_s', float('nan')):.0f} samples/s",
             f"{r.get('ratio_train_vs_synthetic', float('nan')):.2f}× synthetic",
             f"curate {r.get('curate_samples_per_s', 'n/a')} samples/s; loss {r.get('loss_first')} → {r.get('loss_last')}")]


def part_download(a) -> list[tuple]:
    code, _ = run_part([PY, "-c", "import img2dataset"], 60)
    if code != 0:
        return [("download", "clipcurate / img2dataset at 0 ms", "not run", "",
                 "img2dataset not installed (bash benchmarks/gpu.sh --fetch puts its wheels in .whl/)")]
    procs = str(max(2, (os.cpu_count() or 2) - 2))
    args = ["--quick", "--processes", procs] if a.dry_run else ["--n", "8000", "--samples-per-shard", "500", "--repeats", "1",
                                          "--latencies", "0", "--processes", procs]
    code, out = run_part([PY, "benchmarks/download.py", *args], a.limits["download"])
    if code != 0:
        return _fail("download", code, out)
    rows = []
    for m in re.finditer(r"== latency (\S+) ms.*?\nclipcurate +([0-9.]+).*?\nimg2dataset +([0-9.]+).*?\n"
                         r"ratio clipcurate / img2dataset: images/s ([0-9.]+)x, CPU per image ([0-9.]+)x, successes (\S+)",
                         out, re.S):
        lat, ours, stock, ratio, cpu, succ = m.groups()
        rows.append(("download", f"clipcurate vs stock img2dataset, {lat} ms, {procs} processes",
                     f"{float(ours):.0f} images/s", f"{ratio}× img2dataset ({float(stock):.0f}/s)",
                     f"CPU per image {cpu}×, successes {succ}"))
    return rows or _fail("download", code, out)


def part_ray(a) -> list[tuple]:
    code, _ = run_part([PY, "-c", "import ray"], 60)
    if code != 0:
        return [("ray", "Ray actors on the GPU", "not run", "", "ray not installed (its wheels exceed the 64 MiB a run carries)")]
    env = {"SHARDS": "2", "PER_SHARD": "16", "MODEL": "clipcurate-tiny", "OV_ROWS": "2000", "OV_BENCH": "200",
           "BACKEND": "numpy"} if a.dry_run else {}
    code, out = run_part([PY, "benchmarks/ray_gpu.py"], a.limits["ray"], env)
    if code != 0:
        return _fail("ray", code, out)
    lines = [ln for ln in out.splitlines() if ln.startswith(("embed", "overlap"))]
    same = ("same uids: True", "identical outputs: True")  # what ray_gpu.py prints when Ray's output is the local one
    return [("ray", ln.split(":")[0], "ok" if any(m in ln for m in same) else "FAILED", "outputs = local run", ln[:200])
            for ln in lines] or _fail("ray", code, out)


PARTS = {"embed": part_embed, "search": part_search, "cuda_test": part_cuda_test, "detector": part_detector,
         "train": part_train, "download": part_download, "ray": part_ray}
# Seconds each part may take on the GPU machine, and in a dry run. A part starts only when its
# whole limit fits in what is left of the budget: the first four (the figures the GPU run is for)
# always fit; train, download and ray run in the time the earlier parts did not use.
LIMITS = {"embed": 180, "search": 50, "cuda_test": 40, "detector": 50, "train": 100, "download": 70, "ray": 60}
DRY_LIMITS = {"embed": 60, "search": 30, "cuda_test": 30, "detector": 30, "train": 120, "download": 150, "ray": 180}
DRY_PARTS = ("embed", "search", "cuda_test", "detector")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes (a check that the script works)")
    ap.add_argument("--all", action="store_true", help="with --dry-run: also train, download and ray")
    ap.add_argument("--parts", default="", help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for all parts together")
    a = ap.parse_args()
    a.device = "cpu" if a.dry_run else "cuda"
    if a.dry_run and a.all:  # every part on a small CPU: give them the time their limits add up to
        a.budget = max(a.budget, float(sum(DRY_LIMITS.values())))
    a.limits = DRY_LIMITS if a.dry_run else LIMITS
    wanted = [p for p in a.parts.split(",") if p] or list(PARTS)
    if unknown := set(wanted) - set(PARTS):
        ap.error(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    if not a.dry_run:
        import torch

        if not torch.cuda.is_available():
            sys.exit("gpu: torch sees no CUDA device; use --dry-run on a CPU")
        card = f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, {os.cpu_count()} CPU cores"
    else:
        card = f"CPU dry run (tiny sizes), {os.cpu_count()} CPU cores"
    print(f"gpu: {card}; started {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC", flush=True)
    start, rows = time.monotonic(), []
    for name in wanted:
        left = a.budget - (time.monotonic() - start)
        if a.dry_run and not a.all and name not in DRY_PARTS:
            rows.append((name, "(all figures)", "not run", "", "dry run: --all runs it"))
            continue
        if left < a.limits[name]:
            rows.append((name, "(all figures)", "not run", "", f"budget: {left:.0f} s left, the part needs {a.limits[name]} s"))
            continue
        t = time.monotonic()
        try:
            got = PARTS[name](a)
        except Exception as exc:  # noqa: BLE001 - one part's surprise must not lose the table
            got = [(name, "FAILED", "", "", f"{exc.__class__.__name__}: {str(exc)[:200]}")]
        rows.extend(got)
        print(f"gpu: {name} done in {time.monotonic() - t:.0f} s: " + "; ".join(f"{r[1]} {r[2]}" for r in got), flush=True)
    print(f"\n## GPU figures — {card} — {time.monotonic() - start:.0f} s\n")
    print("| part | figure | value | vs baseline | note |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")
    failed = [r for r in rows if r[2] in ("FAILED", "TIMED OUT") or r[1] in ("FAILED", "TIMED OUT")]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
