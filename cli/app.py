"""The Typer app. Commands live one module per stage (``cli/<stage>.py``, named by the stage list
in clipcurate.stages); each exposes ``register(app)``. This module only wires the global options
(kept in ``ctx.obj``, cli/context.py), error handling and the core commands (cli/core.py)."""

from __future__ import annotations

import importlib
import sys
from typing import Optional

import typer
from rich.markup import escape

from clipcurate import __version__, stages
from clipcurate.core.console import console, out, set_quiet
from clipcurate.core.errors import ClipcurateError

from clipcurate.cli import core
from clipcurate.cli.context import Globals

HELP = """Curate CLIP-style image-text data and measure benchmark leakage (CLIP §5).

Stages run in order — queries → download → bench/embed → overlap → review → curate → train → eval —
and everything lands as Parquet manifests in one workspace folder that `clipcurate sql` queries.

Example:  clipcurate -w ./workspace status
"""

app = typer.Typer(
    name="clipcurate",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "terminal_width": 100, "max_content_width": 100},
)


def _version(value: bool):
    if value:
        out(f"clipcurate {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    workspace: Optional[str] = typer.Option(
        None, "--workspace", "-w", envvar="CLIPCURATE_WORKSPACE",
        help="Workspace folder (default ./workspace)."),
    config: Optional[str] = typer.Option(
        None, "--config", envvar="CLIPCURATE_CONFIG",
        help="Config file (default: clipcurate.toml in the workspace)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress or logs on stderr."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
):
    ctx.obj = Globals(workspace=workspace, config_file=config, quiet=quiet, debug=debug)
    set_quiet(quiet)


# status and sql first, then each stage's commands in pipeline order (the stage list names the modules)
core.register(app)
for _name in stages.cli_modules():
    importlib.import_module(f"clipcurate.cli.{_name}").register(app)


def _error(message: str) -> None:
    """The one error line: printed even under --quiet, never wrapped, markup left as typed."""
    quiet, console.quiet = console.quiet, False
    try:
        console.print(f"[red]error:[/] {escape(message)}", soft_wrap=True)
    finally:
        console.quiet = quiet


def main(argv: list[str] | None = None) -> None:
    """Console entry point: exit 0 ok, 1 runtime error (one line), 2 usage."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    was_quiet = console.quiet  # --quiet is for this call; in-process callers (tests) keep theirs
    try:
        app(args=args, prog_name="clipcurate")
    except ClipcurateError as exc:
        if debug:
            raise
        _error(str(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        sys.exit(130)
    except Exception as exc:  # a bug: still one line unless --debug
        if debug:
            raise
        _error(f"{exc.__class__.__name__}: {exc} (rerun with --debug for the traceback)")
        sys.exit(1)
    finally:
        set_quiet(was_quiet)


if __name__ == "__main__":  # pragma: no cover
    main()
