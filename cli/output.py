"""Data to stdout: one table as a rich table, CSV or JSON lines (logs go to stderr, core.console)."""

from __future__ import annotations

import csv
import io
import json
import sys

from rich.console import Console
from rich.table import Table

from clipcurate.core.console import out


def echo_table(columns: list[str], rows: list, fmt: str = "table", title: str | None = None) -> None:
    """Data to stdout as a rich table, CSV or JSON lines."""
    if fmt == "json":
        for r in rows:
            out(json.dumps(dict(zip(columns, r)), default=str))
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(columns)
        w.writerows(rows)
        sys.stdout.write(buf.getvalue())
    else:
        t = Table(title=title, show_lines=False)
        for c in columns:
            t.add_column(str(c))
        for r in rows:
            t.add_row(*["" if v is None else str(v) for v in r])
        Console(file=sys.stdout, width=200 if not sys.stdout.isatty() else None).print(t)
