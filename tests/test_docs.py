"""Generated docs must match the code: docs/cli.md (from --help) and docs/workspace.md (from the
manifest registry). Regenerate with:

    python -m clipcurate.cli.docs > docs/cli.md
    python -m clipcurate.stages > docs/workspace.md
"""

from __future__ import annotations

from pathlib import Path


DOCS = Path(__file__).resolve().parents[1] / "docs"


def test_cli_md_is_current():
    from clipcurate.cli.docs import render

    assert (DOCS / "cli.md").read_text() == render(), "docs/cli.md is stale: python -m clipcurate.cli.docs > docs/cli.md"


def test_workspace_md_is_current():
    from clipcurate.stages import render_markdown

    assert (DOCS / "workspace.md").read_text() == render_markdown(), \
        "docs/workspace.md is stale: python -m clipcurate.stages > docs/workspace.md"


def test_every_command_has_an_example():
    from clipcurate.cli.app import app
    from clipcurate.cli.docs import command_paths, help_text

    for path in command_paths(app):
        if not path:
            continue
        text = help_text(path)
        is_group = "Commands:" in text
        if not is_group:
            assert "Example:" in text, f"`clipcurate {' '.join(path)} --help` has no example"


def test_every_manifest_column_documented():
    from clipcurate import stages
    from clipcurate.core import manifest as mf

    stages.load()
    for m in mf.REGISTRY.values():
        assert m.doc.strip(), f"manifest {m.name} has no description"
        for c in m.columns:
            assert c.doc.strip(), f"column {m.name}.{c.name} has no description"
