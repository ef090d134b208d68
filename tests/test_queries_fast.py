"""The C counting path (queries/_fastcount.c) against the Python reference (queries/wikitext.py,
expat, Counter): the same plain text, the same tokens and the same merged counts, character for
character, on the real dump fragment, on generated dumps and on random markup; and every XML the C
page scanner does not take falls back to expat with the same result or the same error."""

from __future__ import annotations

import bz2
from collections import Counter
import html
import html.entities
import importlib
import os
import platform
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from _queries_helpers import FIXTURE, write_dump, synthetic_pages, HEADER, FOOTER, page_xml
from clipcurate.core.errors import ClipcurateError
from clipcurate.queries import counting
from clipcurate.queries import dump
from clipcurate.queries import fastcount
from clipcurate.queries import wikitext

# No skip when the extension is missing: install.sh builds it, and a failed build would silently
# make `queries build` ~5x slower, so these tests fail instead (test_extension_built says why).


def test_extension_built():
    assert fastcount.BUILT, ("clipcurate.queries._fastcount is not built: run ./install.sh (needs a C compiler); "
                             "`python setup.py build_ext --inplace` shows the compiler error")
    if platform.machine().lower() in ("x86_64", "amd64"):
        importlib.import_module("clipcurate.queries._fastcount_avx2")  # built on every x86-64 (setup.py)


def test_avx2_build_equals_the_portable_one(tmp_path):
    base = importlib.import_module("clipcurate.queries._fastcount")
    if not base.cpu_has_avx2():
        pytest.skip("this CPU has no AVX2")
    avx = importlib.import_module("clipcurate.queries._fastcount_avx2")
    for m in (base, avx):
        m._init(html.entities.html5, html._invalid_charrefs, html._invalid_codepoints)
    rng = random.Random(7)
    for _ in range(3000):
        s = _random_markup(rng, rng.randint(1, 80), 0.1)
        assert avx.strip_markup(s) == base.strip_markup(s), repr(s)
    path = write_dump(tmp_path / "d.xml", synthetic_pages(60, seed=3), kind="xml")
    body = b"".join(dump.body_chunks(dump.Range(str(path)), threaded=False))
    results = []
    for m in (base, avx):
        c = m.Counts()
        c.feed(body)
        results.append((c.finish(True), c.take()))
    assert results[0] == results[1]


# -- the character classes the C code hard-codes are Python's ----------------------------------------

def test_case_folds_match_re_over_every_code_point():
    # fold_eq() in the C code: under re.IGNORECASE these are the only non-ASCII characters that
    # match an ASCII letter of a tag name.
    letters = sorted(set("".join(["ref", "math", "gallery", "timeline", "score", "syntaxhighlight",
                                  "source", "chem", "ce", "hiero", "imagemap", "mapframe", "maplink",
                                  "graph", "templatedata", "references", "inputbox", "categorytree",
                                  "br"])))
    expected = {"i": {0x130, 0x131}, "k": {0x212A}, "s": {0x17F}}
    for L in letters:
        pat = re.compile("(?i)" + L)
        found = {c for c in range(0x80, sys.maxunicode + 1) if pat.fullmatch(chr(c))}
        assert found == expected.get(L, set()), L
    # drop_namespace(): the only non-ASCII character whose lowercase is all ASCII
    assert [c for c in range(0x80, sys.maxunicode + 1)
            if all(ord(x) < 128 for x in chr(c).lower())] == [0x212A]


def test_backreference_case_rule_matches_re():
    # </\1> under re.I compares simple lowercase forms
    for open_, close in [("maplin\u212a", "maplink"), ("maplink", "maplin\u212a"),
                         ("\u017fource", "source"), ("source", "\u017fource"), ("REF", "ref"),
                         ("t\u0130meline", "timeline"), ("t\u0130meline", "t\u0131meline"),
                         ("timeline", "t\u0131meline")]:
        s = f"a <{open_}>x</{close}> b <ref>y</ref> c"
        assert fastcount.strip_markup(s) == wikitext.strip_markup(s), (open_, close)


# -- strip_markup and count_tokens: C == Python ----------------------------------------------------

@pytest.mark.skipif(not FIXTURE.is_file(), reason="real dump fragment not found (../shared/fixtures)")
def test_real_fragment_strips_and_tokenizes_identically():
    pages = [p.text for p in dump.iter_pages(FIXTURE)]
    assert pages
    for text in pages:
        plain = wikitext.strip_markup(text)
        assert fastcount.strip_markup(text) == plain
        assert fastcount.count_tokens(plain) == wikitext.count_tokens(plain)


PIECES = ["<!--", "-->", "<", ">", "/>", "/", "ref", "REF", "references", "math", "ce", "chem",
          "maplin\u212a", "\u017fource", "t\u0131meline", "timeline", "</", "br", "BR", "<br/>",
          "<br >", "{{", "}}", "{|", "|}", "|}}", "|", "[[", "]]", "[", "]", ":", "File:", "file",
          "Category:", "en:", "de-at:", "simple:", "zh-min-nan:", "\u212aa:", "http://", "https://",
          "ftp://", "//", "http:", "'", "''", "'''", "\u2019", "-", "__TOC__", "__", "_", "&", "&amp;",
          "&nbsp;", "&#123;", "&#x41;", "&#X;", "&#", "&notit;", "&notin", "&amp", "&#128;", "&#0;",
          "&#xD800;", "&#99999999999;", "&#x110000;", "&#11;", " ", "  ", "\n", "\t", "\u00a0",
          "\u2009", "word", "Paris", "don't", "well-known", "1990s", "\u65e5\u672c", "\u00e9",
          "\u0663", "x", "a", "=", ";", "#", ".", ",", "(", ")", '"', "\r"]


def _random_markup(rng: random.Random, n: int, wild: float) -> str:
    out = []
    for _ in range(n):
        if rng.random() < wild:  # any code point (surrogates excluded: not in page text)
            c = rng.randrange(0x110000)
            out.append(chr(c if not 0xD800 <= c <= 0xDFFF else 0x41))
        else:
            out.append(rng.choice(PIECES))
    return "".join(out)


@pytest.mark.parametrize("seed,wild", [(0, 0.0), (1, 0.0), (2, 0.3)])
def test_random_markup_strips_and_tokenizes_identically(seed, wild):
    rng = random.Random(seed)
    for _ in range(4000):
        s = _random_markup(rng, rng.randint(1, 50), wild)
        assert fastcount.strip_markup(s) == wikitext.strip_markup(s), repr(s)
        assert fastcount.count_tokens(s) == wikitext.count_tokens(s), repr(s)


def test_html_entities_decode_as_html_unescape():
    names = list(html.entities.html5)
    rng = random.Random(3)
    for name in rng.sample(names, 400) + ["amp", "amp;", "notin", "notit;", "ampx;"]:
        for s in (f"&{name}", f"x&{name}y", f"&{name};&{name}", f"&{name[:-1]}"):
            assert fastcount.strip_markup(s) == wikitext.strip_markup(s), repr(s)
    for num in [0, 9, 13, 65, 128, 150, 159, 160, 0xD800, 0xDFFF, 0xFDD0, 0xFFFE, 0x10FFFF, 0x110000, 10**20]:
        for s in (f"&#{num};", f"&#{num}", f"&#x{num:x};", f"&#X{num:X}z"):
            assert fastcount.strip_markup(s) == wikitext.strip_markup(s), repr(s)


# -- whole ranges: C reader + C counter == expat + Python ---------------------------------------------

def _merged(out, partitions):
    uni, n = counting.merge_unigrams([out], partitions, 1)
    return uni, dict(counting.merge_bigrams([out], partitions, 1)), n


def _both(rng: dump.Range, tmp_path, partitions=8, spill_entries=10**9):
    ref = counting.count_range(rng, str(tmp_path / "ref"), partitions, spill_entries, fast=False)
    fast = counting.count_range(rng, str(tmp_path / "fast"), partitions, spill_entries, fast=True)
    return ref, fast, _merged(tmp_path / "ref", partitions), _merged(tmp_path / "fast", partitions)


KEYS = ("pages", "articles", "redirects", "other_namespaces", "bytes", "words", "bigrams")


@pytest.mark.skipif(not FIXTURE.is_file(), reason="real dump fragment not found (../shared/fixtures)")
def test_real_fragment_counts_identically(tmp_path):
    ref, fast, a, b = _both(dump.Range(str(FIXTURE)), tmp_path)
    assert fast["reader"] == "c" and "fallback" not in fast
    assert ref["reader"] == "expat" and ref["counter"] == "python"
    assert {k: ref[k] for k in KEYS} == {k: fast[k] for k in KEYS}
    assert a == b and a[2] > 10_000


@pytest.mark.parametrize("kind", ["xml", "bz2", "multistream"])
def test_generated_dumps_count_identically_with_spills(tmp_path, kind):
    pages = synthetic_pages(120, seed=5)
    pages += [
        {"title": "Entities", "text": "Caf\u00e9 na\u00efve \u00bd &amp; 5 < 6 > 4 \"q\" 'a' \U0001F600 \u65e5\u672c\u8a9e\r\nx\ry"},
        {"title": "Empty", "text": ""},
        {"title": "Unicode joiners", "text": "rock\u2019n\u2019roll well-known don't \u0663\u0664 \u00b2 word_word"},
    ]
    name = "d-multistream.xml.bz2" if kind == "multistream" else f"d.xml{'.bz2' if kind == 'bz2' else ''}"
    path = write_dump(tmp_path / name, pages, kind=kind, pages_per_stream=17)
    ranges = dump.plan_ranges(path, 2000) if kind == "multistream" else [dump.Range(str(path))]
    assert len(ranges) > 1 or kind != "multistream"
    for i, rng in enumerate(ranges):
        ref, fast, a, b = _both(rng, tmp_path / f"r{i}", spill_entries=300)
        assert fast["reader"] == "c" and "fallback" not in fast, fast
        assert fast["spills"] > 1
        assert {k: ref[k] for k in KEYS} == {k: fast[k] for k in KEYS}
        assert a == b


def _dump_text(pages_xml: str, between: str = "") -> bytes:
    """A dump of ``pages_xml`` with ``between`` inserted after the first page."""
    first, rest = pages_xml.split("</page>\n", 1)
    return (HEADER.format(v="0.10") + first + "</page>\n" + between + rest + FOOTER).encode()


# well-formed XML that MediaWiki does not write: the C scanner hands the range to expat
ODD_BUT_VALID = {
    "comment between pages": lambda p: _dump_text(p, "  <!-- a comment -->\n"),
    "text between pages": lambda p: _dump_text(p, "  stray words\n"),
    "CDATA in text": lambda p: _dump_text(p.replace("Zzinfobox", "<![CDATA[Zz & cdata]]>", 1)),
    "element inside text": lambda p: _dump_text(p.replace("Zzinfobox", "<b>Zzbold</b>", 1)),
    "ns with an entity": lambda p: _dump_text(p.replace("<ns>0</ns>", "<ns>&#48;</ns>", 1)),
    "processing instruction in a page": lambda p: _dump_text(p.replace("<revision>", "<?pi x?><revision>", 1)),
}

# well-formed XML that the C scanner reads itself
PLAIN_VALID = {
    "character references": lambda p: _dump_text(p.replace("Zzinfobox", "&#x9;tab&#65;&#x1F600;&#13;", 1)),
    "all five entities": lambda p: _dump_text(p.replace("Zzinfobox", "&apos;&quot;&lt;&gt;&amp;", 1)),
    "CRLF and CR line ends": lambda p: _dump_text(p.replace("Zzinfobox", "a\r\nb\rc\r\n", 1)),
    "attributes with > in quotes": lambda p: _dump_text(p.replace("<text ", '<text note="a>b" ', 1)),
    "self-closing text": lambda p: _dump_text(p.replace("</revision>", '<text deleted="deleted" /></revision>', 1)),
}


def _small_dump(tmp_path, edit) -> Path:
    """Six generated pages, the XML changed by ``edit``, bz2-compressed."""
    pages = synthetic_pages(6, seed=9)
    xml = "".join(page_xml(p["title"], p["text"], p.get("ns", 0), p.get("redirect"), i + 1)
                  for i, p in enumerate(pages))
    path = tmp_path / "small.xml.bz2"
    path.write_bytes(bz2.compress(edit(xml)))
    return path


@pytest.mark.parametrize("case,reader", [(k, "c") for k in sorted(PLAIN_VALID)]
                         + [(k, "expat") for k in sorted(ODD_BUT_VALID)])
def test_valid_xml_counts_the_same(tmp_path, case, reader):
    # PLAIN_VALID is read by the C scanner; ODD_BUT_VALID falls back to expat, with a reason
    path = _small_dump(tmp_path, {**PLAIN_VALID, **ODD_BUT_VALID}[case])
    ref, fast, a, b = _both(dump.Range(str(path)), tmp_path)
    assert fast["reader"] == reader and bool(fast.get("fallback")) == (reader == "expat"), fast
    assert {k: ref[k] for k in KEYS} == {k: fast[k] for k in KEYS}
    assert a == b


BROKEN = {
    "unknown entity": lambda p: _dump_text(p.replace("Zzinfobox", "&bogus;", 1)),
    "unclosed element inside text": lambda p: _dump_text(p.replace("Zzinfobox", "<b>x", 1)),
    "cut in a page": lambda p: _dump_text(p)[:-300],
    "invalid UTF-8": lambda p: _dump_text(p).replace(b"Zzinfobox", b"Zz\xff\xfebox", 1),
    "control character": lambda p: _dump_text(p).replace(b"Zzinfobox", b"Zz\x01box", 1),
    "character reference to a control character": lambda p: _dump_text(p.replace("Zzinfobox", "&#1;", 1)),
    "a second root": lambda p: _dump_text(p) + b"<mediawiki></mediawiki>",
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_xml_gives_expats_error(tmp_path, case):
    path = _small_dump(tmp_path, BROKEN[case])
    errors = []
    for fast in (False, True):
        with pytest.raises(ClipcurateError) as exc:
            counting.count_range(dump.Range(str(path)), str(tmp_path / f"o{fast}"), fast=fast)
        errors.append(str(exc.value))
    assert errors[0] == errors[1]
    assert "malformed XML" in errors[0] or "not XML" in errors[0]


def test_pure_python_switch():
    code = "from clipcurate.queries import fastcount; print(fastcount.BUILT, fastcount.AVAILABLE)"
    env = {**os.environ, "CLIPCURATE_PURE_PYTHON": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.stdout.split() == ["True", "False"], out.stderr


def test_counts_object_contract():
    c = fastcount.new_counts()
    assert c.add("[[a|Hello]] world. Hello world") == c.distinct > 0
    words, pairs, n_words, n_pairs = c.take()
    assert words == {"Hello": 2, "world": 2}
    assert pairs == {("Hello", "world"): 2}
    assert (n_words, n_pairs) == (4, 2)
    assert c.distinct == 0 and c.take()[:2] == ({}, {})
    with pytest.raises(TypeError):
        c.add(b"bytes")
    with pytest.raises(fastcount.Unsupported):
        c.feed(b"<notapage>")


def test_clear_forgets_everything_but_keeps_capacity():
    c = fastcount.new_counts()
    words = " ".join(f"w{i}" for i in range(50_000))  # grows both tables well past their start size
    c.add(words)
    c.feed(b"<page><title>T</title><ns>0</ns><revision><text>cut he")  # a page cut: bytes carried
    c.clear()
    assert c.distinct == 0
    assert c.finish(False) == {"pages": 0, "articles": 0, "redirects": 0, "other_namespaces": 0}
    assert c.add("[[a|Hello]] world. Hello world") == 3
    assert c.take() == ({"Hello": 2, "world": 2}, {("Hello", "world"): 2}, 4, 2)


def test_a_worker_reuses_its_counter_across_ranges_and_counts_the_same(tmp_path):
    path = write_dump(tmp_path / "d-multistream.xml.bz2", synthetic_pages(150, seed=9),
                      kind="multistream", pages_per_stream=10)
    ranges = dump.plan_ranges(path, 1500)
    assert len(ranges) > 2
    counting.release_counters()
    fresh = []
    for i, rng in enumerate(ranges):  # a fresh counter for each range
        counting.count_range(rng, str(tmp_path / f"fresh{i}"), 8, 200, fast=True)
        fresh.append(_merged(tmp_path / f"fresh{i}", 8))
        counting.release_counters()
    used = set()
    for i, rng in enumerate(ranges):  # one counter, handed from range to range
        st = counting.count_range(rng, str(tmp_path / f"reused{i}"), 8, 200, fast=True)
        assert st["spills"] > 1 and len(counting._idle_counters) == 1
        used.add(id(counting._idle_counters[0]))
        assert _merged(tmp_path / f"reused{i}", 8) == fresh[i]
    assert len(used) == 1
    counting.release_counters()


def test_a_bz2_bomb_is_read_in_bounded_chunks(tmp_path):
    # 64 MB of one byte compress to ~100 bytes; every read hands on at most MAX_OUT bytes
    bomb = tmp_path / "bomb.xml.bz2"
    bomb.write_bytes(bz2.compress(b"<" * (64 << 20)))
    sizes = [len(c) for c in dump._file_chunks(bomb)]
    assert sum(sizes) == 64 << 20
    assert max(sizes) <= dump.MAX_OUT


def test_pages_cut_anywhere_between_feeds_count_the_same(tmp_path):
    # the scanner must wait for the rest of a page wherever a chunk ends: in a tag, an attribute,
    # an entity, a UTF-8 sequence, between "\r" and "\n", in "</page>" ...
    pages = synthetic_pages(8, seed=2, words_per_page=40)
    pages.append({"title": "Odd", "text": "a&amp;b \u00e9\u65e5\U0001F600 x\r\ny \"q\" <ref>r</ref>"})
    path = write_dump(tmp_path / "d.xml", pages, kind="xml")
    body = b"".join(dump.body_chunks(dump.Range(str(path)), threaded=False))
    whole = fastcount.new_counts()
    whole.feed(body)
    expected = (whole.finish(True), whole.take())
    rng = random.Random(0)
    for sizes in ([rng.randint(1, 9) for _ in range(64)], [7], [1]):
        c = fastcount.new_counts()
        pos, k = 0, 0
        while pos < len(body):
            step = sizes[k % len(sizes)]
            c.feed(body[pos:pos + step])
            pos += step
            k += 1
        assert (c.finish(True), c.take()) == expected


@pytest.mark.parametrize("seed,wild", [(4, 0.0), (5, 0.3)])
def test_random_markup_counts_as_the_reference(seed, wild):
    # the production path: Counts.add (strip, tokenize, count in C) vs wikitext + Counter
    rng = random.Random(seed)
    for _ in range(1500):
        s = _random_markup(rng, rng.randint(1, 60), wild)
        toks = wikitext.count_tokens(wikitext.strip_markup(s))
        words = Counter(t for t in toks if t[:1].isalnum())
        pairs = Counter((a, b) for a, b in zip(toks, toks[1:]) if a[:1].isalnum() and b[:1].isalnum())
        c = fastcount.new_counts()
        c.add(s)
        got_words, got_pairs, n_words, n_pairs = c.take()
        assert got_words == dict(words), repr(s)
        assert got_pairs == dict(pairs), repr(s)
        assert (n_words, n_pairs) == (sum(words.values()), sum(pairs.values()))


def test_spill_records_are_marshal_of_the_same_dicts():
    # partition of a word = zlib.crc32(utf-8) % P, pairs with their first word; each record is
    # what marshal.dumps gives for the same dict (ASCII, non-ASCII and 300-character words)
    import marshal
    import zlib
    text = ("Caf\u00e9 na\u00efve \U0001F600 x\u0663 " * 3 + " ".join(f"w{i} w{i + 1}" for i in range(300))
            + " A" + "b" * 300 + " long-" + "\u00e9" * 200)
    P = 7
    a, b = fastcount.new_counts(), fastcount.new_counts()
    a.add(text)
    b.add(text)
    words, pairs, nw, npairs = a.take()
    uw, up, nw2, np2 = b.spill(P)
    assert (nw, npairs) == (nw2, np2) and b.distinct == 0
    part = {w: zlib.crc32(w.encode("utf-8", "surrogatepass")) % P for w in words}
    for p in range(P):
        want_w = {w: n for w, n in words.items() if part[w] == p}
        want_p = {k: n for k, n in pairs.items() if part[k[0]] == p}
        assert (marshal.loads(uw[p]) if uw[p] else {}) == want_w
        assert (marshal.loads(up[p]) if up[p] else {}) == want_p
        assert not uw[p] or marshal.loads(uw[p] + b"junk") == want_w  # one record, self-delimiting
    # one partition: everything in one record each
    c = fastcount.new_counts()
    c.add("x y " * 10)
    uw, up, _, _ = c.spill(1)
    assert marshal.loads(uw[0]) == {"x": 10, "y": 10} and marshal.loads(up[0]) == {("x", "y"): 10, ("y", "x"): 9}


def test_c_merge_equals_the_python_merge(tmp_path):
    # two ranges, several spills each: merge_partition_min (C, only kept entries become objects)
    # against merge_partition (marshal.load + dict sums) on the same files
    pages = synthetic_pages(150, seed=11)
    dirs = []
    for i, half in enumerate((pages[:75], pages[75:])):
        path = write_dump(tmp_path / f"h{i}.xml.bz2", half)
        out = tmp_path / f"c{i}"
        st = counting.count_range(dump.Range(str(path)), str(out), 8, 400, fast=True)
        assert st["spills"] > 2
        dirs.append(out)
    for name in [f"u{p:03d}.bin" for p in range(8)] + [f"b{p:03d}.bin" for p in range(8)]:
        ref = counting.merge_partition(dirs, name)
        for m in (1, 2, 5):
            assert counting.merge_partition_min(dirs, name, m) == (
                {k: c for k, c in ref.items() if c >= m}, sum(ref.values()))
    # files of the pure-Python path (marshal.dump, with references) are merged the Python way
    ref_dir = tmp_path / "ref"
    counting.count_range(dump.Range(str(tmp_path / "h0.xml.bz2")), str(ref_dir), 8, 400, fast=False)
    raw = counting.partition_bytes(ref_dir, "b000.bin")
    assert raw
    with pytest.raises(fastcount.Unsupported):
        fastcount.merge_records(raw, 1)
    part = counting.merge_partition([ref_dir], "b000.bin")
    assert counting.merge_partition_min([ref_dir], "b000.bin", 2) == (
        {k: c for k, c in part.items() if c >= 2}, sum(part.values()))


def test_merge_records_edges():
    import marshal
    assert fastcount.merge_records(b"", 1) == ({}, 0)
    for junk in (b"{", b"{z\x05ab", b"x", b"{z\x01ai\x01\x00\x00", marshal.dumps({"a": 1})):
        with pytest.raises(fastcount.Unsupported):
            fastcount.merge_records(junk, 1)
    # counts past 2**31 are 'l' records (15-bit digits): 2**40 twice
    big = 2 ** 40
    digits = []
    while big:
        digits.append(big & 0x7FFF)
        big >>= 15
    rec = b"{z\x01x" + b"l" + len(digits).to_bytes(4, "little") + b"".join(d.to_bytes(2, "little") for d in digits) + b"0"
    assert marshal.loads(rec) == {"x": 2 ** 40}
    assert fastcount.merge_records(rec + rec, 1) == ({"x": 2 ** 41}, 2 ** 41)


def test_build_says_when_a_range_fell_back_to_expat(tmp_path, capsys, monkeypatch):
    from clipcurate.core import console
    from clipcurate.queries import stage
    from clipcurate.core.workspace import Workspace

    monkeypatch.setattr(console.console, "quiet", False)

    path = _small_dump(tmp_path, ODD_BUT_VALID["comment between pages"])
    stage.build(Workspace(tmp_path / "ws"), [path], wordnet="none", unigram_min_count=1)
    err = capsys.readouterr().err
    assert "read with expat instead of the C page scanner (content between pages)" in err


def test_a_range_folder_is_one_spill_file_and_its_index(tmp_path):
    # 16 partitions, several spills: still two files (creating one costs ~0.6 ms on some file
    # systems; 64 per range were a fifth of the counting time); older one-file-per-partition
    # folders read the same
    path = write_dump(tmp_path / "d.xml.bz2", synthetic_pages(80, seed=3), kind="bz2")
    outs = {}
    for fast in (True, False):
        out = outs[fast] = tmp_path / f"o{fast}"
        st = counting.count_range(dump.Range(str(path)), str(out), 16, 300, fast=fast)
        assert st["spills"] > 2
        assert sorted(f.name for f in out.iterdir()) == [counting.SPILL_FILE, counting.SPILL_INDEX]
    assert _merged(outs[True], 16) == _merged(outs[False], 16)
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    names = [f"{k}{p:03d}.bin" for k in "ub" for p in range(16)]
    for name in names:
        data = counting.partition_bytes(outs[True], name)
        if data:
            (legacy / name).write_bytes(data)
    assert len(list(legacy.iterdir())) == 32
    assert _merged(legacy, 16) == _merged(outs[True], 16)
    assert counting.partition_bytes(outs[True], "u999.bin") == b""


@pytest.mark.parametrize("damage", ["index", "short", "missing"])
def test_a_damaged_range_folder_is_one_clear_error(tmp_path, damage):
    path = write_dump(tmp_path / "d.xml.bz2", synthetic_pages(20, seed=2), kind="bz2")
    out = tmp_path / "o"
    counting.count_range(dump.Range(str(path)), str(out), 4, 10**9, fast=True)
    if damage == "index":
        (out / counting.SPILL_INDEX).write_bytes(b"junk")
    elif damage == "short":
        data = (out / counting.SPILL_FILE).read_bytes()
        (out / counting.SPILL_FILE).write_bytes(data[: len(data) // 2])
    else:
        (out / counting.SPILL_FILE).unlink()
    with pytest.raises(ClipcurateError, match=r"damaged counting output .*--force"):
        for p in range(4):
            counting.partition_bytes(out, f"b{p:03d}.bin")
