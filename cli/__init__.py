"""The ``clipcurate`` command line: a thin Typer layer that parses options, calls the stages' Python
functions and prints what they return.

cli/app.py is the app; cli/context.py resolves the workspace and config once per command;
cli/options.py holds the options several commands share; cli/<stage>.py holds each stage's commands.

Start-up: every ``clipcurate`` call imports all of these modules (Typer needs every command's
options, even for ``--help``), but no stage module. The stage modules are imported inside the
command that runs (``# on use, not at start-up``): all of them together take 0.37 s to import,
which would double ``clipcurate --help`` (measured on 2 cores: 0.37 s without them, 0.74 s with).
"""

if __name__ != "clipcurate.cli":  # the folder was put on sys.path by hand: there is one import name
    raise ImportError(f"import clipcurate.cli, not {__name__} (this folder is installed as clipcurate.cli: pip install -e .)")
