"""Global options shared by every command (set by the app callback)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from clipcurate.core.config import Config
from clipcurate.core.workspace import Workspace


@dataclasses.dataclass
class State:
    workspace: str | None = None
    config_file: str | None = None
    quiet: bool = False
    debug: bool = False

    def ws(self, must_exist: bool = False, create: bool = False) -> Workspace:
        ws = Workspace.resolve(self.workspace)
        if create:
            ws.create()
        if must_exist:
            ws.require()
        return ws

    def config(self, ws: Workspace | None = None) -> Config:
        ws = ws or self.ws()
        return Config.load(ws.root if ws.exists else None, self.config_file)


state = State()


def path_or_none(p: Path | None) -> str | None:
    return None if p is None else str(p)
