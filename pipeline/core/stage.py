"""The stage contract (after datatrove, smaller) and the one runner that carries it out.

A stage is a list of shards and what to do with one of them::

    class Download(Stage):
        name = "download"                 # Download(folder, force=False): its outputs and markers live in folder
        description = "download shards"  # the progress bar's label (default: name)

        def shards(self):                 # what to do: shard names, in order (unsharded stages: one shard)
            return ["00000", "00001"]

        def setup(self):                  # optional: once per copy of the stage that runs shards (load a model)
            ...

        def run_shard(self, shard):       # do one; write its outputs atomically; return counts for its marker
            ...

        def run_batch(self, shards):      # optional: several shards at once in this process, yielding
            ...                           # (shard, counts) as each one's outputs are in place

        def finish(self, result):         # optional: once every shard is done (merge per-shard outputs)
            ...

    Download(folder).run()                        # in this process
    Download(folder).run(get_executor("ray"))     # shards on Ray workers (clipcurate.core.executor)

Stages never write the bookkeeping files themselves; :func:`run_stage` — the one runner — does:

0. refuses to start while a folder the stage ``reads`` is partial or out of date (:func:`check_upstream`);
1. makes the folder, removes the temp files of a killed run, asks ``shards()``, and with ``force``
   deletes every marker and ``_SUCCESS``; then writes the plan ``_plan.json`` (what ``status`` counts);
2. skips every shard whose marker ``<shard>.done`` exists; if any shard is left, deletes ``_SUCCESS``;
3. runs the rest where the executor says: in this process through ``run_batch`` (by default a loop
   over ``run_shard``), or one ``run_shard`` per Ray task or actor. Each shard's marker is written
   right after its outputs, where the shard ran — so a kill -9 at any moment (of a worker or of
   the driver) leaves either a finished shard (data + marker) or an unfinished one the rerun redoes;
4. sums the numbers in every marker into the result, calls ``finish``, and writes ``_SUCCESS`` last
   (holding the fingerprints of what the stage read), so ``status`` can tell done / partial /
   missing and a later stage can tell whether this one is current; then refreshes the workspace's
   ``clipcurate.duckdb``.

:func:`map_shards` is the same shard loop for a plain function (no plan, no ``_SUCCESS``): what
``Executor.map_shards`` runs. The executors decide only *where* a shard runs; everything about
markers is here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from clipcurate.core.console import log, progress, set_quiet
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.io import CURRENT, clean_temp, fault_point, read_json, write_json, write_text
from clipcurate.core.workspace import Workspace

SUCCESS = "_SUCCESS"
PLAN = "_plan.json"

# The command that remakes each stage folder (workspace-relative, e.g. "overlap": "clipcurate overlap"),
# handed down by clipcurate.core.registry.use_stages (core may not import the stage list).
COMMANDS: dict[str, str] = {}


# -- the bookkeeping files ------------------------------------------------------------------------

def marker(folder: Path, shard: str) -> Path:
    return Path(folder) / f"{shard}.done"


def is_done(folder: Path, shard: str) -> bool:
    return marker(folder, shard).exists()


def mark_done(folder: Path, shard: str, info: dict | None = None) -> None:
    """Write the completion marker, atomically, after the shard's data."""
    write_json(marker(folder, shard), {"shard": shard, "finished_at": time.time(), **(info or {})})


def done_info(folder: Path, shard: str) -> dict:
    return read_json(marker(folder, shard))


def add_done_shard(folder: Path, stage: str, shard: str, info: dict | None = None) -> None:
    """Record a shard written outside a run (test fixtures and demos, e.g. ``write_pool_shard``).

    What a run would have left: the shard's marker, then the plan extended with the shard, then
    ``_SUCCESS`` when every planned shard is done (so ``status`` stays truthful).
    """
    folder = Path(folder)
    mark_done(folder, shard, info)
    plan = folder / PLAN
    shards = set(read_json(plan).get("shards", [])) if plan.exists() else set()
    write_json(plan, {"stage": stage, "shards": sorted(shards | {shard})})
    if all(is_done(folder, s) for s in shards | {shard}):
        write_text(folder / SUCCESS, "")


def stage_state(folder: Path) -> tuple[str, int, int]:
    """(state, shards_done, shards_total) where state is done / partial / missing."""
    folder = Path(folder)
    if (folder / SUCCESS).exists():
        state = "done"
    elif folder.is_dir() and any(folder.iterdir()):
        state = "partial"
    else:
        return "missing", 0, 0
    total = done = 0
    if (folder / PLAN).exists():
        shards = read_json(folder / PLAN).get("shards", [])
        total = len(shards)
        done = sum(is_done(folder, s) for s in shards)
    return state, done, total


# -- upstream checks --------------------------------------------------------------------------------
#
# A stage declares the folders it reads (``reads = ("pool", "overlap")``, relative to the workspace).
# Before it runs, each of them must be complete and current:
#
# - complete: a folder the runner planned (``_plan.json``) has its ``_SUCCESS``; a killed or failed
#   run leaves the plan without it, so "partial" is refused. A folder without a plan was not made by
#   a stage run (hand-made inputs, test fixtures): its own stage's file checks apply instead;
# - current: the runner stores in a stage's ``_SUCCESS`` the fingerprints of the folders it read; when
#   one of those has changed since (an upstream rerun), the stage that read it is out of date.
#
# A folder's fingerprint hashes its shard markers (each carries its shard's counts and finishing
# time, so a redone shard changes it), its ``_SUCCESS`` (hence its own inputs: staleness travels
# down) and the generation its published set points at (core.io.publish: a refresh changes it).
# A rerun that skips every shard leaves it unchanged.

def fingerprint(folder: Path) -> str:
    """The fingerprint of a stage folder (see above); "" when it has no ``_SUCCESS``."""
    folder = Path(folder)
    if not (folder / SUCCESS).is_file():
        return ""
    h = hashlib.sha256((folder / SUCCESS).read_bytes())
    for p in sorted(folder.glob("*.done")):
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    cur = folder / CURRENT
    if cur.is_symlink():
        h.update(os.readlink(cur).encode())
    return h.hexdigest()[:20]


def _command(rel: str) -> str:
    top = rel.split("/")[0]
    return COMMANDS.get(top, f"the {top} stage")


def check_upstream(root: Path, reads: Sequence[str], who: str) -> dict[str, str]:
    """Refuse, in one line naming the stage to rerun, when a folder ``who`` reads is partial or out of
    date; returns their fingerprints (what the runner stores in ``who``'s ``_SUCCESS``)."""
    root, fps = Path(root), {}
    for rel in reads:
        folder = root / rel
        if (folder / PLAN).is_file() and not (folder / SUCCESS).is_file():
            _, done, total = stage_state(folder)
            raise ClipcurateError(
                f"{who}: the upstream stage {rel} is partial ({done}/{total} shards; a run was killed or failed): "
                f"rerun `{_command(rel)}` first")
        for up, fp in _stored_inputs(folder).items():
            if fingerprint(root / up) != fp:
                raise ClipcurateError(
                    f"{who}: the upstream stage {rel} is out of date ({up} changed since it ran): "
                    f"rerun `{_command(rel)}` first")
        fps[rel] = fingerprint(folder)
    return fps


def _stored_inputs(folder: Path) -> dict[str, str]:
    """The fingerprints a finished stage stored of what it read ({} for an empty ``_SUCCESS``)."""
    try:
        text = (folder / SUCCESS).read_text("utf-8").strip()
        inputs = json.loads(text).get("inputs", {}) if text else {}
    except (OSError, ValueError, AttributeError):
        return {}
    return inputs if isinstance(inputs, dict) else {}


def reset(folder: Path) -> None:
    """Remove a stage's folder entirely (used by --force on stages that are not sharded)."""
    if Path(folder).exists():
        shutil.rmtree(folder)


# -- the contract ---------------------------------------------------------------------------------

@dataclasses.dataclass
class StageResult:
    stage: str
    shards_total: int = 0
    shards_done: int = 0
    shards_skipped: int = 0
    counts: dict = dataclasses.field(default_factory=dict)


class Stage:
    """Subclass, set ``name``; implement :meth:`shards` and :meth:`run_shard` (see the module docstring).

    On Ray the stage object is pickled to the workers, so whatever a worker needs travels as an
    attribute of the stage (paths, options) or is built in :meth:`setup` (a model).
    """

    name: str = "stage"
    description: str = ""
    # the folders this stage reads, relative to the workspace ``root`` (default: the folder's parent);
    # the runner refuses to start while one is partial or out of date (:func:`check_upstream`)
    reads: Sequence[str] = ()

    def __init__(self, folder: Path, force: bool = False, root: Path | None = None):
        self.folder = Path(folder)
        self.force = force
        self.root = Path(root) if root is not None else self.folder.parent

    def check_upstream(self) -> dict[str, str]:
        """:func:`check_upstream` for this stage; a stage that does work before :meth:`run` (reads
        its inputs, deletes old outputs) calls it first, and the runner calls it again."""
        return check_upstream(self.root, self.reads, self.name)

    # -- to implement ---------------------------------------------------------------------
    def shards(self) -> Sequence[str]:
        raise NotImplementedError

    def setup(self) -> None:
        """Called once per copy of the stage before it runs its first shard: once in this process,
        once per Ray actor (``actors=True``), once per Ray task otherwise. Load models here."""

    def run_shard(self, shard: str) -> dict | None:
        """Do one shard; return counts to store in its marker (and sum in the result)."""
        raise NotImplementedError

    def run_batch(self, shards: Sequence[str]) -> Iterator[tuple[str, dict | None]]:
        """Do several shards in this process, yielding ``(shard, counts)`` as each one's outputs are
        in place (the runner then writes its marker). Override when shards are cheaper together
        (one external process for all of them); by default, one :meth:`run_shard` after another."""
        for shard in shards:
            yield shard, self.run_shard(shard)

    def finish(self, result: StageResult) -> None:
        """Called once all shards are done (merge per-shard outputs here)."""

    # -- the contract ---------------------------------------------------------------------
    def run(self, executor: Any = None, **where: Any) -> StageResult:
        """Run the stage: :func:`run_stage` (``executor`` None: in this process)."""
        return run_stage(self, executor, **where)


class FnStage(Stage):
    """A stage made of a function: ``fn(shard)``, or ``fn(shard, setup())`` when ``setup`` is given.

    The functional form of :class:`Stage` (:func:`run_shards`, :func:`map_shards`); a module-level
    class, so that it pickles to Ray workers. ``folder`` None: no markers (map_shards only).
    """

    def __init__(self, folder: Path | None, shards: Sequence[str], fn: Callable, *,
                 setup: Callable[[], Any] | None = None, force: bool = False, description: str = ""):
        self.folder = Path(folder) if folder is not None else None
        self.force = force
        self._shards, self.fn, self._setup, self.state = list(shards), fn, setup, None
        self.name = description or (self.folder.name if self.folder is not None else "shards")
        self.description = description

    def shards(self):
        return self._shards

    def setup(self):
        if self._setup is not None:
            self.state = self._setup()

    def run_shard(self, shard):
        return self.fn(shard, self.state) if self._setup is not None else self.fn(shard)


# -- where a shard runs -----------------------------------------------------------------------------
#
# An executor is any object with ``execute(stage, todo, folder, *, actors, gpu, cpus_per_task,
# max_workers, advance) -> {shard: result}`` (clipcurate.core.executor); None means run_here.

def run_here(stage: Stage, todo: Sequence[str], folder: Path | None, *, advance: Callable[[str], Any],
             **_where: Any) -> dict:
    """Run ``todo`` in this process: ``setup()`` once, then ``run_batch``, each marker as its shard lands."""
    stage.setup()
    out = {}
    for shard, result in stage.run_batch(list(todo)):
        if folder is not None:
            mark_done(folder, shard, result if isinstance(result, dict) else {})
            fault_point("shard")
        out[shard] = result
        advance(shard)
    return out


def run_one(stage: Stage, shard: str, folder: str | None, setup: bool = False):
    """One shard on a Ray worker (task or actor): ``run_shard``, then its marker, last.

    ``setup``: call ``stage.setup()`` first (a task's fresh copy of the stage; an actor sets up once).
    """
    set_quiet(True)  # no progress bars or logs from inside Ray workers; the driver draws the bar
    # A retried task (its first attempt's reply was lost, or another driver ran it meanwhile) finds
    # the marker and returns what the finished attempt stored, instead of redoing the shard.
    if folder is not None and is_done(Path(folder), shard):
        return done_info(Path(folder), shard)
    if setup:
        stage.setup()
    # Data goes to stdout in clipcurate; Ray forwards a worker's stdout to the driver's stdout, so
    # whatever the stage code prints inside a worker is sent to stderr instead.
    with contextlib.redirect_stdout(sys.stderr):
        result = stage.run_shard(shard)
    if folder is not None:
        mark_done(Path(folder), shard, result if isinstance(result, dict) else {})
    return result


def _execute(executor: Any, stage: Stage, todo: list[str], folder: Path | None, **where: Any) -> dict:
    run = run_here if executor is None else executor.execute
    return run(stage, todo, folder, **where)


# -- the runners ------------------------------------------------------------------------------------

def _todo(shards: Sequence[str], folder: Path, label: str) -> list[str]:
    """The shards without a marker; says how many are skipped."""
    todo = [s for s in shards if not is_done(folder, s)]
    skipped = len(shards) - len(todo)
    if skipped:
        log(f"{label}: {skipped}/{len(shards)} shards already done, skipping them")
    return todo


def run_stage(stage: Stage, executor: Any = None, *, actors: bool = False, gpu: bool = False,
              cpus_per_task: float = 1, max_workers: int | None = None) -> StageResult:
    """The one runner (steps 1-4 of the module docstring). ``executor`` None: in this process.

    ``actors=True`` (Ray) hands each actor its own copy of the stage, set up once, and runs its
    shards through it; otherwise a Ray task per shard. ``gpu`` asks for a GPU per task or actor.
    """
    inputs = stage.check_upstream() if stage.reads else {}
    folder = stage.folder
    folder.mkdir(parents=True, exist_ok=True)
    clean_temp(folder)  # temp files of a killed attempt: never read, removed here
    shards = list(stage.shards())
    if stage.force:
        for s in shards:
            marker(folder, s).unlink(missing_ok=True)
        (folder / SUCCESS).unlink(missing_ok=True)
    write_json(folder / PLAN, {"stage": stage.name, "shards": shards})
    result = StageResult(stage.name, shards_total=len(shards))
    todo = _todo(shards, folder, stage.name)
    result.shards_skipped = len(shards) - len(todo)
    if todo:
        (folder / SUCCESS).unlink(missing_ok=True)
    with progress(stage.description or stage.name, total=len(shards)) as advance:
        advance(result.shards_skipped)
        if todo:
            _execute(executor, stage, todo, folder, actors=actors, gpu=gpu, cpus_per_task=cpus_per_task,
                     max_workers=max_workers, advance=lambda shard: advance())
    left = [s for s in todo if not is_done(folder, s)]
    if left:
        raise ClipcurateError(f"{stage.name}: {len(left)} of {len(shards)} shards did not finish; rerun to retry them")
    for s in shards:
        for k, v in done_info(folder, s).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "finished_at":
                result.counts[k] = result.counts.get(k, 0) + v
    result.shards_done = len(shards)
    stage.finish(result)
    write_text(folder / SUCCESS, json.dumps({"inputs": inputs}, sort_keys=True) + "\n" if inputs else "")
    refresh_catalogue(stage)
    return result


def refresh_catalogue(stage: Stage) -> None:
    """Bring the workspace's ``clipcurate.duckdb`` up to date with what the stage just wrote (its
    views list the manifests' files). Never fails the stage: a catalogue held open elsewhere, or
    any DuckDB error, is a warning; ``clipcurate sql`` makes its own views anyway."""
    root = getattr(stage, "root", None)
    if isinstance(stage, FnStage) or root is None or Path(root) not in stage.folder.parents:
        return
    from clipcurate.core import sql  # duckdb: 0.2 s to import (0.6 s cold); only once a stage has finished

    try:
        sql.refresh_database(Workspace(root))
    except Exception as exc:  # noqa: BLE001 - the stage's outputs are complete; the catalogue is a convenience
        log(f"{stage.name}: clipcurate.duckdb not refreshed ({exc.__class__.__name__}: {str(exc)[:80]})")


def run_shards(folder: Path, shards: Iterable[str], fn: Callable[[str], dict | None], *,
               force: bool = False, description: str = "", executor: Any = None) -> StageResult:
    """Functional form of :class:`Stage` for stages that are just a loop over shards."""
    return run_stage(FnStage(folder, list(shards), fn, force=force, description=description), executor)


def map_shards(executor: Any, fn: Callable, shards: Sequence[str], *, folder: str | Path | None = None,
               setup: Callable[[], Any] | None = None, force: bool = False, gpu: bool = False,
               cpus_per_task: float = 1, max_workers: int | None = None, description: str = "",
               advance: Callable[..., Any] | None = None, weights: dict[str, int] | None = None) -> list:
    """Run ``fn(shard)`` (or ``fn(shard, setup())``) for each shard; results in input order.

    Steps 2 and 3 of the runner, without a plan or ``_SUCCESS``. ``folder``: where the
    ``<shard>.done`` markers live; shards already marked are skipped (``force=True`` deletes their
    markers first) and give back their marker's dict. Without a folder every shard runs and nothing
    is marked (for pure functions whose result the driver merges, e.g. a per-shard search). With
    ``setup``, Ray runs the shards on actors (setup once per actor). ``advance``: the caller's
    progress callback (called once per finished shard, with ``weights[shard]`` when given) instead
    of a progress bar of our own.
    """
    shards = list(shards)
    if len(set(shards)) != len(shards):
        raise ValueError("map_shards: shard names must be unique")
    folder = Path(folder) if folder is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
        clean_temp(folder)  # temp files of a killed attempt: never read, removed here
        if force:
            for s in shards:
                marker(folder, s).unlink(missing_ok=True)
    todo = shards if folder is None else _todo(shards, folder, description or "shards")
    skipped = len(shards) - len(todo)
    results: dict[str, Any] = {}
    if todo:
        bar = progress(description or "shards", total=len(shards)) if advance is None else None
        with bar if bar is not None else contextlib.nullcontext(advance) as step:
            if bar is not None:
                step(skipped)
            stage = FnStage(folder, todo, fn, setup=setup, description=description)
            results = _execute(executor, stage, todo, folder, actors=setup is not None, gpu=gpu,
                               cpus_per_task=cpus_per_task, max_workers=max_workers,
                               advance=lambda shard: step(weights[shard]) if weights else step())
    return [results[s] if s in results else done_info(folder, s) for s in shards]
