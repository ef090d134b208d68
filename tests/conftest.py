"""Shared fixtures: a temporary workspace and an in-process CLI runner."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CLIPCURATE_SHARED", REPO.parent / "shared"))


@dataclasses.dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def ws(tmp_path, monkeypatch):
    """An empty, existing workspace; CLIPCURATE_* variables cleared so tests are hermetic."""
    from clipcurate.core.workspace import Workspace

    for k in list(os.environ):
        if k.startswith("CLIPCURATE_"):
            monkeypatch.delenv(k)
    root = tmp_path / "ws"
    root.mkdir()
    return Workspace(root)


@pytest.fixture
def cli(capsys):
    """``cli("-w", ws, "status")`` → CliResult(code, out, err), through the real entry point."""
    from clipcurate.cli.app import main

    def run(*args) -> CliResult:
        capsys.readouterr()
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture
def shared_fixture():
    """Path to a file under ../shared/fixtures, or skip when the folder is not beside the repo."""

    def get(rel: str) -> Path:
        p = SHARED / "fixtures" / rel
        if not p.exists():
            pytest.skip(f"{p} not present (../shared/fixtures is laid beside the checkout in CI)")
        return p

    return get
