"""Article titles from Wikimedia's hourly page-view files (``pageviews-YYYYMMDD-HH0000.gz``).

Each line is ``domain_code page_title count_views total_response_size`` (space separated), e.g.
``en Albert_Einstein 173 0``. MetaCLIP's rule, applied here:

- only desktop English Wikipedia lines: domain code exactly ``en`` (``en.m`` is mobile, ``en.d``
  Wiktionary, ... — all skipped);
- only rows with at least ``min_hour_views`` (50) views in that hour;
- no titles containing ``:`` (other namespaces: ``Special:``, ``File:``, ...);
- a title's views are summed over all rows and files; titles with at least ``min_views`` (70) in
  total are kept. Titles are shown with spaces (``_`` → `` ``); percent-escapes, which some rows
  carry, are decoded first so both spellings add up.

Lines that do not have four fields or whose count is not a number are skipped and counted.
"""

from __future__ import annotations

import gzip
import bz2
from pathlib import Path
from urllib.parse import unquote

from clipcurate.core.errors import ClipcurateError


def _open(path: Path):
    with open(path, "rb") as fh:
        head = fh.read(3)
    if head[:2] == b"\x1f\x8b":
        return gzip.open(path, "rb")
    if head == b"BZh":
        return bz2.open(path, "rb")
    return open(path, "rb")


def title_views(paths: list, min_hour_views: int = 50, project: str = "en",
                stats: dict | None = None) -> dict[str, int]:
    """Summed views per title over all files (rows below ``min_hour_views`` not counted)."""
    views: dict[str, int] = {}
    st = {"lines": 0, "bad_lines": 0, "rows_kept": 0}
    proj = project.encode()
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ClipcurateError(f"{path}: page-view file not found")
        try:
            with _open(path) as fh:
                for line in fh:
                    st["lines"] += 1
                    parts = line.split(b" ")
                    if len(parts) < 4:
                        if line.strip():
                            st["bad_lines"] += 1
                        continue
                    if parts[0] != proj:
                        continue
                    try:
                        n = int(parts[2])
                    except ValueError:
                        st["bad_lines"] += 1
                        continue
                    if n < min_hour_views:
                        continue
                    title = parts[1].decode("utf-8", "replace")
                    if "%" in title:
                        title = unquote(title)
                    if ":" in title:
                        continue
                    title = title.replace("_", " ").strip()
                    if not title:
                        continue
                    st["rows_kept"] += 1
                    views[title] = views.get(title, 0) + n
        except (EOFError, OSError) as exc:
            raise ClipcurateError(f"{path}: unreadable page-view file ({exc.__class__.__name__}: {exc}); "
                                  f"download it again") from None
    if stats is not None:
        for k, v in st.items():
            stats[k] = stats.get(k, 0) + v
    return views


def popular_titles(paths: list, min_views: int = 70, min_hour_views: int = 50,
                   stats: dict | None = None) -> list[tuple[str, int]]:
    """``(title, views)`` with at least ``min_views`` summed views, most viewed first."""
    views = title_views(paths, min_hour_views, stats=stats)
    keep = [(t, v) for t, v in views.items() if v >= min_views]
    keep.sort(key=lambda tv: (-tv[1], tv[0]))
    return keep
