"""Executors: run a stage's per-shard work here (``local``) or across a Ray cluster (``ray``).

A stage is a loop over shards (clipcurate.core.stage). Each shard writes its outputs atomically and then,
last, its ``<shard>.done`` marker. That contract is all a cluster needs: a shard is either finished
(data + marker) or not, wherever it ran, so a run that dies half-way — a worker, a node, or the
driver itself SIGKILLed — resumes by skipping the shards that have markers. The executor only decides
*where* ``fn(shard)`` runs:

    ex = get_executor("ray", address="auto")          # or "local"; address None = start a local Ray
    infos = ex.map_shards(embed_one, shards, folder=out_dir, setup=load_model, gpu=True)

- ``local``: a plain loop in this process (what every stage does without ``--executor``).
- ``ray``: without ``setup``, one Ray task per shard; with ``setup``, a pool of Ray actors, each
  calling ``setup()`` once (load the model once per actor) and then ``fn(shard, state)`` for the
  shards it is handed. ``gpu=True`` asks for a GPU per actor/task when the cluster has GPUs.

In both cases the worker writes the shard's marker right after ``fn`` returns (so a finished shard is
never lost with the driver), and ``map_shards`` returns one result per input shard **in the input
order**, whatever order the shards finished in — the driver merges deterministically. A shard whose
marker already exists is not run again; its result is the dict stored in its marker.

The workspace must be on a filesystem every Ray node mounts at the same path (NFS, Lustre, a
FUSE-mounted bucket), and clipcurate must be installed in the cluster's Python (see docs/ray.md).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence


from clipcurate.core import config
from clipcurate.core.console import log, progress, set_quiet
from clipcurate.core.errors import ClipcurateError, require
from clipcurate.core.io import clean_temp, write_json, write_text
from clipcurate.core.stage import PLAN, SUCCESS, Stage, StageResult, done_info, is_done, mark_done, marker

KINDS = ("local", "ray")


class Kind(str, enum.Enum):
    """``--executor`` values (an Enum so that Typer rejects others as a usage error)."""

    local = "local"
    ray = "ray"


# The help of the two options every sharded command takes (download, embed, overlap).
EXECUTOR_HELP = "Where the per-shard work runs: local (this process) or ray (Ray tasks/actors) [config: local]."
RAY_ADDRESS_HELP = "Ray cluster for --executor ray (auto, host:6379, ray://head:10001) [RAY_ADDRESS, else start a local Ray]."

# `[executor]` in clipcurate.toml (or CLIPCURATE_EXECUTOR__KIND=ray ...) sets the default for every
# stage that takes --executor; the command-line options win.
DEFAULTS = {"kind": "local", "ray_address": "", "num_cpus": 0, "gpus_per_task": "auto"}
DOCS = {
    "kind": "where per-shard work runs: local (this process) or ray (Ray tasks/actors)",
    "ray_address": "Ray cluster to join (auto, ray://head:10001, host:port); empty: RAY_ADDRESS, else start a local Ray",
    "num_cpus": "CPUs of a local Ray started by clipcurate (0 = all)",
    "gpus_per_task": "GPUs each GPU task/actor asks for: auto (1 when the cluster has GPUs), 0, 0.5, 1, ...",
}
config.section("executor", DEFAULTS, DOCS)


def from_config(cfg: "config.Config", kind: str | None = None, address: str | None = None) -> "Executor":
    """The executor for a command: ``--executor``/``--ray-address`` > env > [executor] > local."""
    kind = kind.value if isinstance(kind, Kind) else kind
    sec = cfg.get("executor", {"kind": kind, "ray_address": address})
    gpus = str(sec["gpus_per_task"]).strip().lower()
    try:
        gpus_per_task = None if gpus in ("", "auto") else float(gpus)
    except ValueError:
        raise ClipcurateError(f"[executor] gpus_per_task {gpus!r} is not a number or 'auto'") from None
    return get_executor(sec["kind"], address=sec["ray_address"] or None, num_cpus=sec["num_cpus"] or None,
                        num_gpus_per_task=gpus_per_task)


def get_executor(kind: str | None = "local", address: str | None = None, num_cpus: int | None = None,
                 num_gpus_per_task: float | None = None) -> "Executor":
    """``local`` or ``ray``; ``address`` is a Ray address (None: RAY_ADDRESS, else start a local Ray)."""
    kind = (kind or "local").lower()
    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        return RayExecutor(address=address, num_cpus=num_cpus, num_gpus_per_task=num_gpus_per_task)
    raise ClipcurateError(f"unknown executor {kind!r}: use --executor local or --executor ray")


# -- what runs on a worker ----------------------------------------------------------------------

def _do_shard(fn: Callable, shard: str, folder: str | None, state: Any = None, has_state: bool = False,
              worker: bool = False):
    """Run one shard and write its marker last. Runs in the driver (local) or in a Ray worker."""
    if worker:  # no progress bars or logs from inside Ray workers; the driver draws the bar
        set_quiet(True)
    # A retried task (its first attempt's reply was lost, or another driver ran it meanwhile) finds
    # the marker and returns what the finished attempt stored, instead of redoing the shard.
    if folder is not None and is_done(Path(folder), shard):
        return done_info(Path(folder), shard)
    # Data goes to stdout in clipcurate; Ray forwards a worker's stdout to the driver's stdout, so
    # whatever the stage code prints inside a worker is sent to stderr instead.
    with contextlib.redirect_stdout(sys.stderr):
        result = fn(shard, state) if has_state else fn(shard)
    if folder is not None:
        mark_done(Path(folder), shard, result if isinstance(result, dict) else {})
    return result


class _ShardWorker:
    """A Ray actor: ``setup()`` once (e.g. load a model), then any number of shards."""

    def __init__(self, setup: Callable[[], Any]):
        self.state = setup()

    def run(self, fn: Callable, shard: str, folder: str | None):
        return _do_shard(fn, shard, folder, self.state, True, worker=True)


# -- executors ----------------------------------------------------------------------------------

class Executor:
    kind = "base"

    def map_shards(self, fn: Callable, shards: Sequence[str], *, folder: str | Path | None = None,
                   setup: Callable[[], Any] | None = None, force: bool = False, gpu: bool = False,
                   cpus_per_task: float = 1, max_workers: int | None = None,
                   description: str = "", advance: Callable[..., Any] | None = None,
                   weights: dict[str, int] | None = None) -> list:
        """Run ``fn(shard)`` (or ``fn(shard, setup())``) for each shard; results in input order.

        ``folder``: where the ``<shard>.done`` markers live; shards already marked are skipped
        (``force=True`` deletes their markers first) and give back their marker's dict. Without a
        folder every shard runs and nothing is marked (for pure functions whose result the driver
        merges, e.g. a per-shard search). ``advance``: the caller's progress callback (called once
        per finished shard, with ``weights[shard]`` when given) instead of a progress bar of our own.
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
        todo = [s for s in shards if folder is None or not is_done(folder, s)]
        skipped = len(shards) - len(todo)
        if skipped:
            log(f"{description or 'shards'}: {skipped}/{len(shards)} shards already done, skipping them")
        results: dict[str, Any] = {}
        if todo:
            bar = progress(description or "shards", total=len(shards)) if advance is None else None
            with bar if bar is not None else contextlib.nullcontext(advance) as step:
                if bar is not None:
                    step(skipped)
                results = self._run(fn, todo, folder, setup, gpu=gpu, cpus_per_task=cpus_per_task,
                                    max_workers=max_workers,
                                    advance=lambda shard: step(weights[shard]) if weights else step())
        return [results[s] if s in results else done_info(folder, s) for s in shards]

    def run_stage(self, stage: Stage, *, actors: bool = False, gpu: bool = False,
                  cpus_per_task: float = 1, max_workers: int | None = None) -> StageResult:
        """:meth:`Stage.run`, with the shards run by this executor.

        ``actors=True`` hands each Ray actor its own copy of the stage object and runs its shards
        through it, so whatever the stage caches on ``self`` (a loaded model) is built once per actor.
        """
        folder = stage.folder
        folder.mkdir(parents=True, exist_ok=True)
        clean_temp(folder)
        shards = list(stage.shards())
        if stage.force:
            for s in shards:
                marker(folder, s).unlink(missing_ok=True)
            (folder / SUCCESS).unlink(missing_ok=True)
        write_json(folder / PLAN, {"stage": stage.name, "shards": shards})
        result = StageResult(stage.name, shards_total=len(shards))
        result.shards_skipped = sum(is_done(folder, s) for s in shards)
        if result.shards_skipped < len(shards):
            (folder / SUCCESS).unlink(missing_ok=True)
        if actors:
            self.map_shards(_stage_shard, shards, folder=folder, setup=_StageSetup(stage), gpu=gpu,
                            cpus_per_task=cpus_per_task, max_workers=max_workers,
                            description=stage.description or stage.name)
        else:
            self.map_shards(stage.run_shard, shards, folder=folder, gpu=gpu, cpus_per_task=cpus_per_task,
                            max_workers=max_workers, description=stage.description or stage.name)
        # From here on exactly what Stage.run does: sum the markers' counts, finish, _SUCCESS last.
        for s in shards:
            for k, v in done_info(folder, s).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "finished_at":
                    result.counts[k] = result.counts.get(k, 0) + v
        result.shards_done = len(shards)
        stage.finish(result)
        write_text(folder / SUCCESS, "")
        return result

    def _run(self, fn, todo, folder, setup, *, gpu, cpus_per_task, max_workers, advance) -> dict:
        raise NotImplementedError

    def parallelism(self, gpu: bool = False, cpus_per_task: float = 1) -> int:
        """How many shards run at once."""
        return 1

    def close(self) -> None:
        """Release what this executor started (a local Ray it launched)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _StageSetup:
    """setup() for run_stage(actors=True): the actor's own copy of the (pickled) stage."""

    def __init__(self, stage: Stage):
        self.stage = stage

    def __call__(self) -> Stage:
        return self.stage


def _stage_shard(shard: str, stage: Stage):
    return stage.run_shard(shard) or {}


class _FnStage(Stage):
    """:func:`clipcurate.core.stage.run_shards` as a module-level class, so that it pickles to Ray workers."""

    def __init__(self, folder: Path, shards: Sequence[str], fn: Callable, force: bool, description: str):
        super().__init__(folder, force=force)
        self._shards, self.fn = list(shards), fn
        self.name = description or Path(folder).name
        self.description = description

    def shards(self):
        return self._shards

    def run_shard(self, shard):
        return self.fn(shard)


def run_shards(executor: "Executor | None", folder: Path, shards: Sequence[str], fn: Callable[[str], dict | None],
               *, force: bool = False, description: str = "") -> StageResult:
    """:func:`clipcurate.core.stage.run_shards` on an executor (None: local)."""
    return (executor or LocalExecutor()).run_stage(_FnStage(Path(folder), shards, fn, force, description))


class LocalExecutor(Executor):
    """A loop in this process: the behaviour of a stage without ``--executor``."""

    kind = "local"

    def run_stage(self, stage: Stage, **_: Any) -> StageResult:
        return stage.run()

    def _run(self, fn, todo, folder, setup, *, gpu, cpus_per_task, max_workers, advance) -> dict:
        state = setup() if setup is not None else None
        out = {}
        for s in todo:
            out[s] = _do_shard(fn, s, None if folder is None else str(folder), state, setup is not None)
            advance(s)
        return out


class RayExecutor(Executor):
    """Shards as Ray tasks (or actors when ``setup`` is given) on a local or existing Ray cluster."""

    kind = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 num_gpus_per_task: float | None = None, max_retries: int = 2):
        self.ray = require("ray", "'clipcurate[ray]'", "--executor ray")
        self.address = address
        self.num_gpus_per_task = num_gpus_per_task
        self.max_retries = max_retries
        self.started = False
        if not self.ray.is_initialized():
            kwargs: dict[str, Any] = {"address": address, "include_dashboard": False,
                                      "configure_logging": True, "logging_level": logging.WARNING}
            if address is None and num_cpus is not None:
                kwargs["num_cpus"] = int(num_cpus)
            try:
                self.ray.init(**kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = f"Ray at {address!r}" if address else "a local Ray"
                raise ClipcurateError(
                    f"could not start or reach {where} ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                    f"check --ray-address (e.g. auto, ray://head:10001) or omit it to start a local Ray") from None
            self.started = True
            res = self.ray.cluster_resources()
            log(f"ray: {'connected to ' + address if address else 'started a local Ray'} "
                f"({int(res.get('CPU', 0))} CPUs, {int(res.get('GPU', 0))} GPUs)")

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
            self.started = False

    # How many of a resource one task/actor asks for, and how many run at once.
    def _gpus(self, gpu: bool) -> float:
        if not gpu:
            return 0
        if self.num_gpus_per_task is not None:
            return float(self.num_gpus_per_task)
        return 1.0 if self.ray.cluster_resources().get("GPU", 0) >= 1 else 0

    def parallelism(self, gpu: bool = False, cpus_per_task: float = 1) -> int:
        return self._slots(self._gpus(gpu), cpus_per_task, None)

    def _slots(self, gpus: float, cpus: float, max_workers: int | None) -> int:
        res = self.ray.cluster_resources()
        n = res.get("GPU", 0) / gpus if gpus else res.get("CPU", 1) / max(cpus, 1e-6)
        n = max(1, int(n))
        return min(n, max_workers) if max_workers else n

    def _run(self, fn, todo, folder, setup, *, gpu, cpus_per_task, max_workers, advance) -> dict:
        ray = self.ray
        gpus = self._gpus(gpu)
        slots = self._slots(gpus, cpus_per_task, max_workers)
        folder_s = None if folder is None else str(folder)
        fn_ref = ray.put(fn)  # pickled once, shared by every task
        if setup is None:
            task = ray.remote(_do_shard).options(num_cpus=cpus_per_task, num_gpus=gpus,
                                                 max_retries=self.max_retries)

            def submit(shard, _worker):
                return task.remote(fn_ref, shard, folder_s, worker=True)

            workers = [None] * (2 * slots)  # keep a window of tasks queued so no slot idles
        else:
            actor_cls = ray.remote(_ShardWorker).options(num_cpus=cpus_per_task, num_gpus=gpus,
                                                          max_restarts=self.max_retries,
                                                          max_task_retries=self.max_retries)
            workers = [actor_cls.remote(setup) for _ in range(min(slots, len(todo)))]

            def submit(shard, worker):
                return worker.run.remote(fn_ref, shard, folder_s)

        # Dispatch: hand shards to free workers in input order; collect whatever finishes first.
        # On the first failure stop handing out shards, let the running ones finish (their markers
        # make the rerun skip them), then raise one line naming the shard.
        results: dict[str, Any] = {}
        queue = list(todo)
        free = list(workers)
        running: dict[Any, tuple[str, Any]] = {}
        failure: tuple[str, BaseException] | None = None
        try:
            while running or (queue and failure is None):
                while queue and free and failure is None:
                    shard, worker = queue.pop(0), free.pop(0)
                    running[submit(shard, worker)] = (shard, worker)
                ready, _ = ray.wait(list(running), num_returns=1)
                for ref in ready:
                    shard, worker = running.pop(ref)
                    free.append(worker)
                    try:
                        results[shard] = ray.get(ref)
                        advance(shard)
                    except Exception as exc:  # noqa: BLE001 - reported below with the shard name
                        if failure is None:
                            failure = (shard, exc)
        finally:
            if setup is not None:
                for w in workers:
                    ray.kill(w)
        if failure is not None:
            shard, exc = failure
            cause = _cause(exc)
            left = len(todo) - len(results)
            if isinstance(cause, ClipcurateError):
                raise ClipcurateError(f"shard {shard}: {cause} ({left} shards left; rerun to resume)") from None
            raise ClipcurateError(
                f"shard {shard} failed on Ray: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''} "
                f"({left} shards left; finished shards are kept, rerun to resume)") from None
        return results


def _cause(exc: BaseException) -> BaseException:
    """The user's exception inside a RayTaskError (Ray wraps it; ``.cause`` holds the original)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, BaseException) else exc


# -- for stages that start processes of their own -------------------------------------------------

def ray_address_env() -> dict[str, str]:
    """``{"RAY_ADDRESS": ...}`` of the Ray this process is connected to (empty when none), so that a
    child process (img2dataset's Ray distributor) joins the same cluster instead of starting one."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return {}
    return {"RAY_ADDRESS": ray.get_runtime_context().gcs_address}
