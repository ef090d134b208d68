"""The ``clipcurate`` command line: a thin Typer layer that parses options and calls ``pipeline``."""
