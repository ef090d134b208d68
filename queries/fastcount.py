"""The compiled counting path of `queries build` (queries/_fastcount.c), with a pure-Python fallback.

``_fastcount`` does, per page, exactly what :func:`queries.wikitext.strip_markup` then
:func:`queries.wikitext.count_tokens` then ``Counter.update`` of words and word pairs do, in C,
without the GIL. The Python functions stay the reference: tests/test_queries_fast.py compares the
two on the real dump fragment, on generated dumps and on random markup, character for character.

The extension is built by ``pip install`` (setup.py, a C compiler is needed); where it could not be
built, :data:`AVAILABLE` is False and counting uses the Python path (same counts; `queries build`
counts 3-5x slower, docs/benchmarks.md).
``CLIPCURATE_PURE_PYTHON=1`` forces the Python path (for comparisons and benchmarks).
"""

from __future__ import annotations

import html
import html.entities
import os

try:
    from clipcurate.queries import _fastcount
except ImportError:  # not built (no compiler at install time)
    _fastcount = None
else:
    # the same code built with -mavx2 (setup.py), when this CPU can run it
    if _fastcount.cpu_has_avx2() and os.environ.get("CLIPCURATE_NO_AVX2", "") in ("", "0"):
        try:
            from clipcurate.queries import _fastcount_avx2 as _fastcount
        except ImportError:
            pass
    # html.unescape's own tables, so that entities decode exactly as html.unescape does
    _fastcount._init(html.entities.html5, html._invalid_charrefs, html._invalid_codepoints)

#: which build is in use: "clipcurate.queries._fastcount_avx2", "clipcurate.queries._fastcount" or None
BUILD = _fastcount.__name__ if _fastcount is not None else None

BUILT = _fastcount is not None
#: raised by the C page scanner for XML it leaves to expat (the range is then read again with expat)
Unsupported = _fastcount.Unsupported if BUILT else type("Unsupported", (Exception,), {})
AVAILABLE = BUILT and os.environ.get("CLIPCURATE_PURE_PYTHON", "") not in ("1", "true", "yes")


def strip_markup(text: str) -> str:
    """C version of :func:`queries.wikitext.strip_markup` (for tests and tools)."""
    return _fastcount.strip_markup(text)


def count_tokens(text: str) -> list[str]:
    """C version of :func:`queries.wikitext.count_tokens` (for tests and tools)."""
    return _fastcount.count_tokens(text)


def merge_records(data: bytes, min_count: int) -> tuple[dict, int]:
    """The spill records in ``data`` summed: (entries with count >= min_count, sum of all counts)."""
    return _fastcount.merge_records(data, min_count)


def new_counts():
    """A C counter: ``add(page_wikitext) -> distinct entries``, ``take() -> (words, pairs, n_words, n_pairs)``."""
    return _fastcount.Counts()
