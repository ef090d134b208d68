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
step and the fix.
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
from clipcurate.core.io import read_json, write_json
from clipcurate.core.stage import PLAN, SUCCESS, marker
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


def run_pipeline(pipeline: Pipeline, ws: Workspace, force: bool = False,
                 on_step: Callable[[str, str, float, dict | None], None] | None = None,
                 cfg: Config | None = None) -> list[dict]:
    """Run every step in order; returns one summary dict per step. ``cfg``: the configuration the
    steps read (default: the workspace's clipcurate.toml, read once here)."""
    ws.create()
    cfg = Config.load(ws.root) if cfg is None else cfg
    folder = ws.root / "run"
    folder.mkdir(exist_ok=True)
    ids = [pipeline.step_id(i, s) for i, s in enumerate(pipeline.steps)]
    write_json(folder / PLAN, {"stage": "run", "pipeline": str(pipeline.path), "shards": ids})
    (folder / SUCCESS).unlink(missing_ok=True)
    results = []
    for i, (sid, s) in enumerate(zip(ids, pipeline.steps)):
        kind = s["run"]
        fn, command = STEPS[kind]
        params = pipeline.resolve({k: v for k, v in s.items() if k != "run"})
        h = pipeline.params_hash(params)
        mk = marker(folder, sid)
        if not force and mk.exists() and read_json(mk).get("params") == h:
            info = read_json(mk)
            log(f"[dim]step {sid}: done earlier, skipping[/]")
            results.append({"step": sid, "skipped": True, **info.get("summary", {})})
            if on_step:
                on_step(sid, "skipped", 0.0, info.get("summary"))
            continue
        mk.unlink(missing_ok=True)
        log(f"[bold]step {sid}[/] ({command})")
        t0 = time.time()
        extra = {"cfg": cfg} if "cfg" in inspect.signature(fn).parameters else {}
        try:
            summary = fn(ws, **params, **extra) or {}
        except ClipcurateError as exc:
            raise ClipcurateError(
                f"step {sid} ({command}) failed: {exc} — fix it and rerun `clipcurate run {pipeline.path}`; "
                f"finished steps are skipped") from exc
        except TypeError as exc:
            if "argument" in str(exc):
                raise ClipcurateError(f"step {sid} ({kind}): bad parameters in {pipeline.path}: {exc}") from exc
            raise
        dt = time.time() - t0
        write_json(mk, {"shard": sid, "params": h, "seconds": round(dt, 2), "summary": summary,
                        "finished_at": time.time()})
        results.append({"step": sid, "skipped": False, "seconds": round(dt, 2), **summary})
        if on_step:
            on_step(sid, "done", dt, summary)
    (folder / SUCCESS).write_text("")
    return results
