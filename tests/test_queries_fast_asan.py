"""queries/_fastcount.c under AddressSanitizer and UndefinedBehaviorSanitizer.

The C counter reads every byte of a dump someone downloaded from the internet, so an overrun or
an undefined shift must not hide behind "the outputs were equal". This test compiles the file with
``-fsanitize=address,undefined`` (as ``_fastcount_asan``), then runs random markup, a generated
dump fed in cut pieces, a large-vocabulary dump with many spills and their merge, truncated
records and every HTML5 entity through it, in a subprocess with the sanitizer runtime preloaded;
any report fails the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _runtime(name: str) -> str | None:
    try:
        out = subprocess.run(["gcc", f"-print-file-name={name}"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out if out and os.path.isabs(out) and os.path.exists(out) else None


ASAN, UBSAN = _runtime("libasan.so"), _runtime("libubsan.so")

DRIVER = textwrap.dedent(r'''
    import bz2, ctypes, html, html.entities, random, sys
    assert hasattr(ctypes.CDLL(None), "__asan_init"), "the sanitizer runtime is not loaded"
    sys.path[:0] = [sys.argv[1], sys.argv[2], sys.argv[2] + "/tests"]
    import _fastcount_asan as m
    from clipcurate.queries import wikitext, dump
    from _queries_helpers import write_dump, synthetic_pages
    from pathlib import Path
    m._init(html.entities.html5, html._invalid_charrefs, html._invalid_codepoints)
    import test_queries_fast as t
    rng = random.Random(1)
    for i in range(3000):
        s = t._random_markup(rng, rng.randint(1, 80), 0.2 if i % 2 else 0.0)
        assert m.strip_markup(s) == wikitext.strip_markup(s), repr(s)
        assert m.count_tokens(s) == wikitext.count_tokens(s), repr(s)
        c = m.Counts(); c.add(s); c.take()
    for name in list(html.entities.html5)[:600]:
        m.strip_markup("&" + name + "x&" + name[:-1])
    tmp = Path(sys.argv[3])
    pages = synthetic_pages(40, seed=4, words_per_page=60)
    pages.append({"title": "Odd", "text": "a&amp;b \u00e9\U0001F600 x\r\ny <ref>r</ref> {{a|{{b}}"})
    body = b"".join(dump.body_chunks(dump.Range(str(write_dump(tmp / "d.xml", pages, kind="xml"))), threaded=False))
    for step in (1, 7, 64, 4096):
        c = m.Counts()
        for p in range(0, len(body), step):
            c.feed(body[p:p + step], 500)
            if c.distinct > 500:
                c.spill(8)
        c.finish(True); c.spill(8)
    big = " ".join(f"w{rng.randrange(20000)}" for _ in range(200000)) + " caf\u00e9 \U0001F600x"
    c = m.Counts()
    records = [[] for _ in range(16)]
    for k in range(0, len(big), 5000):
        c.add(big[k:k + 5000])
        if c.distinct > 3000:
            for p, (u, b) in enumerate(zip(*c.spill(16)[:2])):
                records[p] += [u, b]
    c.take()
    # a counter cleared with a page cut in its carry, then reused with its grown tables
    c.add(big[:50000])
    c.feed(body[: len(body) // 2])
    c.clear()
    for k in range(0, len(body), 997):
        c.feed(body[k:k + 997], 300)
        if c.distinct > 300:
            c.spill(4)
    c.finish(True); c.spill(4)
    for recs in records:
        m.merge_records(b"".join(r for r in recs), 1)
        m.merge_records(b"".join(r for r in recs), 3)
    for junk in (b"{", b"{z\x05ab", b"{)\x02z\x01a", b"{l\xff\xff\xff\x7f", b"{z\x01ai\x01"):
        try:
            m.merge_records(junk, 1)
        except m.Unsupported:
            pass
    for bad in (b"<page><ns>0</ns><text>&bogus;</text></page>", b"<page><text>\xff</text></page>", b"junk"):
        try:
            m.Counts().feed(bad)
        except m.Unsupported:
            pass
    print("ok")
''')


@pytest.mark.slow
@pytest.mark.skipif(not (ASAN and UBSAN), reason="gcc's libasan/libubsan not found")
def test_fastcount_is_clean_under_address_and_ub_sanitizers(tmp_path):
    build = tmp_path / "build"
    build.mkdir()
    so = build / ("_fastcount_asan" + sysconfig.get_config_var("EXT_SUFFIX"))
    cmd = ["gcc", "-shared", "-fPIC", "-O1", "-g", "-fno-omit-frame-pointer",
           "-fsanitize=address,undefined", "-fno-sanitize-recover=all",
           "-DFASTCOUNT_MODNAME=_fastcount_asan", f"-I{sysconfig.get_paths()['include']}",
           str(ROOT / "queries" / "_fastcount.c"), "-o", str(so)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    env = {**os.environ, "LD_PRELOAD": f"{ASAN}:{UBSAN}", "ASAN_OPTIONS": "detect_leaks=0",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}
    r = subprocess.run([sys.executable, "-c", DRIVER, str(build), str(ROOT), str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=900, cwd=str(ROOT / "tests"))
    report = r.stderr[-4000:]
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), report
    assert "AddressSanitizer" not in r.stderr and "runtime error" not in r.stderr, report
