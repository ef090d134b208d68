"""The ``clipcurate`` command line: a thin Typer layer that parses options and calls ``pipeline``."""

if __name__ != "clipcurate.cli":  # the folder was put on sys.path by hand: there is one import name
    raise ImportError(f"import clipcurate.cli, not {__name__} (this folder is installed as clipcurate.cli: pip install -e .)")
