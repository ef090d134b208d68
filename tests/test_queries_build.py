"""`queries build`: real dump fragment, bounded-memory counting, workers, PMI vs NLTK, WordNet,
page views, assembly, resume and bad input."""

from __future__ import annotations

import bz2
import shutil
import warnings
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from clipcurate.queries import stage
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.workspace import Workspace
from clipcurate.queries import build as qbuild
from clipcurate.queries import counting
from clipcurate.queries import dump
from clipcurate.queries import pageviews
from clipcurate.queries import wordnet
from clipcurate.queries.wikitext import strip_markup

from _queries_helpers import (FIXTURE, reference_counts, run_cli, synthetic_pages, write_dump,
                              write_pageviews, write_wordnet)


def _table(ws: Workspace):
    return pq.read_table(ws.path("queries", "queries.parquet")).to_pylist()


def _count(dump_path, tmp_path, partitions=8, spill_entries=10**9, name="c"):
    out = tmp_path / name
    stats = counting.count_range(dump.Range(str(dump_path)), str(out), partitions, spill_entries)
    uni, n = counting.merge_unigrams([out], partitions, 1)
    bi = dict(counting.merge_bigrams([out], partitions, 1))
    return uni, bi, n, stats


def _article_texts(dump_path):
    return [strip_markup(p.text) for p in dump.iter_pages(dump_path) if p.ns == 0 and not p.redirect]


# -- the real dump fragment ------------------------------------------------------------------------

@pytest.mark.skipif(not FIXTURE.is_file(), reason=f"real dump fragment not found at {FIXTURE} (../shared/fixtures)")
def test_real_dump_fragment(tmp_path, capsys):
    ws = tmp_path / "ws"
    code = run_cli(["-q", "-w", str(ws), "queries", "build", str(FIXTURE), "--wordnet", "none",
                    "--unigram-min-count", "3", "--bigram-min-pmi", "10"])
    assert code == 0, capsys.readouterr().err
    rows = _table(Workspace(ws))
    by_query = {r["query"]: r for r in rows}
    # real words from the five articles
    for word in ("Brahui", "Estonia", "confidence", "Dravidian", "Chancellor", "Bundestag", "Balochistan"):
        assert by_query[word]["source"] == "unigram", word
    # table styling, template and ref internals are gone
    for noise in ("FFDEAD", "FFF8DC", "cellpadding", "wikitable", "accessdate", "thumb", "Cite"):
        assert noise not in by_query, noise
    stats = stage.build.__globals__["read_json"](ws / "queries" / "stats.json")
    assert stats["corpus"]["articles"] == 5 and stats["corpus"]["pages"] == 5
    assert [r["entry_id"] for r in rows] == list(range(len(rows)))
    # counts equal an independent reference over the stripped article texts
    uni, bi, n, _ = _count(FIXTURE, tmp_path)
    ref_uni, ref_bi = reference_counts(_article_texts(FIXTURE))
    assert uni == dict(ref_uni) and bi == dict(ref_bi) and n == sum(ref_uni.values())
    assert uni["Brahui"] >= 10


# -- bounded memory: spills + partitions give the in-memory reference ---------------------------------

def test_spilled_counts_equal_in_memory_counter(tmp_path):
    pages = synthetic_pages(300, vocab_size=4000, words_per_page=250, seed=1)
    d = write_dump(tmp_path / "syn.xml.bz2", pages)
    uni, bi, n, stats = _count(d, tmp_path, partitions=8, spill_entries=3000)
    assert stats["spills"] >= 5, stats  # the small threshold forced several spills
    assert stats["articles"] == 300 and stats["redirects"] == 6 and stats["other_namespaces"] == 6
    ref_uni, ref_bi = reference_counts(_article_texts(d))
    assert uni == dict(ref_uni)
    assert bi == dict(ref_bi)
    assert n == sum(ref_uni.values()) == stats["words"]
    assert not any(w.startswith("Zz") for w in uni)  # markup, redirects and talk pages not counted
    # pruning keeps exactly the bigrams with count >= min
    out = tmp_path / "c"
    pruned = dict(counting.merge_bigrams([out], 8, 3))
    assert pruned == {k: c for k, c in ref_bi.items() if c >= 3}


# -- parallel: multistream ranges and several files --------------------------------------------------

@pytest.mark.slow
def test_workers_over_multistream_and_files(tmp_path):
    pages = synthetic_pages(400, vocab_size=1500, words_per_page=120, seed=2)
    plain = write_dump(tmp_path / "plain.xml.bz2", pages)
    multi = write_dump(tmp_path / "enwiki-pages-articles-multistream.xml.bz2", pages, kind="multistream", pages_per_stream=50)
    ranges = dump.plan_ranges(multi, chunk_bytes=1)
    assert len(ranges) == -(-len(pages) // 50) and all(r.multistream for r in ranges)  # one per page stream
    opts = dict(wordnet="none", unigram_min_count=20, bigram_min_pmi=5.0, bigram_min_count=2)
    ws1, ws2, ws3 = (Workspace(tmp_path / n) for n in ("w1", "w2", "w3"))
    stage.build(ws1, [plain], **opts)
    s2 = stage.build(ws2, [multi], workers=2, chunk_mb=0.000001, **opts)
    assert s2["corpus"]["articles"] == 400
    # two files: first half, second half (each its own bz2)
    a = write_dump(tmp_path / "a.xml", pages[:200], kind="xml")
    b = write_dump(tmp_path / "b.xml.bz2", pages[200:])
    stage.build(ws3, [a, b], workers=2, **opts)
    t1, t2, t3 = _table(ws1), _table(ws2), _table(ws3)
    assert len(t1) > 50 and any(r["source"] == "bigram" for r in t1)
    assert t1 == t2
    # bigrams spanning the two files' boundary cannot exist in ws3, the rest is identical
    assert [r for r in t1 if r["source"] == "unigram"] == [r for r in t3 if r["source"] == "unigram"]


def test_resume_skips_done_shards_and_recovers_from_a_crash(tmp_path):
    pages = synthetic_pages(120, vocab_size=800, words_per_page=80, seed=3)
    multi = write_dump(tmp_path / "x-multistream.xml.bz2", pages, kind="multistream", pages_per_stream=30)
    ws = Workspace(tmp_path / "ws")
    opts = dict(wordnet="none", unigram_min_count=5, bigram_min_pmi=3.0, chunk_mb=0.000001)
    stage.build(ws, [multi], **opts)
    first = _table(ws)
    folder = ws.path("queries")
    markers = sorted(folder.glob("*.done"))
    assert len(markers) == -(-len(pages) // 30)
    # a crash in the middle of one shard: its marker never written, a half-written temp dir left
    markers[1].unlink()
    shard = markers[1].name[: -len(".done")]
    shutil.move(str(folder / "counts" / shard), str(folder / "counts" / (".tmp-" + shard)))
    mtimes = {m.name: m.stat().st_mtime_ns for m in folder.glob("*.done")}
    stage.build(ws, [multi], **opts)
    assert _table(ws) == first
    assert all(m.stat().st_mtime_ns == mtimes[m.name] for m in folder.glob("*.done") if m.name in mtimes)
    # another counting option: counted again from scratch, same list
    stage.build(ws, [multi], **{**opts, "partitions": 4})
    assert _table(ws) == first


# -- PMI as NLTK ------------------------------------------------------------------------------------

def test_pmi_matches_nltk_collocation_finder(tmp_path):
    nltk = pytest.importorskip("nltk")
    from nltk.collocations import BigramCollocationFinder
    from nltk.metrics import BigramAssocMeasures

    pages = synthetic_pages(80, vocab_size=600, words_per_page=100, seed=4, markup=False)
    d = write_dump(tmp_path / "p.xml.bz2", pages)
    uni, bi, n, _ = _count(d, tmp_path)
    finder = BigramCollocationFinder(nltk.FreqDist(uni), nltk.FreqDist(bi))
    for (a, b), c in list(bi.items())[:2000]:
        want = finder.score_ngram(BigramAssocMeasures.pmi, a, b)
        assert qbuild.pmi(c, uni[a], uni[b], n) == pytest.approx(want, abs=1e-9)
    # end to end: exactly the bigrams with count >= 2 and PMI >= 4, with NLTK's score
    ws = Workspace(tmp_path / "ws")
    stage.build(ws, [d], wordnet="none", unigram_min_count=10**9, bigram_min_pmi=4.0, bigram_min_count=2)
    got = {r["query"]: r["pmi"] for r in _table(ws) if r["source"] == "bigram"}
    want = {f"{a} {b}": finder.score_ngram(BigramAssocMeasures.pmi, a, b) for (a, b), c in bi.items()
            if c >= 2 and finder.score_ngram(BigramAssocMeasures.pmi, a, b) >= 4.0}
    assert got.keys() == want.keys() and len(got) > 10
    assert all(got[k] == pytest.approx(want[k]) for k in got)


# -- WordNet --------------------------------------------------------------------------------------------

def _nltk_heads(dict_dir: Path, *more_roots: Path) -> list[str]:
    nltk = pytest.importorskip("nltk")
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    roots = [str(Path(r).resolve()) for r in (dict_dir, *more_roots)]
    nltk.data.path.extend(roots)  # NLTK only reads under its data paths (its documented opt-in)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            class Reader(WordNetCorpusReader):
                def map_wn(self, version="wordnet"):  # no OMW mapping (needs NLTK's own corpus)
                    return None

            reader = Reader(str(dict_dir), None)
            return [s.name().split(".")[0].replace("_", " ") for s in reader.all_synsets()]
    finally:
        for r in roots:
            nltk.data.path.remove(r)


def test_wordnet_tiny_dict_matches_nltk(tmp_path):
    d = write_wordnet(tmp_path / "wn")
    heads = wordnet.head_lemmas(d)
    assert heads == ["able", "abaxial", "galore", "able", "a", "very", "dog", "hot dog", "new york", "dog",
                     "dog", "run"]
    assert heads == _nltk_heads(d)


@pytest.mark.slow
@pytest.mark.skipif(wordnet.find_dict_dir() is None, reason="no WordNet dict dir (apt-get install wordnet-base)")
def test_real_wordnet_matches_nltk(tmp_path):
    real = wordnet.find_dict_dir()
    heads = wordnet.head_lemmas(real)
    assert len(heads) == 117659  # WordNet 3.0 synsets
    assert {"dog", "new york", "computer", "ice cream"} <= set(heads)
    # NLTK needs a lexnames file that Debian's wordnet-base does not ship, and refuses symlinks
    # out of its root: copy the dict files
    d = tmp_path / "wn"
    d.mkdir()
    for f in real.iterdir():
        if f.is_file():
            shutil.copy(f, d / f.name)
    if not (d / "lexnames").exists():
        (d / "lexnames").write_text("".join(f"{i:02d}\tlex.{i}\t1\n" for i in range(45)))
    assert heads == _nltk_heads(d)


# -- page views ---------------------------------------------------------------------------------------

def test_pageview_rules(tmp_path):
    a = write_pageviews(tmp_path / "pageviews-20240101-000000.gz", [
        ("en", "Albert_Einstein", 60), ("en.m", "Albert_Einstein", 5000), ("de", "Berlin", 900),
        ("en", "Special:Search", 9000), ("en", "Small", 49), ("en", "Caf%C3%A9", 40), ("en", "Solo", 80),
        ("en", "Twice", 50)])
    b = write_pageviews(tmp_path / "pageviews-20240101-010000.gz", [
        ("en", "Albert_Einstein", 55), ("en", "Small", 49), ("en", "Café", 90), ("en", "Twice", 50)])
    (tmp_path / "bad").write_bytes(gzip_bytes(b"en Broken\nen Bad notanumber 0\n"))
    st: dict = {}
    got = pageviews.popular_titles([a, b, tmp_path / "bad"], min_views=70, min_hour_views=50, stats=st)
    assert got == [("Albert Einstein", 115), ("Twice", 100), ("Café", 90), ("Solo", 80)]
    assert st["bad_lines"] == 2


def gzip_bytes(data: bytes) -> bytes:
    import gzip

    return gzip.compress(data)


# -- assembly ---------------------------------------------------------------------------------------------

def test_assembly_order_dedup_and_cap(tmp_path, capsys):
    wn = write_wordnet(tmp_path / "wn")
    pages = [{"title": f"P{i}", "text": "dog walks fast. New York dog zebra quokka"} for i in range(5)]
    d = write_dump(tmp_path / "d.xml.bz2", pages)
    pv = write_pageviews(tmp_path / "pageviews-20240101-000000.gz",
                         [("en", "New_York", 500), ("en", "dog", 90), ("en", "Quokka_Island", 80)])
    ws = Workspace(tmp_path / "ws")
    stage.build(ws, [d], pageviews=[pv], wordnet=wn, unigram_min_count=5, bigram_min_pmi=0.0,
                bigram_min_count=5)
    rows = _table(ws)
    sources = [r["source"] for r in rows]
    assert sources == sorted(sources, key=qbuild.SOURCES.index)  # wordnet → unigram → bigram → title
    queries = [r["query"] for r in rows]
    assert len(queries) == len(set(queries))
    assert rows[queries.index("dog")]["source"] == "wordnet"  # first occurrence wins
    assert rows[queries.index("New York")]["source"] == "bigram"
    assert rows[queries.index("Quokka Island")]["source"] == "title"
    assert rows[queries.index("Quokka Island")]["views"] == 80
    wn_heads = list(dict.fromkeys(wordnet.head_lemmas(wn)))
    assert queries[: len(wn_heads)] == wn_heads
    # --size caps the list, keeping the head of the order
    code = run_cli(["-q", "-w", str(tmp_path / "ws2"), "queries", "build", str(d), "--wordnet", str(wn),
                    "--size", "4", "--unigram-min-count", "5"])
    assert code == 0
    assert [r["query"] for r in _table(Workspace(tmp_path / "ws2"))] == wn_heads[:4]
    out = capsys.readouterr().out
    assert "total\t4" in out


# -- bad input: one line, exit 1 -------------------------------------------------------------------------

def _one_line_error(capsys, argv, *needles):
    code = run_cli(argv)
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err  # one line, last (progress may precede)
    assert "Traceback" not in err
    for n in needles:
        assert n in errors[0], err
    return errors[0]


def test_bad_inputs_one_line_exit_1(tmp_path, capsys):
    ws = str(tmp_path / "ws")
    good = write_dump(tmp_path / "good.xml.bz2", [{"title": "A", "text": "some words here"}])
    data = good.read_bytes()
    trunc = tmp_path / "trunc.xml.bz2"
    trunc.write_bytes(data[: len(data) // 2])
    _one_line_error(capsys, ["-w", ws, "queries", "build", str(trunc), "--wordnet", "none"], "trunc.xml.bz2", "truncated")
    notxml = tmp_path / "notes.xml"
    notxml.write_text("this is just text, not a dump\n")
    _one_line_error(capsys, ["-w", ws, "queries", "build", str(notxml), "--wordnet", "none"], "notes.xml", "not XML")
    notxml_bz2 = tmp_path / "notes.xml.bz2"
    notxml_bz2.write_bytes(bz2.compress(b"\x00\x01binary junk"))
    _one_line_error(capsys, ["-w", ws, "queries", "build", str(notxml_bz2), "--wordnet", "none"], "not XML")
    old = write_dump(tmp_path / "old.xml", [{"title": "A", "text": "x"}], schema="0.7", kind="xml")
    _one_line_error(capsys, ["-w", ws, "queries", "build", str(old), "--wordnet", "none"], "schema", "'0.7'")
    other_root = tmp_path / "feed.xml"
    other_root.write_text("<rss><channel/></rss>")
    _one_line_error(capsys, ["-w", ws, "queries", "build", str(other_root), "--wordnet", "none"], "<rss>")
    empty = write_dump(tmp_path / "empty.xml.bz2", [])
    _one_line_error(capsys, ["-w", ws, "queries", "build", str(empty), "--wordnet", "none"], "no articles")
    zero = tmp_path / "zero.xml.bz2"
    zero.write_bytes(b"")
    _one_line_error(capsys, ["-w", ws, "queries", "build", str(zero), "--wordnet", "none"], "empty file")
    _one_line_error(capsys, ["-w", ws, "queries", "build", str(good), "--wordnet", str(tmp_path / "nowhere")],
                    "WordNet", "nowhere")
    _one_line_error(capsys, ["-w", ws, "queries", "build", str(tmp_path / "missing.xml.bz2")], "not found")
    _one_line_error(capsys, ["-w", ws, "queries", "build", str(good), "--wordnet", "none", "--pageviews",
                             str(tmp_path / "pv.gz")], "pv.gz")
    # a truncated multistream range
    pages = synthetic_pages(60, vocab_size=100, words_per_page=20, seed=5)
    multi = write_dump(tmp_path / "t-multistream.xml.bz2", pages, kind="multistream", pages_per_stream=20)
    blob = multi.read_bytes()
    multi.write_bytes(blob[: len(blob) - 200])
    _one_line_error(capsys, ["-w", ws, "queries", "build", str(multi), "--wordnet", "none", "--chunk-mb", "0.000001"],
                    "t-multistream.xml.bz2")


def test_api_rejects_unknown_option(tmp_path):
    with pytest.raises(ClipcurateError, match="unknown queries option"):
        stage.build(Workspace(tmp_path), ["x.xml"], unigram_min=3)


# -- kill -9 in the middle, then rerun ---------------------------------------------------------------

@pytest.mark.slow
def test_sigkill_during_counting_then_rerun_gives_the_same_list(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    pages = synthetic_pages(500, vocab_size=1000, words_per_page=100, seed=7)
    multi = write_dump(tmp_path / "k-multistream.xml.bz2", pages, kind="multistream", pages_per_stream=20)
    args = ["queries", "build", str(multi), "--wordnet", "none", "--chunk-mb", "0.000001",
            "--unigram-min-count", "20", "--bigram-min-pmi", "4", "--spill-entries", "5000"]
    clean = Workspace(tmp_path / "clean")
    assert run_cli(["-q", "-w", str(clean.root)] + args) == 0
    ws = Workspace(tmp_path / "ws")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-m", "clipcurate", "-q", "-w", str(ws.root)] + args, cwd=root,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = ws.path("queries")
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None and len(list(folder.glob("*.done"))) < 3:
        time.sleep(0.02)
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(folder.glob("*.done")))
    assert run_cli(["-q", "-w", str(ws.root)] + args) == 0
    assert _table(ws) == _table(clean)
    assert done_before >= 1


def test_whole_bz2_file_reader_matches_bz2_open(tmp_path):
    """The whole-file bz2 reader (1 MB reads, not bz2.open's 8 KB) gives bz2.open's bytes: several
    streams without an index, trailing non-bz2 bytes ignored as bz2.open does."""
    pages = synthetic_pages(120, vocab_size=500, words_per_page=60, seed=5)
    multi = write_dump(tmp_path / "x-multistream.xml.bz2", pages, kind="multistream", pages_per_stream=7)
    glued = tmp_path / "glued.xml.bz2"  # same streams, no index next to it: read as one file
    glued.write_bytes(multi.read_bytes() + b"trailing junk, not bz2")
    got = b"".join(dump._file_chunks(glued))
    assert got == bz2.open(glued).read()
    assert [p.title for p in dump.iter_pages(glued)] == [p.title for p in dump.iter_pages(multi)]
