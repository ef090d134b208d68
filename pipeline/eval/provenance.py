"""Where a §5 table's numbers come from: how overlap was decided, and what produced the predictions.

- :func:`overlap_decisions` reads what the overlap stage left (``overlap/run.json``'s thresholds,
  ``pairs``'s automatic decisions, ``splits``'s ``decided_by``) and counts, per benchmark: the
  thresholds per signal, pairs by automatic decision, Overlap/Clean/unreviewed samples by what decided
  them (rule, human, demo reviewer, default), and the reviewed share of the review band.
- :func:`model_provenance` records the model, its checkpoint's hash, precision, device, prompt
  templates and class names, the code version, and the reproducibility settings (the training run's
  and this evaluation's).
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from clipcurate.core import manifest as mf
from clipcurate.core.io import read_json
from clipcurate.core.workspace import Workspace

REPO = Path(__file__).resolve().parents[2]


def overlap_decisions(ws: Workspace, names: list[str]) -> dict[str, dict]:
    """Per benchmark: thresholds per signal (overlap, review), pairs by automatic decision, samples
    by split and decider, and (band pairs decided in review, band pairs)."""
    run = ws.path("overlap", "run.json")
    ths = read_json(run).get("thresholds", {}) if run.is_file() else {}
    out = {n: {"thresholds": ths.get(n, {}), "pairs": {}, "samples": {}} for n in names}
    if mf.get("pairs").files(ws.root):
        t = mf.read_all("pairs", ws.root, columns=["benchmark", "decision"])
        for (b, d), c in Counter(zip(t["benchmark"].to_pylist(), t["decision"].to_pylist())).items():
            if b in out:
                out[b]["pairs"][d] = c
    if mf.get("splits").files(ws.root):
        t = mf.read_all("splits", ws.root)
        if "pending_pairs" in t.column_names:  # undecided review pairs an unreviewed sample waits on
            for b, n in zip(t["benchmark"].to_pylist(), t["pending_pairs"].to_pylist()):
                if b in out:
                    out[b]["pending_pairs"] = out[b].get("pending_pairs", 0) + int(n or 0)
        for (b, s, by), c in Counter(zip(t["benchmark"].to_pylist(), t["split"].to_pylist(),
                                         t["decided_by"].to_pylist())).items():
            if b in out:
                out[b]["samples"][f"{s} by {by}"] = c
    for n, (done, band) in reviewed_share(ws, names).items():
        out[n]["band_reviewed"], out[n]["band_pairs"] = done, band
    return out


def reviewed_share(ws: Workspace, names: list[str]) -> dict[str, tuple[int, int]]:
    """Per benchmark (band pairs decided in review, band pairs): the reviewed share of the band."""
    out = {n: (0, 0) for n in names}
    if not mf.get("pairs").files(ws.root):
        return out
    t = mf.read_all("pairs", ws.root, columns=["pair_id", "benchmark", "decision"])
    t = t.filter(pc.is_in(t["decision"], value_set=pa.array(["review", "degenerate"])))
    decided = _decided_pair_ids(ws)
    for n in names:
        ids = t.filter(pc.equal(t["benchmark"], n))["pair_id"].to_pylist()
        out[n] = (sum(1 for i in ids if i in decided), len(ids))
    return out


def _decided_pair_ids(ws: Workspace) -> set[str]:
    """pair ids with any decision in review/decisions.jsonl (the review log; torn lines skipped)."""
    p = ws.path("review", "decisions.jsonl")
    ids: set[str] = set()
    if not p.is_file():
        return ids
    for line in p.read_text("utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("pair_id"), str):
            ids.add(rec["pair_id"])
    return ids


def code_version() -> str:
    """The package version and, in a git checkout, the commit (``+dirty`` with local changes)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("clipcurate")
    except PackageNotFoundError:
        v = "unknown"
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", ""
    return f"{v} (git {sha}{'+dirty' if dirty else ''})" if sha else v
