"""The stages, in pipeline order: the one list.

Each entry names a stage, its room (the sub-package ``clipcurate.<package>``), its folder in the
workspace, the command that fills it, the manifests it writes, the modules that declare them, and
the CLI module with its commands. Everything that walks the stages reads this list:

- the CLI registers each entry's commands in this order (cli/app.py), so ``clipcurate --help``
  lists them in pipeline order;
- ``clipcurate status`` prints one row per entry (:func:`status_rows`);
- ``docs/workspace.md`` lists the manifests stage by stage in this order (:func:`render_markdown`;
  ``python -m clipcurate.stages > docs/workspace.md``);
- :func:`clipcurate.core.registry.require_manifest` names the command that makes a missing manifest.
  Core may not import this module (it is the bottom layer), so importing it hands the list down
  (:func:`clipcurate.core.registry.use_stages`).

A stage module declares its manifests, config sections and SQL reports when it is imported.
:func:`load` imports them all; the CLI calls it once per command, before it reads the config file
(a section is known only once declared). Importing this module itself imports no stage: all stage
modules together take 0.37 s to import (measured on 2 cores: ``clipcurate --help`` takes 0.37 s
without them, 0.74 s with them), so ``--help`` never pays for them.

A new stage is one entry here (plus its package and, if it has commands, ``cli/<name>.py``).
"""

from __future__ import annotations

import importlib

from clipcurate.core import executor  # noqa: F401 - declares the [executor] config section behind --executor
from clipcurate.core import manifest as mf
from clipcurate.core import registry
from clipcurate.core.registry import StageInfo
from clipcurate.core.workspace import Workspace

STAGES: tuple[StageInfo, ...] = (
    StageInfo("queries", package="queries", folder="queries", command="clipcurate queries build",
              manifests=("queries",), modules=("stage",), cli="queries"),
    StageInfo("candidates", package="queries", folder="candidates", command="clipcurate queries match",
              manifests=("candidates", "entry_counts"), modules=("stage",)),
    StageInfo("download", package="download", folder="pool", command="clipcurate download",
              manifests=("pool",), modules=("stage",), cli="download"),
    StageInfo("bench", package="bench", folder="benchmarks", command="clipcurate bench add NAME --from SOURCE",
              manifests=("benchmarks",), modules=("stage",), cli="bench"),
    StageInfo("embed", package="embed", folder="embed", command="clipcurate embed",
              manifests=("embeddings",), modules=("stage",), cli="embed"),
    StageInfo("detector", package="detector", folder="detector", command="clipcurate detector train",
              modules=("stage",), cli="detector"),
    # pHash/dHash cache (manifest `hashes`), keypoints, caption MinHash: the cheap copy signals
    StageInfo("hashes", package="overlap", folder="hashes", command="clipcurate detector hashes",
              manifests=("hashes",), modules=("signals",)),
    # `overlap calibrate` (module calibrate) has its own config section and the calibration manifest
    StageInfo("overlap", package="overlap", folder="overlap", command="clipcurate overlap",
              manifests=("pairs", "neighbors", "splits", "decontam", "review_queue"),
              modules=("stage", "calibrate"), cli="overlap"),
    StageInfo("review", package="review", folder="review", command="clipcurate review",
              modules=("session",), cli="review"),
    StageInfo("curate", package="curate", folder="curate", command="clipcurate curate",
              manifests=("curated",), modules=("stage",), cli="curate"),
    StageInfo("train", package="train", folder="train", command="clipcurate train",
              modules=("stage",), cli="train"),
    StageInfo("eval", package="eval", folder="eval", command="clipcurate eval",
              manifests=("predictions", "eval", "compare"), modules=("stage", "compare"), cli="eval"),
    # `clipcurate run` / `demo`: one step marker per pipeline step under run/
    StageInfo("run", package="run", folder="run", command="clipcurate run PIPELINE.toml", cli="run"),
)

registry.use_stages(STAGES)


def cli_modules() -> list[str]:
    """The CLI modules (under clipcurate.cli) with stage commands, in pipeline order, each once."""
    return list(dict.fromkeys(s.cli for s in STAGES if s.cli))


def load() -> None:
    """Import every stage module, so that every manifest, config section and SQL report is declared.
    Cheap after the first call (imported modules are cached)."""
    for s in STAGES:
        for module in s.modules:
            importlib.import_module(f"clipcurate.{s.package}.{module}")


def status_rows(ws: Workspace) -> list[dict]:
    """``clipcurate status``: one row per stage, in pipeline order (state, shards, rows, command)."""
    load()
    return [registry.status_row(ws, s) for s in STAGES]


# What a kill -9 leaves and what each stage checks upstream before it runs (docs/workspace.md).
# The checks are the stages' declared `reads` (clipcurate.core.stage.check_upstream): refused when
# partial (planned, no _SUCCESS) or out of date (a folder it read changed since it ran).
GUARANTEES = (
    ("queries match", "whole files, old or new; the stage stays partial (so download refuses it) until a rerun",
     "`queries` (when it reads the workspace's query list)"),
    ("download", "finished shards (tar, manifest, marker); a rerun redoes the others",
     "`candidates` (when it reads them, not `--input`)"),
    ("bench", "each benchmark whole or absent (staged, then renamed into place)", "—"),
    ("embed", "finished shards (vectors, rows, marker); a rerun redoes the others",
     "`pool`, `benchmarks`"),
    ("detector hashes", "finished shards; a rerun redoes the others", "`pool`, `benchmarks`"),
    ("overlap", "the previous set of its seven files or the new one, whole (one `current` link switches "
     "them); the search resumes from its checkpoint", "`embed/{tag}/pool`, `embed/{tag}/bench`"),
    ("review", "every decision already appended (one locked write + fsync); a write-back of splits and "
     "decontam publishes a whole new overlap set", "`overlap`"),
    ("curate", "finished shards; a rerun redoes the others", "`pool`, `overlap` (not with `--no-decontam`)"),
    ("train", "its checkpoints; a rerun continues at the last finished epoch", "`curate`"),
    ("eval", "the models already evaluated", "`overlap`"),
)


def render_guarantees() -> str:
    """The guarantees section of docs/workspace.md: what a kill leaves, what `sql` may touch, what
    each stage checks upstream."""
    lines = ["## Guarantees", "",
             "Every file is written to a temporary name and renamed into place; a stage's `_SUCCESS` is written "
             "last and stores the fingerprints of the folders it read. A stage refuses to start, in one line "
             "naming the command to rerun, while a folder it reads is partial (planned, no `_SUCCESS`: a run "
             "was killed or failed) or out of date (a folder *it* read changed since it ran).", "",
             "| stage | a kill -9 leaves | reads (checked complete and current before it runs) |", "| --- | --- | --- |"]
    lines += [f"| {name} | {kill} | {checks} |" for name, kill, checks in GUARANTEES]
    lines += ["", "`clipcurate sql` reads only: SELECT, EXPLAIN and PRAGMA statements, on files inside the "
              "workspace (DuckDB's `allowed_directories`, no external access, locked configuration); COPY, "
              "ATTACH, INSTALL/LOAD, SET and every write are refused. Results leave through `--format` or "
              "`--output FILE` outside the workspace. `clipcurate.duckdb` is refreshed each time a stage "
              "finishes; its views read the published files (`overlap/*.parquet` follow `overlap/current`).",
              "", ""]
    return "\n".join(lines)


def render_markdown() -> str:
    """docs/workspace.md: the guarantees, then every manifest, stage by stage in pipeline order."""
    load()
    doc = mf.render_markdown([s.name for s in STAGES])
    head, sep, rest = doc.partition("\n## ")
    return head + "\n" + render_guarantees() + sep.lstrip("\n") + rest


if __name__ == "__main__":  # pragma: no cover
    print(render_markdown(), end="")
