"""Query expansion: the other copies of a benchmark image, found through the copies already found.

Popular images recur on the web, each copy edited its own way. The calibrated rule may take one
copy of a benchmark image and miss another whose edits moved it further from the original — yet
the two copies often stay close to each other. Image retrieval has long used this: re-query with
the results that were verified (Chum et al. 2007, "Total Recall", query expansion). Here:

1. every benchmark sample with a pair the calibrated rule decided ``overlap`` has *found copies*:
   the pool images of those pairs;
2. each found copy is compared, pool image against pool image with the same signals
   (:func:`clipcurate.overlap.signals.pool_pair_signals`), with the pool images of the sample's
   other candidate pairs (those the rule left to review or clean; degenerate pairs stay as they are);
3. a candidate the **same calibrated rule, at the same threshold**, takes as a copy of a found
   copy is decided ``overlap`` for the sample — unless the rule scores that pool image higher
   against another benchmark sample (a copy copies one image: a copy of a neighbouring benchmark
   image looks like a copy of this one's copies too) — with a reason that names the copy it
   matched; it is a found copy in turn, and step 2 repeats until nothing changes.

Nothing is tuned here: the rule and its threshold are the ones ``overlap calibrate`` chose, and only
pairs the stage already proposed for the sample are eligible, so a pool image is never tied to a
benchmark sample no signal ever put it near. What it costs: a found copy that is a false positive
can pull its own look-alikes in.
"""

from __future__ import annotations

import numpy as np

from clipcurate.core.console import log
from clipcurate.core.workspace import Workspace
from clipcurate.overlap.combined import Rule
from clipcurate.overlap.honest import row_features
from clipcurate.overlap.signals import pool_pair_signals
from clipcurate.overlap.verify import MAX_FEATURES

ELIGIBLE = ("review", "clean")  # decisions query expansion may turn into overlap


def expand(ws: Workspace, rows: list[dict], rule: Rule) -> int:
    """Decide ``overlap`` the candidates the calibrated ``rule`` takes as copies of a sample's found
    copies (module docstring); ``rows``: the stage's pairs, decided, changed in place. Returns the
    number of pairs it decided."""
    if rule.threshold is None:
        return 0
    by_sample: dict[tuple, list[dict]] = {}
    for r in rows:
        by_sample.setdefault((r["benchmark"], int(r["bench_index"])), []).append(r)
    # each pool image's best benchmark sample by the rule's score: the only one it may join
    score = rule.score(row_features(rows, list(rule.weights)))
    best: dict[str, float] = {}
    for r, z in zip(rows, score):
        best[r["pool_uid"]] = max(best.get(r["pool_uid"], -np.inf), float(z))
    own = {id(r) for r, z in zip(rows, score) if float(z) >= best[r["pool_uid"]]}
    found = {k: [r["pool_uid"] for r in v if r["decision"] == "overlap"] for k, v in by_sample.items()}
    found = {k: v for k, v in found.items() if v}
    scored: dict[tuple[str, str], bool] = {}
    queries = {k: list(v) for k, v in found.items()}  # the found copies not used as queries yet
    added = 0
    while queries:
        todo = []  # (sample, query uid, row) for every untried (found copy, candidate) pair
        for k, qs in queries.items():
            for r in by_sample[k]:
                if r["decision"] in ELIGIBLE and id(r) in own:
                    todo += [(k, q, r) for q in qs if q != r["pool_uid"] and (q, r["pool_uid"]) not in scored]
        pairs = sorted({(q, r["pool_uid"]) for _, q, r in todo})
        if pairs:
            sig = pool_pair_signals(ws, pairs, list(rule.weights), lambda row: could_take(rule, row))
            took = rule.predict(row_features(sig, list(rule.weights)))
            scored.update(zip(pairs, (bool(t) for t in took)))
        queries = {}
        for k, q, r in todo:
            if r["decision"] in ELIGIBLE and scored.get((q, r["pool_uid"])):
                r["decision"] = "overlap"
                r["reason"] = (f"query expansion: a copy of pool sample {q}, itself decided a copy of this benchmark "
                               f"sample, by the calibrated rule {rule.describe()}; {r['reason']}")
                queries.setdefault(k, []).append(r["pool_uid"])
                added += 1
    if found:
        log(f"overlap: query expansion decided {added} more pair(s) overlap: copies of the copies found for "
            f"{len(found)} benchmark sample(s), {len(scored)} pool-pool pairs considered")
    return added


def could_take(rule: Rule, row: dict) -> bool:
    """Whether the rule could take the pair whatever its keypoint fit gives: every rule is monotone
    in each feature, so its score with the fit at its best bounds the score from above (alignment
    1.0; inliers: four times the keypoints an image keeps, :data:`clipcurate.overlap.verify.MAX_FEATURES`,
    a margin for the ties OpenCV keeps). False: no fit can change the verdict; skip it."""
    best = dict(row, kp_inliers=4 * MAX_FEATURES, kp_ncc=1.0)
    return bool(rule.predict(row_features([best], list(rule.weights)))[0])
