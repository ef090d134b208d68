"""The duplicate signals of a pair, their thresholds and the rules that turn them into a decision.

Every (pool, benchmark) pair carries up to six signals (columns of ``pairs.parquet``): the CLIP
cosine, the copy detector's cosine, the pHash and dHash Hamming distances, the keypoint inliers and
the caption similarity. Each signal votes on its own against two thresholds of its benchmark:

    value past ``overlap``            → "overlap"
    value between ``review`` and it   → "review"   (the band a human looks at)
    value short of ``review``         → "clean"

(for a distance "past" means "at most"). A signal that was not computed does not vote. The votes
are then combined by one of two documented rules: :func:`detector_rule` once the copy detector
scored the pair, else :func:`combine` — where hashes, keypoints and caption text may confirm a copy
but never veto one (:data:`CONFIRM_ONLY`). With CLIP alone this is the plain high/low rule of CLIP's
App. C.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping

import numpy as np

from clipcurate.core.errors import ClipcurateError
from clipcurate.overlap.combined import as_feature

DECISIONS = ("overlap", "review", "clean", "degenerate")


@dataclasses.dataclass(frozen=True)
class Signal:
    """A per-pair duplicate signal: its ``pairs`` column and which direction means "duplicate"."""

    name: str
    column: str
    higher_is_better: bool
    overlap: float  # default threshold for an overlap vote
    review: float  # default threshold for a review vote
    doc: str

    def vote(self, value, overlap: float, review: float) -> str | None:
        """``overlap`` / ``review`` / ``clean`` for one value (None when not computed)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if self.higher_is_better:
            return "overlap" if value >= overlap else "review" if value >= review else "clean"
        return "overlap" if value <= overlap else "review" if value <= review else "clean"

    def passes(self, values: np.ndarray, threshold: float) -> np.ndarray:
        return values >= threshold if self.higher_is_better else values <= threshold


SIGNALS: dict[str, Signal] = {
    "clip": Signal("clip", "score_clip", True, 0.95, 0.85, "CLIP image embedding cosine"),
    "detector": Signal("detector", "score_detector", True, 0.9, 0.7, "copy-detector cosine (App. C)"),
    "phash": Signal("phash", "phash_dist", False, 4, 10, "pHash Hamming distance"),
    "dhash": Signal("dhash", "dhash_dist", False, 4, 10, "dHash Hamming distance"),
    "keypoints": Signal("keypoints", "kp_inliers", True, 40, 15, "keypoint RANSAC inliers"),
    "text": Signal("text", "text_sim", True, 0.9, 0.6, "caption/label text similarity"),
    # 31 of 256 bits is Meta's own PDQ match threshold
    "pdq": Signal("pdq", "pdq_dist", False, 31, 90, "PDQ Hamming distance (0-256), smallest over mirror / "
                                                    "border-trimmed variants (clipcurate.overlap.verify)"),
    "kp_ncc": Signal("kp_ncc", "kp_ncc", True, 0.9, 0.6, "correlation after aligning the pair by its guarded "
                                                         "keypoint fit (clipcurate.overlap.verify)"),
}

# Signals whose "clean" vote is no evidence of a clean pair (they miss heavy copies by design).
CONFIRM_ONLY = ("phash", "dhash", "keypoints", "text", "pdq", "kp_ncc")


def combine(votes: list[str]) -> str:
    """The combination rule for the signals a pair has (None votes are left out):

    - no signal says ``clean`` and at least one says ``overlap`` → ``overlap``;
    - every signal says ``clean`` → ``clean``;
    - otherwise (all in the band, or the signals disagree) → ``review`` — a human decides.

    With CLIP alone this is the plain high/low rule.
    """
    if not votes:
        return "clean"
    if "overlap" in votes and "clean" not in votes:
        return "overlap"
    if all(v == "clean" for v in votes):
        return "clean"
    return "review"


def detector_rule(votes: Mapping[str, str | None]) -> str:
    """The combination rule once the copy detector has scored a pair (docs/detector.md).

    Signals are not peers: CLIP is semantic (it says *clean* on copies it cannot see and *overlap*
    on two photos of the same species — App. C), the detector is the copy authority, pHash / dHash
    and keypoints are exact but narrow, and keypoints are fooled by repetitive patterns. So:

    1. detector ``overlap`` → overlap; a pHash, PDQ, alignment (``kp_ncc`` of a keypoint fit; an
       ECC alignment never votes) or caption-text ``overlap`` (near-identical file, aligned copy or
       caption) → overlap on its own;
    2. detector in its review band → overlap when an exact signal confirms it (keypoints or pHash at
       least in their review band), else review;
    3. detector ``clean``: review when keypoints or CLIP still say ``overlap`` (a human looks at what
       the detector might have missed), else clean.
    """
    det = votes.get("detector")
    if det == "overlap" or any(votes.get(k) == "overlap" for k in ("phash", "pdq", "text", "kp_ncc")):
        return "overlap"
    if det == "review":
        if votes.get("keypoints") in ("overlap", "review") or votes.get("phash") in ("overlap", "review"):
            return "overlap"
        return "review"
    if votes.get("keypoints") == "overlap" or votes.get("clip") == "overlap":
        return "review"
    return "clean"


def thresholds_for(cfg: dict, benchmark: str) -> dict[str, tuple[float, float]]:
    """signal → (overlap, review) thresholds for one benchmark (config: per benchmark > defaults)."""
    per = (cfg.get("thresholds") or {}).get(benchmark, {}) or {}
    defaults = cfg.get("signal_thresholds") or {}
    for where, keys, known in ((f"thresholds.{benchmark}", per, {"high", "low", *SIGNALS}),
                               ("signal_thresholds", defaults, set(SIGNALS))):
        bad = sorted(set(keys) - known)
        if bad:
            raise ClipcurateError(f"[overlap] {where}: unknown key {bad[0]!r}; known: {', '.join(sorted(known))}")
    out = {}
    for name, sig in SIGNALS.items():
        if name == "clip":
            hi = float(per.get("high", cfg["high"]))
            lo = float(per.get("low", cfg["low"]))
        else:
            d = {**(defaults.get(name) or {}), **(per.get(name) or {})}
            hi, lo = float(d.get("overlap", sig.overlap)), float(d.get("review", sig.review))
        if (sig.higher_is_better and lo > hi) or (not sig.higher_is_better and lo < hi):
            raise ClipcurateError(
                f"[overlap] thresholds for {benchmark!r}: {name} review threshold {lo} is past its overlap "
                f"threshold {hi}; the review band must lie between clean and overlap")
        out[name] = (hi, lo)
    return out


def decide(row: dict, th: dict[str, tuple[float, float]], rule=None, no_decide: frozenset = frozenset()
           ) -> tuple[str, str]:
    """(decision, reason) for one pair from its signal columns (before the degenerate check).

    ``rule``: the calibrated rule (:class:`clipcurate.overlap.combined.Rule`, from ``overlap
    calibrate``): it alone decides ``overlap``; a pair it does not take goes to review when any
    signal votes overlap or review at its thresholds, else it is clean. ``no_decide``: signals
    known to be no copy detector (a random-init CLIP): their ``overlap`` vote counts as ``review``."""
    votes, why, named, capped = [], [], {}, False
    for name, sig in SIGNALS.items():
        v = row.get(sig.column)
        if name == "kp_ncc" and not row.get("kp_inliers"):
            # aligned by ECC, not by a keypoint fit: a look-alike drawing or texture can correlate
            # highly, so that score is only a feature of the calibrated rule, never a vote
            continue
        hi, lo = th[name]
        vote = sig.vote(v, hi, lo)
        if vote is None:
            continue
        votes.append(vote)
        named[name] = vote
        op = (">=" if vote == "overlap" else "in band" if vote == "review" else "<") if sig.higher_is_better else \
             ("<=" if vote == "overlap" else "in band" if vote == "review" else ">")
        ref = hi if vote == "overlap" else f"[{lo}, {hi})" if vote == "review" else lo
        if vote == "review" and not sig.higher_is_better:
            ref = f"({hi}, {lo}]"
        val = f"{v:.3f}" if isinstance(v, float) else str(v)
        why.append(f"{name} {val} {op} {ref}")
        if vote == "overlap" and name in no_decide:
            named[name] = votes[-1] = "review"
            why[-1] += " (no copy detector: review at most)"
            capped = True
    if rule is not None:
        return _decide_by_rule(row, rule, named, why)
    if named.get("detector") is not None:  # the copy detector scored it: its rule (docs/detector.md)
        decision = detector_rule(named)
    else:
        # Hashes, keypoints and caption text can confirm a copy but never veto one: a heavy App. C
        # copy has a far pHash and few inliers (CONFIRM_ONLY).
        decision = combine([v for n, v in named.items() if not (v == "clean" and n in CONFIRM_ONLY)])
    if capped and decision == "clean":  # a capped overlap vote still asks a human
        decision = "review"
    return decision, "; ".join(why) or "no signal"


def _decide_by_rule(row: dict, rule, named: dict, why: list[str]) -> tuple[str, str]:
    """The calibrated rule decides overlap; the signals' own votes can only send a pair to review."""
    feats = {}
    for k in rule.weights:
        v = row.get(SIGNALS[k].column) if k in SIGNALS else None
        feats[k] = _feature(k, np.nan if v is None else float(v))
    if rule.threshold is not None and bool(rule.predict(feats)[0]):
        return "overlap", f"calibrated rule {rule.describe()}; " + "; ".join(why)
    if any(v in ("overlap", "review") for v in named.values()):
        return "review", "calibrated rule not met; " + "; ".join(why)
    return "clean", "calibrated rule not met; " + ("; ".join(why) or "no signal")


def _feature(name: str, value: float) -> np.ndarray:
    return as_feature(name, np.array([value]))
