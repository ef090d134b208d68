"""The stage list as core sees it: each stage's folder, the command that fills it and the manifests
it writes.

The list itself lives one layer up, in :mod:`clipcurate.stages`, and core may not import it (core
is the bottom layer). So the list is handed down: importing :mod:`clipcurate.stages` calls
:func:`use_stages` with it, and :func:`require_manifest` reads it to name the command to run first
when an upstream output is missing. :func:`status_row` is one line of ``clipcurate status``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

from clipcurate.core import manifest as mf
from clipcurate.core.errors import MissingUpstream
from clipcurate.core.stage import stage_state
from clipcurate.core.workspace import Workspace


@dataclasses.dataclass(frozen=True)
class StageInfo:
    """One entry of the stage list (:data:`clipcurate.stages.STAGES`)."""

    name: str  # the stage's name in `clipcurate status` and in its manifests' `stage`
    folder: str  # its folder, relative to the workspace
    command: str  # the command that makes its outputs, e.g. "clipcurate download"
    manifests: tuple[str, ...] = ()  # the manifests it writes
    package: str = ""  # its room: the sub-package clipcurate.<package>
    # modules (under clipcurate) that declare its manifests, config sections and SQL reports when imported
    modules: tuple[str, ...] = ()
    cli: str | None = None  # clipcurate.cli.<cli> holds its commands (``register(app)``)


# The stage list, in pipeline order, as handed down by clipcurate.stages (empty until it is imported).
# Filled in place, so a module that imported the name sees the list too.
STAGES: list[StageInfo] = []


# stage name -> a function of the workspace giving one line that `status` shows beside the row
# counts (e.g. overlap's "unreviewed=12 (40 pending pairs)"); registered by the stage's module.
NOTES: dict[str, Callable[[Workspace], str]] = {}


def status_note(stage: str, fn: Callable[[Workspace], str]) -> None:
    """Register the line ``clipcurate status`` shows for ``stage`` beside its row counts."""
    NOTES[stage] = fn


def use_stages(stages: Sequence[StageInfo]) -> None:
    """Hand the stage list down to core (clipcurate.stages does this when it is imported)."""
    STAGES[:] = stages


def producer(manifest_name: str) -> StageInfo | None:
    """The stage that writes a manifest, or None when the stage list does not name one."""
    for info in STAGES:
        if manifest_name in info.manifests:
            return info
    return None


def require_manifest(ws: Workspace, name: str) -> list[Path]:
    """The files of a manifest, or a one-line error naming the command that makes them."""
    m = mf.get(name)
    files = m.files(ws.root)
    if not files:
        info = producer(name)
        raise MissingUpstream(f"{name} manifest ({ws.root / m.glob})", info.command if info else f"the {m.stage} stage")
    return files


def status_row(ws: Workspace, info: StageInfo) -> dict:
    """One stage's line of ``clipcurate status``: state (done / partial / missing), shards done and
    planned, rows per manifest. A folder without markers whose manifests have rows is partial."""
    state, done, total = stage_state(ws.root / info.folder)
    counts = {m: mf.count_rows(m, ws.root) for m in info.manifests}
    if state == "missing" and any(counts.values()):
        state = "partial"
    note = NOTES[info.name](ws) if info.name in NOTES and any(counts.values()) else ""
    return {"stage": info.name, "state": state, "shards_done": done, "shards_total": total,
            "rows": counts, "note": note, "command": info.command}
