"""benchmarks/gpu.sh cannot rot: its CPU dry run (tiny sizes) runs every part it runs on a GPU
except train, download and ray (those it lists as not run), and prints the one table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_script_dry_run_prints_the_table():
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPCURATE_")}
    env["PYTHON"] = sys.executable
    res = subprocess.run(["bash", "benchmarks/gpu.sh", "--dry-run"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    table = [line.split(" | ") for line in res.stdout.splitlines() if line.startswith("| ") and "---" not in line]
    rows = [[c.strip("| ") for c in r] for r in table[1:]]
    by_part: dict = {}
    for part, figure, value, *_ in rows:
        by_part.setdefault(part, []).append((figure, value))
    assert list(by_part) == ["embed", "search", "cuda_test", "detector", "train", "download", "ray"]
    # every figure of the parts that ran is a number with its unit
    for part in ("embed", "search", "detector"):
        for figure, value in by_part[part]:
            assert value.split()[0].rstrip("×").replace("e+", "").replace(".", "").isdigit(), (part, figure, value)
    embed = dict(by_part["embed"])
    assert {"model only (resident batch)", "end to end, images only, PIL decode",
            "end to end, images only, torchvision decode_jpeg on the device (nvJPEG on cuda)"} <= set(embed)
    assert [v for _, v in by_part["cuda_test"]] == ["skipped"]  # no CUDA here: pytest skips it, it ran
    assert all(v == "not run" for p in ("train", "download", "ray") for _, v in by_part[p])
