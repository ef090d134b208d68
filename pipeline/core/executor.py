"""Executors: where a stage's shards run — here (``local``) or across a Ray cluster (``ray``).

The runner is clipcurate.core.stage (plan, markers, ``_SUCCESS``); an executor only decides *where*
each shard runs, and knows no stage: whatever a worker needs comes with the Stage object, which is
pickled to the workers (its attributes, its ``setup()``). Each shard writes its outputs atomically
and then, last, its ``<shard>.done`` marker, written on the worker right after ``run_shard``
returns. That contract is all a cluster needs: a shard is either finished (data + marker) or not,
wherever it ran, so a run that dies half-way — a worker, a node, or the driver itself SIGKILLed —
resumes by skipping the shards that have markers.

    ex = get_executor("ray", address="auto")          # or "local"; address None = start a local Ray
    result = MyStage(folder).run(ex, actors=True)     # = ex.run_stage(MyStage(folder), actors=True)
    infos = ex.map_shards(embed_one, shards, folder=out_dir, setup=load_model, gpu=True)

- ``local``: this process (what every stage does without ``--executor``): ``setup()`` once, then
  the stage's ``run_batch`` (a loop over ``run_shard`` unless the stage batches its shards).
- ``ray``: one Ray task per shard, each with its own copy of the stage; with ``actors=True`` (or a
  ``setup`` for map_shards), a pool of Ray actors, each setting up its copy once (load the model once
  per actor) and then running the shards it is handed. ``gpu=True`` asks for a GPU per actor/task
  when the cluster has GPUs.

``map_shards`` returns one result per input shard **in the input order**, whatever order the
shards finished in — the driver merges deterministically. A shard whose marker already exists is not
run again; its result is the dict stored in its marker.

The workspace must be on a filesystem every Ray node mounts at the same path (NFS, Lustre, a
FUSE-mounted bucket), and clipcurate must be installed in the cluster's Python (see docs/ray.md).
"""

from __future__ import annotations

import enum
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from clipcurate.core import config
from clipcurate.core import stage as stage_mod
from clipcurate.core.console import log
from clipcurate.core.errors import ClipcurateError, require
from clipcurate.core.stage import Stage, StageResult

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


# -- executors ----------------------------------------------------------------------------------

class Executor:
    """Where shards run. Subclasses implement :meth:`execute`; the runner is clipcurate.core.stage."""

    kind = "base"

    def map_shards(self, fn: Callable, shards: Sequence[str], **options: Any) -> list:
        """Run ``fn(shard)`` (or ``fn(shard, setup())``) for each shard here; results in input order.

        :func:`clipcurate.core.stage.map_shards` on this executor: ``folder``, ``setup``, ``force``,
        ``gpu``, ``cpus_per_task``, ``max_workers``, ``description``, ``advance``, ``weights``.
        """
        return stage_mod.map_shards(self, fn, shards, **options)

    def run_stage(self, stage: Stage, **options: Any) -> StageResult:
        """:meth:`Stage.run` with the shards run by this executor (``actors``, ``gpu``,
        ``cpus_per_task``, ``max_workers``: see :func:`clipcurate.core.stage.run_stage`)."""
        return stage_mod.run_stage(stage, self, **options)

    def execute(self, stage: Stage, todo: Sequence[str], folder: Path | None, *, actors: bool = False,
                gpu: bool = False, cpus_per_task: float = 1, max_workers: int | None = None,
                advance: Callable[[str], Any]) -> dict:
        """Run ``stage``'s ``todo`` shards, each marker written where its shard ran; return
        ``{shard: run_shard's result}`` and call ``advance(shard)`` as each one finishes."""
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


def run_shards(executor: "Executor | None", folder: Path, shards: Sequence[str], fn: Callable[[str], dict | None],
               *, force: bool = False, description: str = "") -> StageResult:
    """:func:`clipcurate.core.stage.run_shards` on an executor (None: in this process)."""
    return stage_mod.run_shards(folder, shards, fn, force=force, description=description, executor=executor)


class LocalExecutor(Executor):
    """This process: the behaviour of a stage without ``--executor`` (the stage's ``run_batch``)."""

    kind = "local"

    def execute(self, stage, todo, folder, **where) -> dict:
        return stage_mod.run_here(stage, todo, folder, **where)


class _ShardWorker:
    """A Ray actor: its own copy of the stage, ``setup()`` once (e.g. load a model), then any
    number of shards."""

    def __init__(self, stage: Stage):
        self.stage = stage
        stage.setup()

    def run(self, shard: str, folder: str | None):
        return stage_mod.run_one(self.stage, shard, folder)


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

    def execute(self, stage, todo, folder, *, actors=False, gpu=False, cpus_per_task=1, max_workers=None,
                advance) -> dict:
        """Tasks (one per shard, each with a fresh copy of the stage) or, with ``actors``, a pool of
        actors that each set up their copy once; a worker writes a shard's marker (core.stage.run_one)."""
        ray = self.ray
        gpus = self._gpus(gpu)
        slots = self._slots(gpus, cpus_per_task, max_workers)
        folder_s = None if folder is None else str(folder)
        if not actors:
            stage_ref = ray.put(stage)  # pickled once, shared by every task
            task = ray.remote(stage_mod.run_one).options(num_cpus=cpus_per_task, num_gpus=gpus,
                                                         max_retries=self.max_retries)

            def submit(shard, _worker):
                return task.remote(stage_ref, shard, folder_s, setup=True)

            workers = [None] * (2 * slots)  # keep a window of tasks queued so no slot idles
        else:
            actor_cls = ray.remote(_ShardWorker).options(num_cpus=cpus_per_task, num_gpus=gpus,
                                                          max_restarts=self.max_retries,
                                                          max_task_retries=self.max_retries)
            workers = [actor_cls.remote(stage) for _ in range(min(slots, len(todo)))]

            def submit(shard, worker):
                return worker.run.remote(shard, folder_s)

        try:
            results, failure = self._dispatch(submit, todo, workers, advance)
        finally:
            if actors:
                for w in workers:
                    ray.kill(w)
        if failure is not None:
            _raise_failure(*failure, left=len(todo) - len(results))
        return results

    def _dispatch(self, submit, todo, workers, advance) -> tuple[dict, tuple[str, BaseException] | None]:
        """Hand shards to free workers in input order; collect whatever finishes first.

        On the first failure stop handing out shards and let the running ones finish (their
        markers make the rerun skip them); returns the results and the first failure.
        """
        ray = self.ray
        results: dict[str, Any] = {}
        queue = list(todo)
        free = list(workers)
        running: dict[Any, tuple[str, Any]] = {}
        failure: tuple[str, BaseException] | None = None
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
                except Exception as exc:  # noqa: BLE001 - reported by the caller with the shard name
                    if failure is None:
                        failure = (shard, exc)
        return results, failure


def _raise_failure(shard: str, exc: BaseException, left: int) -> None:
    """One line naming the shard: the stage's own error as it is, anything else with its type."""
    cause = _cause(exc)
    if isinstance(cause, ClipcurateError):
        raise ClipcurateError(f"shard {shard}: {cause} ({left} shards left; rerun to resume)") from None
    raise ClipcurateError(
        f"shard {shard} failed on Ray: {type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''} "
        f"({left} shards left; finished shards are kept, rerun to resume)") from None


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
