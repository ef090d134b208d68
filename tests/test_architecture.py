"""The house rules, checked: one import name, and the import contracts in .importlinter.

`lint-imports` reads the installed package from disk (install.sh installs it in setuptools' strict
editable mode, a tree of links laid out like the wheel), so the contracts see clipcurate.cli and
clipcurate.queries, which live in the repository's cli/ and queries/ folders.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))


def _lint(config: Path) -> subprocess.CompletedProcess:
    return subprocess.run([LINT, "--config", str(config), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_import_contracts_hold():
    r = _lint(REPO / ".importlinter")
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "0 broken" in r.stdout


def test_removing_an_exception_breaks_a_contract(tmp_path):
    """The contracts are not vacuous: drop the first documented exception and lint-imports fails."""
    cp = configparser.ConfigParser()
    cp.read(REPO / ".importlinter")
    sections = [s for s in cp.sections() if cp.has_option(s, "ignore_imports") and cp.get(s, "ignore_imports").strip()]
    assert sections, "no contract has exceptions to remove"
    sec = sections[0]
    lines = [ln for ln in cp.get(sec, "ignore_imports").splitlines() if ln.strip()]
    cp.set(sec, "ignore_imports", "\n".join(lines[1:]))
    cfg = tmp_path / "importlinter.ini"
    with open(cfg, "w") as fh:
        cp.write(fh)
    r = _lint(cfg)
    assert r.returncode != 0 and "BROKEN" in r.stdout, (lines[0], r.stdout[-2000:])


@pytest.mark.parametrize("name", ["pipeline", "cli", "queries"])
def test_the_source_folders_are_not_import_names(name, tmp_path):
    """Even from the repository root, only `clipcurate` imports (the folders refuse their own names)."""
    r = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode != 0 and "ImportError" in r.stderr, r.stderr
    r = subprocess.run([sys.executable, "-c", "import clipcurate.cli.app, clipcurate.queries.stage"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.slow
def test_the_wheel_installs_one_package(tmp_path):
    """`pip install .` adds exactly one top-level package: the wheel holds clipcurate/ and its dist-info."""
    import zipfile

    src = tmp_path / "src"
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, src / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                        "-w", str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("clipcurate-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"clipcurate", "clipcurate-0.1.0.dist-info"}
    for want in ("clipcurate/__main__.py", "clipcurate/cli/app.py", "clipcurate/queries/stage.py",
                 "clipcurate/core/model_configs/clipcurate-tiny.json", "clipcurate/review/app.tcss"):
        assert want in names, want
    assert any(n.startswith("clipcurate/queries/_fastcount") and n.endswith(".so") for n in names)
    entry = zipfile.ZipFile(wheel).read("clipcurate-0.1.0.dist-info/entry_points.txt").decode()
    assert "clipcurate = clipcurate.cli.app:main" in entry


def test_modules_and_functions_stay_small():
    """No module over ~600 lines; a function over ~80 lines says in its docstring why it is one piece
    (the phrase "one piece because")."""
    import ast

    too_long = []
    for folder in ("pipeline", "queries", "cli"):
        for path in sorted((REPO / folder).rglob("*.py")):
            src = path.read_text("utf-8")
            if len(src.splitlines()) > 620:
                too_long.append(f"{path.relative_to(REPO)}: {len(src.splitlines())} lines")
            for node in ast.walk(ast.parse(src)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > 85 and "one piece because" not in (ast.get_docstring(node) or ""):
                        too_long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}(): {n} lines")
    assert not too_long, "\n".join(too_long)
