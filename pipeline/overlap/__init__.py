"""Stage ``overlap``: which pool samples are near-copies of benchmark samples (CLIP §5, App. C).

The public API (what the CLI, ``clipcurate run`` and other stages call)::

    from clipcurate import overlap

    res = overlap.run(ws, {"k": 10}, executor=ex)      # search, decide, split, diagnose
    overlap.refresh(ws, opts)                          # `overlap refresh`: current thresholds, no search
    overlap.refresh_splits(ws)                         # splits + decontam again from new decisions
    overlap.refresh_after_review(ws)                   # the same, as the review screen wants it
    overlap.split_bounds({i: "unreviewed", ...})       # §5 bounds: unreviewed as overlap / as clean
    overlap.run_calibration(ws, {"copies": 200})       # `overlap calibrate`: rule chosen on half, measured on half
    overlap.decision_policy(ws, opts, tag)             # which rule decides overlap (calibrated or thresholds)
    overlap.compute_hashes(ws, executor=ex)            # `detector hashes`: the pHash/dHash cache
    opts = overlap.options(ws)                         # the [overlap] options
    overlap.thresholds_for(opts, "cifar10")            # signal -> (overlap, review) thresholds
    overlap.SIGNALS["clip"].higher_is_better           # the signals and their columns

Inside: ``schema`` (manifests, options), ``inputs`` (reading embed/), ``search`` (the exact
streaming search), ``searchrun`` (the checkpointed pool pass), ``rules`` (votes and decisions),
``signals`` + ``hashes`` + ``keypoints`` + ``captions`` (the signals beyond CLIP), ``images`` (the
degenerate check), ``pairs`` (the output tables), ``splits`` (Overlap / Clean, decontamination,
diagnostics), ``stage`` (the stage itself) and ``calibrate``.
"""

# Registration order as the stage list has it: the hashes (manifest and status entry), then
# overlap's manifests, [overlap] options and SQL reports (schema) before anything imports review,
# so that `clipcurate sql` lists overlap's reports before review's.
from clipcurate.overlap.hashes import HashStage, compute_hashes, load_hashes
from clipcurate.overlap.schema import FOLDER, options
from clipcurate.overlap.rules import CONFIRM_ONLY, DECISIONS, SIGNALS, Signal, combine, decide, detector_rule, \
    thresholds_for
from clipcurate.overlap.splits import SPLITS, refresh_after_review, refresh_splits, split_bounds
from clipcurate.overlap.stage import OverlapStage, Result, run
from clipcurate.overlap.refresh import Refreshed, refresh
from clipcurate.overlap.calibrate import run as run_calibration
from clipcurate.overlap.policy import Policy, decision_policy, flag_implausible

__all__ = [
    "CONFIRM_ONLY", "DECISIONS", "FOLDER", "HashStage", "OverlapStage", "Policy", "Result", "SIGNALS", "Signal",
    "combine", "compute_hashes", "decide", "decision_policy", "detector_rule", "flag_implausible", "load_hashes",
    "options", "refresh", "Refreshed", "refresh_after_review", "refresh_splits", "run", "run_calibration", "SPLITS",
    "split_bounds", "thresholds_for",
]
