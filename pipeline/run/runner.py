"""``clipcurate run PIPELINE.toml``: the stages in order from one config, skipping finished work.

A pipeline file is a list of steps; each names a step kind and its parameters::

    workspace = "workspace"            # relative to this file; -w on the command line wins

    [[step]]
    run = "queries.build"
    dumps = ["world/enwiki-demo-pages-articles.xml.bz2"]
    unigram_min_count = 5

    [[step]]
    run = "download"
    allow_private = true

The step kinds are :data:`clipcurate.run.steps.STEPS`. Relative paths in step parameters are
resolved against the pipeline file's folder. The configuration is read once per run and handed to
the steps that take it (``cfg``). Each finished step leaves a marker ``run/{NN}-{kind}.done``
holding a hash of its parameters: a rerun skips a step whose marker matches, reruns one whose
parameters changed, and the stages themselves skip their finished shards, so a run killed in the
middle of a stage continues where it stopped. A failing step stops the run with one line naming the
step and the fix. Every step runs with its thread count and torch's deterministic algorithms pinned
(:func:`clipcurate.core.models.deterministic`), so the same seed on the same machine gives the same
manifests.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from clipcurate.core.config import Config, read_file
from clipcurate.core.console import log
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.io import read_json
from clipcurate.core.models import deterministic, pinned_threads
from clipcurate.core.stage import Stage, marker
from clipcurate.core.workspace import Workspace
from clipcurate.run.steps import STEPS

# parameter names whose values are file paths (resolved against the pipeline file's folder)
PATH_KEYS = {"dumps", "pageviews", "wordnet", "input", "source", "classes", "templates", "checkpoint",
             "detector", "path", "truth", "queries_file", "serve"}


@dataclasses.dataclass
class Pipeline:
    path: Path
    workspace: str | None
    steps: list[dict[str, Any]]

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Pipeline":
        p = Path(path)
        data = read_file(p)
        unknown = set(data) - {"workspace", "step", "name", "description"}
        if unknown:
            raise ClipcurateError(f"{p}: unknown top-level key(s) {sorted(unknown)}; expected workspace and [[step]] tables")
        steps = data.get("step", [])
        if not steps:
            raise ClipcurateError(f"{p}: no [[step]] tables; see examples/demo/pipeline.toml")
        for i, s in enumerate(steps):
            kind = s.get("run")
            if kind not in STEPS:
                raise ClipcurateError(f"{p}: step {i + 1} has run = {kind!r}; known steps: {', '.join(sorted(STEPS))}")
        return cls(p.resolve(), data.get("workspace"), steps)

    def default_workspace(self) -> Workspace:
        """The file's ``workspace`` (relative to the file; default: the file's folder)."""
        return Workspace((self.path.parent / (self.workspace or ".")).resolve())

    def resolve(self, params: dict[str, Any]) -> dict[str, Any]:
        base = self.path.parent

        def fix(v):
            if isinstance(v, str) and v not in ("auto", "none", "random", "") and \
                    not v.startswith(("http://", "https://", "torchvision:", "hf-hub:")):
                p = Path(v).expanduser()
                return str(p if p.is_absolute() else (base / p))
            return v

        out = {}
        for k, v in params.items():
            if k in PATH_KEYS:
                v = [fix(x) for x in v] if isinstance(v, list) else fix(v)
            out[k] = v
        return out

    def override(self, kind: str, **params) -> "Pipeline":
        """Change the parameters of every step of one kind (e.g. a smaller demo for tests)."""
        for s in self.steps:
            if s["run"] == kind:
                s.update(params)
        return self

    def step_id(self, i: int, s: dict) -> str:
        return f"{i + 1:02d}-{s['run'].replace('.', '-')}"

    @staticmethod
    def params_hash(params: dict) -> str:
        return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


class PipelineRun(Stage):
    """The steps of a pipeline file as the shards of ``run/``, in order, on the one runner.

    A step's marker holds the hash of its parameters; before the runner looks at the markers, a
    marker whose hash no longer matches is removed, so that step runs again and the others are
    skipped. Steps run in this process, one after another (:meth:`run_batch`): each is a whole stage.
    """

    name = "run"
    description = "pipeline steps"

    def __init__(self, pipeline: Pipeline, ws: Workspace, cfg: Config, force: bool = False,
                 on_step: Callable[[str, str, float, dict | None], None] | None = None):
        super().__init__(ws.root / "run", force=force)
        self.pipeline, self.ws, self.cfg, self.on_step = pipeline, ws, cfg, on_step
        self.ids = [pipeline.step_id(i, s) for i, s in enumerate(pipeline.steps)]
        self.params = {sid: pipeline.resolve({k: v for k, v in s.items() if k != "run"})
                       for sid, s in zip(self.ids, pipeline.steps)}
        self.results: dict[str, dict] = {}

    def shards(self) -> list[str]:
        return self.ids

    def forget_changed_steps(self) -> None:
        """Remove the marker of every step whose parameters changed since it ran; log the others."""
        for sid in self.ids:
            mk = marker(self.folder, sid)
            if not mk.exists():
                continue
            info = read_json(mk)
            if self.force or info.get("params") != self.pipeline.params_hash(self.params[sid]):
                mk.unlink()
                continue
            log(f"[dim]step {sid}: done earlier, skipping[/]")
            self.results[sid] = {"step": sid, "skipped": True, **info.get("summary", {})}
            if self.on_step:
                self.on_step(sid, "skipped", 0.0, info.get("summary"))

    def run_shard(self, sid: str) -> dict:
        kind = self.pipeline.steps[self.ids.index(sid)]["run"]
        fn, command = STEPS[kind]
        params = self.params[sid]
        log(f"[bold]step {sid}[/] ({command})")
        t0 = time.time()
        extra = {"cfg": self.cfg} if "cfg" in inspect.signature(fn).parameters else {}
        try:
            # every step with the settings its result depends on pinned (threads, deterministic
            # algorithms): the same seed on the same machine gives the same manifests
            with deterministic(pinned_threads()):
                summary = fn(self.ws, **params, **extra) or {}
        except ClipcurateError as exc:
            raise ClipcurateError(
                f"step {sid} ({command}) failed: {exc} — fix it and rerun `clipcurate run {self.pipeline.path}`; "
                f"finished steps are skipped") from exc
        except TypeError as exc:
            if "argument" in str(exc):
                raise ClipcurateError(f"step {sid} ({kind}): bad parameters in {self.pipeline.path}: {exc}") from exc
            raise
        dt = time.time() - t0
        self.results[sid] = {"step": sid, "skipped": False, "seconds": round(dt, 2), **summary}
        if self.on_step:
            self.on_step(sid, "done", dt, summary)
        return {"params": self.pipeline.params_hash(params), "seconds": round(dt, 2), "summary": summary}


def run_pipeline(pipeline: Pipeline, ws: Workspace, force: bool = False,
                 on_step: Callable[[str, str, float, dict | None], None] | None = None,
                 cfg: Config | None = None) -> list[dict]:
    """Run every step in order; returns one summary dict per step. ``cfg``: the configuration the
    steps read (default: the workspace's clipcurate.toml, read once here)."""
    ws.create()
    stage = PipelineRun(pipeline, ws, Config.load(ws.root) if cfg is None else cfg, force=force, on_step=on_step)
    stage.forget_changed_steps()
    stage.force = False  # the changed (or, with force, all) markers are gone: the runner skips the rest
    stage.run()
    return [stage.results[sid] for sid in stage.ids]
