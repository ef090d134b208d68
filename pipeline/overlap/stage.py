"""Stage `overlap`: which pool samples are near-copies of benchmark samples (CLIP §5, App. C).

For every evaluation set, CLIP split the benchmark into **Overlap** (samples with a near-duplicate
in the training data), **Clean** (the rest) and **All**, and compared accuracy on the two. This
stage does that split, and produces the list of pool samples to drop before training:

1. **Search** (:mod:`clipcurate.overlap.search`, run over the pool by
   :mod:`clipcurate.overlap.searchrun`): stream the pool embedding shards once against all
   benchmark embeddings; keep (a) the exact top-k pool neighbours of every benchmark sample and (b)
   every pair whose CLIP cosine passes the benchmark's ``low`` (review) threshold. The search state
   is checkpointed (``overlap/search/``), so a killed run resumes where it stopped, and a rerun with
   the same inputs does not search again.
2. **Decide** each pair with the signals it has (:mod:`clipcurate.overlap.rules`; the signals
   beyond CLIP come from :mod:`clipcurate.overlap.signals`): ``overlap`` past ``high``, ``review``
   in the band, ``clean`` below; a pair whose benchmark or pool image is near-constant or tiny is
   ``degenerate`` instead (CLIP's Kinetics-700 black frames) and never counts as overlap silently.
3. **Split** (:func:`clipcurate.overlap.splits.refresh_splits`): a benchmark sample is Overlap when
   one of its pairs is an overlap — or a human confirmed it (``review/decisions.jsonl``; human
   verdicts override the automatic ones both ways); Unreviewed while band pairs it depends on are
   undecided; else Clean. Their pool uids make the decontamination list (pending band pairs too,
   with ``unreviewed_pool = "drop"``, the default).
4. **Diagnose**: per benchmark, class distribution Overlap vs Clean (chi-square) and simple image
   statistics, because Overlap and Clean can differ in distribution (CLIP's second caveat).

The stage contract (:class:`clipcurate.core.stage.Stage`): the shards are the pool shards, each
folded into the running top-k by :meth:`OverlapStage.run_shard`; :meth:`OverlapStage.finish` writes
the outputs (steps 2-4); the runner writes ``_plan.json``, the ``{shard}.done`` markers and, last,
``_SUCCESS``.

Outputs (manifests, :mod:`clipcurate.overlap.schema`): ``pairs``, ``neighbors``, ``splits``,
``decontam``, ``review_queue`` under ``overlap/``, plus ``overlap/diagnostics.json``.
"""

from __future__ import annotations

import dataclasses

from clipcurate.core import config
from clipcurate.core.console import log, warn
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.stage import Stage, StageResult, check_upstream
from clipcurate.core.workspace import Workspace
from clipcurate.overlap.inputs import Bench, PoolShard, bench_names, load_bench, npy_shape, pick_tag, pool_shards
from clipcurate.overlap.pairs import write_outputs
from clipcurate.overlap.policy import decision_policy, flag_implausible
from clipcurate.overlap.rules import thresholds_for
from clipcurate.overlap.schema import FOLDER, options, publish_outputs
from clipcurate.overlap.searchrun import SearchRun
from clipcurate.overlap.splits import refresh_splits


@dataclasses.dataclass
class Result:
    tag: str
    search: dict
    per_benchmark: list[dict]
    files: dict


class OverlapStage(Stage):
    """Search (one shard at a time), then decide, split and diagnose in :meth:`finish`."""

    name = "overlap"

    def __init__(self, ws: Workspace, opts: dict, tag: str, benches: list[Bench], shards: list[PoolShard],
                 ths: dict, srun: SearchRun, policy=None):
        # `force` is the SearchRun's: a forced or incompatible search is redone from scratch there.
        super().__init__(ws.root / FOLDER)
        self.reads = reads(tag)  # the runner checks they are complete and current
        self.ws, self.opts, self.tag, self.benches, self.pool, self.ths, self.srun = \
            ws, opts, tag, benches, shards, ths, srun
        self.policy = policy
        self.result: Result | None = None

    @property
    def description(self) -> str:
        return f"overlap search ({self.srun.searcher.backend})"

    def shards(self) -> list[str]:
        return [s.name for s in self.pool]

    def run_shard(self, shard: str) -> dict:
        return self.srun.fold(shard)

    def finish(self, result: StageResult) -> None:
        top, pairs, stats = self.srun.close()
        # every output into a new generation, published as one set at the end of the block: a kill
        # before that leaves the previous set whole (clipcurate.core.io.publish)
        with publish_outputs(self.ws) as out:
            files = write_outputs(self.ws, self.opts, self.tag, self.benches, self.pool, self.srun.offsets,
                                  self.srun.q_off, top, pairs, self.ths, out, self.policy)
            per = refresh_splits(self.ws, self.opts, out)
            flag_implausible(out, per)
        self.result = Result(self.tag, stats, per, files)


def reads(tag: str) -> tuple[str, ...]:
    """The folders the stage reads: the pool and benchmark embeddings of one model."""
    return (f"embed/{tag}/pool", f"embed/{tag}/bench")


def _inputs(ws: Workspace, opts: dict) -> tuple[str, list[Bench], list[PoolShard]]:
    """The model tag, its embedded benchmarks and its finished pool shards, checked."""
    tag = pick_tag(ws, opts["model_tag"] or None)
    names, unfinished_b = bench_names(ws, tag)
    if unfinished_b:
        warn(f"overlap: benchmark(s) {', '.join(unfinished_b)} not finished embedding (no bench/NAME.done) and "
             f"left out; rerun `clipcurate embed`")
    if not names:
        raise MissingUpstream(f"benchmark embeddings (embed/{tag}/bench/*/image.npy)", "clipcurate embed")
    benches = [load_bench(ws, tag, n) for n in names]
    dims = {b.name: b.vectors.shape[1] for b in benches}
    if len(set(dims.values())) > 1:
        raise ClipcurateError(f"benchmark embeddings of different dimensions {dims}; rerun `clipcurate embed --force`")
    shards, unfinished = pool_shards(ws, tag)
    if unfinished:
        warn(f"overlap: {unfinished} pool shard(s) under embed/{tag}/pool are not finished (no .done) and are "
             f"left out; rerun `clipcurate embed` then `clipcurate overlap`")
    if not shards:
        raise MissingUpstream(f"pool embeddings (embed/{tag}/pool/*.npy)", "clipcurate embed")
    d = benches[0].vectors.shape[1]
    for s in shards:  # the .npy headers only: a wrong shard fails before any search
        shape = npy_shape(s.npy)
        if len(shape) != 2 or shape[1] != d:
            raise ClipcurateError(
                f"{s.npy}: pool vectors of dimension {shape[-1] if shape else '?'} but benchmark vectors of {d}; "
                f"embed both with the same model (`clipcurate embed --force`)")
    return tag, benches, shards


def run(ws: Workspace, overrides: dict | None = None, force: bool = False,
        cfg: config.Config | None = None, executor=None) -> Result:
    """Search, decide, split, diagnose. ``overrides`` are the [overlap] options given on the CLI;
    ``executor``: where the pool shards are searched (``--executor ray``: runs of shards on Ray tasks)."""
    ws.require()
    opts = options(ws, overrides, cfg)
    check_upstream(ws.root, reads(pick_tag(ws, opts["model_tag"] or None)), "overlap")
    tag, benches, shards = _inputs(ws, opts)
    ths = {b.name: thresholds_for(opts, b.name) for b in benches}
    policy = decision_policy(ws, opts, tag, overrides)
    log(f"overlap: overlap decided by {policy.source}")
    floors = {b.name: ths[b.name]["clip"][1] for b in benches}
    log(f"overlap: {len(benches)} benchmark(s), {sum(len(b.vectors) for b in benches)} samples × "
        f"{sum(s.rows for s in shards)} pool samples in {len(shards)} shard(s), model {tag}")
    srun = SearchRun(ws, tag, benches, shards, int(opts["k"]), floors, opts["backend"],
                     int(opts["block_elems"]), float(opts["checkpoint_s"]), force)
    srun.open()
    if executor is not None and executor.kind != "local":  # --executor ray: runs of pool shards as Ray tasks
        srun.search_on_ray(executor)
    stage = OverlapStage(ws, opts, tag, benches, shards, ths, srun, policy)
    stage.run()
    return stage.result
