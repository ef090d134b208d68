"""How much does the calibrated rule depend on the draw of planted copies and distractors?

``overlap calibrate`` plants copies and samples distractors from one seed, chooses the rule on one
half and reports it on the other. The interval it prints covers the held-apart half's sampling, not
the draw itself: another seed plants other copies, samples other distractors and can choose another
rule. This script reruns the calibration of a finished workspace under several seeds (nothing in
the workspace is written) and, for each seed's rule, counts what it would decide on the
workspace's own candidate pairs (``overlap/pairs.parquet``):

- the held-apart precision / recall the calibration reports;
- the pool samples the rule alone would put on the decontamination list (review decisions aside),
  then with query expansion (:mod:`clipcurate.overlap.expand`) as the stage runs it;
- with a demo world (``world/truth.parquet``): their precision and recall against the planted
  copies — the figure the acceptance of the demo is about, as it varies with the seed.

Usage::

    python benchmarks/calibration_stability.py WORKSPACE [--seeds 0 1 2 3 4]

The calibration options come from the workspace's ``pipeline.toml`` step ``overlap.calibrate``
when there is one (the demo writes it), then from the workspace config; ``--set KEY=VALUE``
overrides either.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import tomllib
from pathlib import Path

import pyarrow.parquet as pq

from clipcurate.core import manifest as mf
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.uid import pair_uid
from clipcurate.core.workspace import Workspace
import clipcurate.download.pool  # noqa: F401  (registers the pool manifest)
import clipcurate.overlap  # noqa: F401  (registers the pairs manifest)
from clipcurate.overlap import calibrate, combined as comb, honest
from clipcurate.overlap.expand import expand


def step_options(ws: Path) -> dict:
    p = ws / "pipeline.toml"
    if not p.is_file():
        return {}
    for step in tomllib.loads(p.read_text()).get("step", []):
        if step.get("run") == "overlap.calibrate":
            return {k: v for k, v in step.items() if k != "run"}
    return {}


def planted(ws: Path) -> set[str] | None:
    """Pool uids of the world's planted copies that downloaded, or None without a world."""
    t = ws / "world" / "truth.parquet"
    if not t.is_file():
        return None
    ok = {r["uid"] for f in sorted((ws / "pool" / "manifest").glob("*.parquet"))
          for r in pq.read_table(f, columns=["uid", "status"]).to_pylist() if r["status"] == "success"}
    return {pair_uid(r["url"], r["caption"]) for r in pq.read_table(t).to_pylist()} & ok


def decided(ws: Workspace, rule: comb.Rule, rows: list[dict]) -> tuple[set[str], set[str]]:
    """Pool uids of the pairs the rule alone takes, and with query expansion after it."""
    if rule.threshold is None:
        return set(), set()
    pred = rule.predict(honest.row_features(rows, list(rule.weights)))
    work = [dict(r, decision="overlap" if p else "degenerate" if r["decision"] == "degenerate" else "review",
                 reason="") for r, p in zip(rows, pred)]
    expand(ws, work, rule)
    return ({r["pool_uid"] for r, p in zip(rows, pred) if p},
            {r["pool_uid"] for r in work if r["decision"] == "overlap"})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workspace")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="calibration option (e.g. copies=400)")
    a = ap.parse_args()
    root = Path(a.workspace).resolve()
    ws = Workspace(root)
    opts = step_options(root)
    for kv in a.set:
        k, _, v = kv.partition("=")
        opts[k] = tomllib.loads(f"x = {v}")["x"] if v[:1].isdigit() or v in ("true", "false") else v
    rows = mf.read("pairs", root / "overlap" / "pairs.parquet").to_pylist()
    truth = planted(root)
    print(f"workspace {root}: {len(rows)} candidate pairs; calibration options {opts or 'from the config'}"
          + (f"; {len(truth)} planted copies in the pool" if truth is not None else ""), file=sys.stderr)
    header = ["seed", "rule", "held-apart P", "held-apart R", "rule-decided", "vs planted P / R",
              "with expansion", "vs planted P / R", "s"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    recalls, held_r = {"rule": [], "expansion": []}, []
    for seed in a.seeds:
        t0 = time.perf_counter()
        res = calibrate.run(ws, dict(opts, seed=seed), write=False)
        rule = comb.Rule.from_json(res["rule"])
        got, grown = decided(ws, rule, rows)
        c = res["combined"]
        cells = [str(seed), rule.describe() if len(rule.describe()) < 40 else rule.kind,
                 comb.fmt(c["precision"], c["precision_ci"]), comb.fmt(c["recall"], c["recall_ci"])]
        for name, s in (("rule", got), ("expansion", grown)):
            cells.append(str(len(s)))
            if truth is not None:
                tp = len(s & truth)
                cells.append((f"{tp / len(s):.3f}" if s else "—") + f" / {tp / len(truth):.3f}")
                recalls[name].append(tp / len(truth))
            else:
                cells.append("—")
        held_r.append(c["recall"] or 0.0)
        cells.append(f"{time.perf_counter() - t0:.0f}")
        print("| " + " | ".join(cells) + " |", flush=True)
    print(f"held-apart recall over {len(a.seeds)} seeds: median {statistics.median(held_r):.3f}, "
          f"range {min(held_r):.3f}-{max(held_r):.3f}")
    for name, r in recalls.items():
        if r:
            print(f"{name}: recall vs planted copies: median {statistics.median(r):.3f}, "
                  f"range {min(r):.3f}-{max(r):.3f}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ClipcurateError as exc:  # a missing or unfinished workspace: one line, exit 1
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
