"""What every command starts from: the app's global options, and the workspace and configuration
they resolve to.

The app callback (cli/app.py) keeps the global options in ``ctx.obj`` (a :class:`Globals`); a
command asks for what it needs, once::

    ws, cfg = resolve(ctx, must_exist=True)   # the workspace and its config, read once
    ws = workspace(ctx, must_exist=True)      # commands that read no config

and passes both down to the stage's functions. Reading the config first imports every stage
(:func:`clipcurate.stages.load`), so that every config section is declared and a typo in any
section of clipcurate.toml is reported whichever command runs.
"""

from __future__ import annotations

import dataclasses

import typer

from clipcurate import stages
from clipcurate.core.config import Config
from clipcurate.core.workspace import Workspace


@dataclasses.dataclass(frozen=True)
class Globals:
    """The options before the command: ``clipcurate -w WS --config FILE -q --debug COMMAND``."""

    workspace: str | None = None  # --workspace/-w or $CLIPCURATE_WORKSPACE (default ./workspace)
    config_file: str | None = None  # --config or $CLIPCURATE_CONFIG (default: the workspace's clipcurate.toml)
    quiet: bool = False
    debug: bool = False


def globals_of(ctx: typer.Context) -> Globals:
    """The global options (sub-command contexts inherit the app's ``obj``)."""
    return ctx.obj if isinstance(ctx.obj, Globals) else Globals()


def workspace(ctx: typer.Context, *, must_exist: bool = False, create: bool = False) -> Workspace:
    """The workspace folder; ``create`` makes it, ``must_exist`` is a one-line error when it is missing."""
    ws = Workspace.resolve(globals_of(ctx).workspace)
    if create:
        ws.create()
    if must_exist:
        ws.require()
    return ws


def config(ctx: typer.Context, ws: Workspace) -> Config:
    """The configuration for ``ws``: every stage imported (its sections declared), then the file read."""
    stages.load()
    return Config.load(ws.root if ws.exists else None, globals_of(ctx).config_file)


def resolve(ctx: typer.Context, *, must_exist: bool = False, create: bool = False) -> tuple[Workspace, Config]:
    """The workspace and its configuration, once per command."""
    ws = workspace(ctx, must_exist=must_exist, create=create)
    return ws, config(ctx, ws)
