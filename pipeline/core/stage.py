"""The stage contract (after datatrove, smaller).

A stage reads the manifests of earlier stages and works shard by shard. For each shard it writes
its outputs atomically (temp file + rename) and then, last, a completion marker
``<shard>.done``. A rerun skips every shard whose marker exists; ``force=True`` redoes them. When all
shards are done the stage writes ``_SUCCESS`` in its folder (last of all), so ``status`` can tell
done / partial / missing. Because markers are written after the data, a kill -9 at any moment
leaves either a finished shard (data + marker) or an unfinished one that the rerun redoes.

    class Download(Stage):
        name = "download"

        def shards(self):                # what to do
            return ["00000", "00001"]

        def run_shard(self, shard):      # do one; write outputs atomically
            ...

    Download(ws, config).run()
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

from clipcurate.core.console import log, progress
from clipcurate.core.io import clean_temp, read_json, write_json, write_text

SUCCESS = "_SUCCESS"
PLAN = "_plan.json"


def marker(folder: Path, shard: str) -> Path:
    return Path(folder) / f"{shard}.done"


def is_done(folder: Path, shard: str) -> bool:
    return marker(folder, shard).exists()


def mark_done(folder: Path, shard: str, info: dict | None = None) -> None:
    """Write the completion marker, atomically, after the shard's data."""
    write_json(marker(folder, shard), {"shard": shard, "finished_at": time.time(), **(info or {})})


def done_info(folder: Path, shard: str) -> dict:
    return read_json(marker(folder, shard))


@dataclasses.dataclass
class StageResult:
    stage: str
    shards_total: int = 0
    shards_done: int = 0
    shards_skipped: int = 0
    counts: dict = dataclasses.field(default_factory=dict)


class Stage:
    """Subclass and set ``name``, ``folder``; implement :meth:`shards` and :meth:`run_shard`."""

    name: str = "stage"
    description: str = ""

    def __init__(self, folder: Path, force: bool = False):
        self.folder = Path(folder)
        self.force = force

    # -- to implement ---------------------------------------------------------------------
    def shards(self) -> Sequence[str]:
        raise NotImplementedError

    def run_shard(self, shard: str) -> dict | None:
        """Do one shard; return counts to store in its marker (and sum in the result)."""
        raise NotImplementedError

    def finish(self, result: StageResult) -> None:
        """Called once all shards are done (merge per-shard outputs here)."""

    # -- the contract ---------------------------------------------------------------------
    def run(self) -> StageResult:
        self.folder.mkdir(parents=True, exist_ok=True)
        clean_temp(self.folder)
        shards = list(self.shards())
        if self.force:
            for s in shards:
                marker(self.folder, s).unlink(missing_ok=True)
            (self.folder / SUCCESS).unlink(missing_ok=True)
        write_json(self.folder / PLAN, {"stage": self.name, "shards": shards})
        result = StageResult(self.name, shards_total=len(shards))
        todo = [s for s in shards if not is_done(self.folder, s)]
        result.shards_skipped = len(shards) - len(todo)
        if result.shards_skipped:
            log(f"{self.name}: {result.shards_skipped}/{len(shards)} shards already done, skipping them")
        if todo:
            (self.folder / SUCCESS).unlink(missing_ok=True)
        with progress(self.description or self.name, total=len(shards)) as advance:
            advance(result.shards_skipped)
            for s in todo:
                info = self.run_shard(s) or {}
                mark_done(self.folder, s, info)
                advance()
        for s in shards:
            info = done_info(self.folder, s)
            for k, v in info.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "finished_at":
                    result.counts[k] = result.counts.get(k, 0) + v
        result.shards_done = len(shards)
        self.finish(result)
        write_text(self.folder / SUCCESS, "")
        return result


def run_shards(folder: Path, shards: Iterable[str], fn: Callable[[str], dict | None], *,
               force: bool = False, description: str = "") -> StageResult:
    """Functional form of :class:`Stage` for stages that are just a loop over shards."""

    class _Fn(Stage):
        name = description or Path(folder).name

        def shards(self):
            return list(shards)

        def run_shard(self, shard):
            return fn(shard)

    _Fn.description = description
    return _Fn(folder, force=force).run()


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


def reset(folder: Path) -> None:
    """Remove a stage's folder entirely (used by --force on stages that are not sharded)."""
    if Path(folder).exists():
        shutil.rmtree(folder)
