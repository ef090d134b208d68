"""`overlap refresh`: the current thresholds and decisions applied to the stored pairs, no search.

The search is the expensive step; what follows it is cheap and depends only on settings. So a
refresh takes ``pairs.parquet`` (every pair the search kept, with all its signals) and:

1. checks that the stored pairs can answer the current settings — a lower CLIP ``low`` than the
   search floor they were kept with, another ``k`` or another model need pairs the search never
   kept: then it refuses, naming ``clipcurate overlap`` (which searches again);
2. re-decides every stored pair with the current thresholds (the same rule and degenerate check
   as the search run, :func:`clipcurate.overlap.pairs.decide_pairs`), and rewrites
   ``pairs.parquet``, ``review_queue.parquet`` and the thresholds in ``run.json``;
3. recomputes splits, decontamination list and diagnostics from the pairs and the review decisions
   (:func:`clipcurate.overlap.splits.refresh_splits`).

It returns what it reused and what it recomputed, which the CLI prints.

``run.json`` keeps ``floors``: the CLIP ``low`` each benchmark's pairs were searched with. Raising
``low`` later leaves the pairs below it in ``pairs.parquet``, decided ``clean`` by the new
threshold; lowering it below the floor is what a refresh cannot do.
"""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

from clipcurate.core import manifest as mf
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.io import write_json
from clipcurate.core.workspace import Workspace
from clipcurate.overlap.pairs import decide_pairs, write_review_queue
from clipcurate.overlap.policy import decision_policy, flag_implausible
from clipcurate.overlap.rules import thresholds_for
from clipcurate.overlap.schema import FOLDER, publish_outputs
from clipcurate.overlap.splits import refresh_splits


@dataclasses.dataclass
class Refreshed:
    per_benchmark: list[dict]
    reused: list[str]
    recomputed: list[str]


def _as_lists(ths: dict) -> dict:
    return {b: {s: [float(x) for x in v] for s, v in t.items()} for b, t in ths.items()}


def _check(run: dict, opts: dict, new: dict, floors: dict) -> None:
    """Refuse, naming the command that will do it, when the stored pairs cannot answer."""
    redo = "run `clipcurate overlap` (it searches again)"
    if opts.get("model_tag") and opts["model_tag"] != run.get("model_tag"):
        raise ClipcurateError(f"overlap refresh: model_tag {opts['model_tag']!r} but the stored pairs were searched "
                              f"with {run.get('model_tag')!r}; {redo}")
    if int(opts["k"]) != int(run.get("k", opts["k"])):
        raise ClipcurateError(f"overlap refresh: k = {opts['k']} but the stored neighbours are the top {run['k']}; "
                              f"{redo}")
    for b, th in new.items():
        low, floor = th["clip"][1], floors.get(b)
        if floor is not None and low < floor - 1e-9:
            raise ClipcurateError(
                f"overlap refresh: {b}: CLIP low {low} ([overlap] in clipcurate.toml) is below the search floor "
                f"{floor} the stored pairs were kept with, so the pairs between them were never kept; set "
                f"[overlap] thresholds.{b}.low to {floor} or more to refresh them, or {redo}")


def refresh(ws: Workspace, opts: dict) -> Refreshed:
    """Re-apply the current thresholds and the review decisions to the stored pairs (no search)."""
    folder = ws.root / FOLDER
    run_p = folder / "run.json"
    for p in (run_p, folder / "pairs.parquet", folder / "neighbors.parquet"):
        if not p.is_file():
            raise MissingUpstream(f"overlap outputs ({p})", "clipcurate overlap")
    run = json.loads(run_p.read_text())
    benches = list(run.get("benchmarks") or [])
    new = {b: thresholds_for(opts, b) for b in benches}
    old = run.get("thresholds") or {}
    floors = run.get("floors") or {b: float(t["clip"][1]) for b, t in old.items()}
    _check(run, opts, new, floors)
    reused = [f"the search and the pairs' signals (model {run.get('model_tag')}, top-{run.get('k')} neighbours)"]
    pairs = mf.read("pairs", folder / "pairs.parquet").to_pylist()
    before = {r["pair_id"]: r["decision"] for r in pairs}
    # every stored pair again through the rule and the degenerate check (their options may have
    # changed too); decide_pairs needs only each benchmark's name
    policy = decision_policy(ws, opts, run.get("model_tag") or "")  # the calibrated rule, as the search run
    decide_pairs(ws, pairs, [SimpleNamespace(name=b) for b in benches], opts, new, policy)
    changed = sum(before[r["pair_id"]] != r["decision"] for r in pairs)
    # the new pairs, queue, run.json, splits, decontam list and diagnostics become visible together
    # (one published generation, as the search publishes them): a kill leaves the old set whole
    with publish_outputs(ws, keep=("neighbors.parquet",)) as gen:
        mf.write("pairs", pairs, gen / "pairs.parquet")
        n_queue = write_review_queue(gen, pairs)
        write_json(gen / "run.json", {**run, "thresholds": _as_lists(new), "floors": floors,
                                      "decided_by": policy.source})
        per = refresh_splits(ws, opts, gen)
        flag_implausible(gen, per)
    moved = "thresholds unchanged" if _as_lists(new) == _as_lists(old) else "thresholds changed"
    recomputed = [f"the decisions of {len(pairs)} stored pair(s) with the current thresholds ({moved}, "
                  f"{changed} decision(s) changed), the review queue ({n_queue} pairs)"]
    recomputed.append("splits, decontamination list and diagnostics from the pairs and the review decisions")
    return Refreshed(per, reused, recomputed)
