"""The workspace: one folder, one subfolder per stage.

    workspace/
      clipcurate.toml      optional config (see clipcurate.core.config)
      clipcurate.duckdb    DuckDB views over every manifest (refreshed as each stage finishes)
      queries/ candidates/ pool/ benchmarks/ embed/ overlap/ review/ curate/ train/ eval/

Resolution order for the folder: ``--workspace/-w`` > ``CLIPCURATE_WORKSPACE`` > ``./workspace``.
"""

from __future__ import annotations

import os
from pathlib import Path

from clipcurate.core.errors import ClipcurateError

ENV_VAR = "CLIPCURATE_WORKSPACE"
DEFAULT = "workspace"


class Workspace:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().absolute()

    @classmethod
    def resolve(cls, option: str | os.PathLike | None = None) -> "Workspace":
        return cls(option or os.environ.get(ENV_VAR) or DEFAULT)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    @property
    def exists(self) -> bool:
        return self.root.is_dir()

    def require(self) -> "Workspace":
        """Raise a one-line error when the workspace folder does not exist."""
        if not self.root.is_dir():
            raise ClipcurateError(
                f"workspace {str(self.root)!r} does not exist: pass --workspace DIR, set {ENV_VAR}, "
                f"or run a stage that creates it (e.g. `clipcurate demo`)")
        return self

    def create(self) -> "Workspace":
        self.root.mkdir(parents=True, exist_ok=True)
        return self

    def stage_dir(self, stage: str, create: bool = False) -> Path:
        p = self.root / stage
        if create:
            p.mkdir(parents=True, exist_ok=True)
        return p

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def config_file(self) -> Path:
        return self.root / "clipcurate.toml"

    @property
    def duckdb_file(self) -> Path:
        return self.root / "clipcurate.duckdb"
