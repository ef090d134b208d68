"""Stages register themselves here: their folder, the manifests they write and the command that
makes them. ``status`` walks this list; :func:`require_manifest` uses it to name the command to run
first when an upstream output is missing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from clipcurate.core import manifest as mf
from clipcurate.core.errors import MissingUpstream
from clipcurate.core.stage import stage_state
from clipcurate.core.workspace import Workspace


@dataclasses.dataclass(frozen=True)
class StageInfo:
    name: str
    folder: str  # relative to the workspace
    command: str  # the command that produces it, e.g. "clipcurate download"
    manifests: tuple[str, ...] = ()


STAGES: dict[str, StageInfo] = {}


def register_stage(name: str, folder: str, command: str, manifests: tuple[str, ...] = ()) -> StageInfo:
    info = StageInfo(name, folder, command, tuple(manifests))
    STAGES[name] = info
    return info


def producer(manifest_name: str) -> StageInfo | None:
    for info in STAGES.values():
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


def status_rows(ws: Workspace) -> list[dict]:
    """One row per registered stage: state, shards done/total, rows per manifest."""
    mf.load_all_stages()
    rows = []
    for info in sorted(STAGES.values(), key=lambda s: mf._stage_order(s.name)):
        state, done, total = stage_state(ws.root / info.folder)
        counts = {m: mf.count_rows(m, ws.root) for m in info.manifests}
        if state == "missing" and any(counts.values()):
            state = "partial"
        rows.append({"stage": info.name, "state": state, "shards_done": done, "shards_total": total,
                     "rows": counts, "command": info.command})
    return rows
