"""Which rule decides ``overlap``, and a check that the result is plausible.

**The rule.** ``[overlap] calibration`` says where the decision comes from:

- ``auto`` (default): the rule ``overlap calibrate`` chose and measured on held-apart copies
  (``overlap/calibration/thresholds.json``) decides overlap when it exists — from the CLI as from a
  pipeline file. An explicit CLIP threshold (``--high``) or explicit per-signal thresholds given
  for this run override it, and the run says so;
- ``on``: the calibrated rule must exist (an error names the command that makes it);
- ``off``: the per-signal thresholds and their combination rules (:mod:`clipcurate.overlap.rules`).

Under the calibrated rule only the signals that reached the target precision take part; the others
can still send pairs to review. Without it, a signal known to be no copy detector — the CLIP
embeddings of a randomly initialised model — may send pairs to review but never decides overlap.

**Plausibility.** When more than half of a benchmark's samples come out Overlap, the result is
almost surely a threshold problem (a random-init CLIP puts every cosine above 0.95), not a
contaminated benchmark: the run warns, and ``overlap/diagnostics.json`` gets an ``implausible``
entry per such benchmark.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from clipcurate.core.console import log, warn
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.io import read_json, write_json
from clipcurate.core.workspace import Workspace
from clipcurate.overlap.calibrate import FOLDER as CAL_FOLDER
from clipcurate.overlap.calibrate import embed_random, load_rule
from clipcurate.overlap.combined import Rule

MODES = ("auto", "on", "off")


@dataclasses.dataclass
class Policy:
    rule: Rule | None  # the calibrated rule, when it decides
    no_decide: frozenset  # signals whose overlap vote counts as review
    source: str  # one line: what decides


def explicit_thresholds(overrides: dict | None) -> list[str]:
    """The threshold options given explicitly for this run (CLI or pipeline step)."""
    o = overrides or {}
    return [k for k in ("high", "thresholds", "signal_thresholds") if o.get(k) not in (None, {}, "")]


def decision_policy(ws: Workspace, opts: dict, tag: str, overrides: dict | None = None) -> Policy:
    mode = str(opts.get("calibration", "auto"))
    if mode not in MODES:
        raise ClipcurateError(f"[overlap] calibration = {mode!r}: use one of {', '.join(MODES)}")
    path = ws.root / CAL_FOLDER / "thresholds.json"
    explicit = explicit_thresholds(overrides)
    rule = load_rule(ws) if mode != "off" else None
    if mode == "on" and rule is None:
        raise ClipcurateError(f"{path} not found: run `clipcurate overlap calibrate` first (or set calibration = auto)")
    if rule is not None and mode == "auto" and explicit:
        log(f"overlap: explicit {', '.join(explicit)} given: the calibrated rule of {path} is not used")
        rule = None
    random_clip = embed_random(ws, tag)
    if rule is not None:
        src = read_json(path)
        c = src.get("combined") or {}
        figs = (f" (held-apart precision {c['precision']:.3f}, recall {c['recall']:.3f})"
                if c.get("precision") is not None and c.get("recall") is not None else "")
        return Policy(rule, frozenset(), f"calibrated rule {rule.describe()}{figs}")
    no = frozenset({"clip"}) if random_clip else frozenset()
    return Policy(None, no, "per-signal thresholds" + (" (random-init CLIP: review at most)" if no else ""))


def flag_implausible(out: Path, per_benchmark: list[dict]) -> dict[str, str]:
    """Warn about, and record in ``out``/diagnostics.json (the generation being published),
    benchmarks whose split says more about the settings than about the pool: more than half of the
    samples Overlap, or more than half left unreviewed (the review band holds most of the benchmark:
    a model that is no copy detector, such as a random-init CLIP, or a band set too wide)."""
    flags = {}
    for r in per_benchmark:
        n, k = int(r.get("n") or 0), int(r.get("n_overlap") or 0)
        u, pending = int(r.get("n_unreviewed") or 0), int(r.get("pending_pairs") or 0)
        msgs = []
        if n and k > n / 2:
            msgs.append(f"{k} of {n} samples Overlap: implausible for a real benchmark; check the "
                        f"thresholds (`clipcurate overlap calibrate`, then `clipcurate overlap`)")
        if n and u > n / 2:
            msgs.append(f"{u} of {n} samples unreviewed ({pending} pending pairs): the review band holds most of "
                        f"the benchmark; calibrate (`clipcurate overlap calibrate`) or narrow [overlap] low/high, "
                        f"then `clipcurate overlap refresh`")
        if msgs:
            flags[r["benchmark"]] = "; ".join(msgs)
    if flags:
        for b, msg in flags.items():
            warn(f"overlap: {b}: {msg}")
        p = out / "diagnostics.json"
        d = read_json(p) if p.is_file() else {}
        d["implausible"] = flags
        write_json(p, d)
    return flags
