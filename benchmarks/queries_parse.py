"""Benchmark `queries build` counting: parse MB/s against raw bz2 decompression MB/s of the same file,
measured in the same run, per worker and with several workers.

    python benchmarks/queries_parse.py                          # real fixture pages, repeated
    python benchmarks/queries_parse.py --zipf                   # a Zipf dump: large vocabulary
    python benchmarks/queries_parse.py --copies 100 --workers 1,2
    python benchmarks/queries_parse.py --dump enwiki-...-multistream.xml.bz2 --workers 1,4,8
    python benchmarks/queries_parse.py --memory    # peak RSS vs --spill-entries (bounded memory)
    python benchmarks/queries_parse.py --breakdown # CPU seconds of each step of one worker

Without ``--dump`` the input is the real 5-article fragment (../shared/fixtures/wikipedia, heavy table
markup) repeated ``--copies`` times into a multistream dump with an index (100 pages per stream,
as Wikimedia does). Its vocabulary is tiny (5 articles), so the counting tables stay in cache;
two other inputs have larger ones: ``--wordnet``, a dump of the ~117,000 WordNet glosses (real
English, ~9 MB of text, ~100k words), and ``--zipf``, random Zipf text (~40 MB XML, a
400,000-word vocabulary, word pairs drawn independently: far more distinct bigrams per word than
real text, the worst case for the tables and the spills).
Rates are MB of decompressed XML per second (the same bytes for every line):

- ``bz2 decompress``: just ``bz2`` reading the whole file (the baseline);
- ``expat pages``: decompress + expat XML -> pages (no markup stripping, no counting);
- ``count, 1 worker, pure Python``: the reference path (expat, regexes, ``Counter``), one core;
- ``count, 1 worker, C, no thread``: decompress + what queries/_fastcount.c does (XML pages ->
  strip markup -> tokenize -> count) + spill, all on one core: **the per-worker ratio**;
- ``count, 1 worker, C, decompression thread``: the same with decompression in a helper thread
  (the GIL is released while C works), wall clock: one worker's speed when a 2nd core is idle;
- ``count, N workers``: the multistream ranges over N processes (``--workers``); each with a
  decompression thread when 2 x N <= cores, as `queries build` does, or never (``--no-thread``).

The single-process lines are CPU seconds of this process (all its threads), best of ``--repeat``
runs interleaved, so other jobs on a shared machine distort them little; "vs bz2" is the per-worker
ratio. The wall-clock lines only mean something on a machine with idle cores.
"""

from __future__ import annotations

import argparse
import bz2
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clipcurate.queries import build as qbuild  # noqa: E402
from clipcurate.queries import counting
from clipcurate.queries import dump  # noqa: E402

FIXTURE = ROOT.parent / "shared" / "fixtures" / "wikipedia" / "enwiki-table-markup.xml.bz2"


def make_multistream(src: Path, copies: int, out: Path, per_stream: int = 100) -> Path:
    """Repeat the fixture's pages ``copies`` times into ``out`` (+ its -index.txt.bz2)."""
    xml = bz2.decompress(src.read_bytes()).decode()
    head, rest = xml.split("<page>", 1)
    body, _ = ("<page>" + rest).rsplit("</mediawiki>", 1)
    pages = ["  <page>" + p for p in body.split("<page>")[1:]]
    blob = bytearray(bz2.compress(head.encode()))
    index = []
    batch = []
    n = 0
    for c in range(copies):
        for p in pages:
            n += 1
            batch.append(p.replace("<title>", f"<title>Copy {c} ", 1))
            if len(batch) == per_stream:
                off = len(blob)
                index += [f"{off}:{n}:x\n"] * len(batch)
                blob += bz2.compress("".join(batch).encode())
                batch = []
    if batch:
        off = len(blob)
        index += [f"{off}:{n}:x\n"] * len(batch)
        blob += bz2.compress("".join(batch).encode())
    blob += bz2.compress(b"</mediawiki>\n")
    out.write_bytes(bytes(blob))
    out.with_name(out.name[: -len(".xml.bz2")] + "-index.txt.bz2").write_bytes(bz2.compress("".join(index).encode()))
    return out


def make_zipf_dump(out: Path, words: int, vocab: int, seed: int = 0) -> Path:
    """A plain-XML dump of random Zipf text: many distinct bigrams, i.e. the memory problem."""
    import random
    from xml.sax.saxutils import escape

    rng = random.Random(seed)
    syl = ["ka", "lo", "mi", "ren", "to", "sa", "vel", "dor", "ni", "qua", "zu", "bel", "an", "tri", "os"]
    vocab_words = list({"".join(rng.choice(syl) for _ in range(rng.randint(2, 6))) for _ in range(vocab)})
    weights = [1.0 / (i + 1) ** 0.9 for i in range(len(vocab_words))]
    with open(out, "w", encoding="utf-8") as fh:
        fh.write('<mediawiki version="0.10">\n')
        left, n = words, 0
        while left > 0:
            k = min(1000, left)
            left -= k
            n += 1
            text = " ".join(rng.choices(vocab_words, weights, k=k))
            fh.write(f"<page><title>P{n}</title><ns>0</ns><revision><text>{escape(text)}</text></revision></page>\n")
        fh.write("</mediawiki>\n")
    return out


def make_wordnet_dump(out: Path, wordnet_dir: Path, per_page: int = 40) -> Path:
    """A bz2 dump of real English: the ~117,000 WordNet 3.0 glosses (definitions and example
    sentences, ~9 MB of text, ~1.6M words), 40 to a page, with a template, a few links and a
    reference per page. Its vocabulary (~100k words, ~800k distinct bigrams) sits between the
    fixture's 5 articles and the random Zipf dump's."""
    import random
    from xml.sax.saxutils import escape

    rng = random.Random(0)
    glosses = []
    for pos in ("noun", "verb", "adj", "adv"):
        with open(wordnet_dir / f"data.{pos}", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  ") or " | " not in line:
                    continue
                glosses.append(line.split(" | ", 1)[1].strip())
    parts = ['<mediawiki version="0.10">\n']
    for n, i in enumerate(range(0, len(glosses), per_page)):
        words = []
        for g in glosses[i:i + per_page]:
            ws = g.split(" ")
            j = rng.randrange(len(ws))
            ws[j] = f"[[{ws[j]}]]"  # one link per gloss
            words.append(" ".join(ws))
        text = ("{{Infobox gloss|n=%d|source=WordNet 3.0}}\n" % n + ". ".join(words)
                + "<ref>Princeton University, WordNet 3.0</ref>\n[[Category:Glosses]]")
        parts.append(f"<page><title>G{n}</title><ns>0</ns><revision><text>{escape(text)}</text>"
                     f"</revision></page>\n")
    parts.append("</mediawiki>\n")
    out.write_bytes(bz2.compress("".join(parts).encode()))
    return out


def _peak_rss_of(fn, *args) -> tuple[float, object]:
    """Run ``fn(*args)`` in a fresh process; return (its peak RSS in MB, its result)."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1, maxtasksperchild=1) as pool:
        return pool.apply(_measure, (fn, args))


def _measure(fn, args):
    import resource

    r = fn(*args)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, r


def memory_main(words: int, vocab: int, spills: list[int]) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="qmem-"))
    try:
        path = make_zipf_dump(tmp / "zipf.xml", words, vocab)
        print(f"input: {words:,} random Zipf words over a {vocab:,}-word vocabulary, "
              f"{path.stat().st_size / 1e6:.0f} MB XML; peak RSS of one counting process")
        print(f"{'spill_entries':>14s} {'spills':>7s} {'peak RSS MB':>12s} {'distinct bigrams':>17s}")
        for spill in spills:
            out = tmp / f"c{spill}"
            rss, st = _peak_rss_of(counting.count_range, dump.Range(str(path)), str(out),
                                   counting.DEFAULT_PARTITIONS, spill)
            distinct = sum(1 for _ in counting.merge_bigrams([out], counting.DEFAULT_PARTITIONS, 1))
            print(f"{spill:14,d} {st['spills']:7d} {rss:12.0f} {distinct:17,d}")
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def breakdown_main(path: Path, repeat: int) -> None:
    """CPU seconds of each step one worker runs, each step timed alone on the previous step's
    output (best of ``repeat``), and the best per-worker ratio to bz2 those steps allow."""
    from collections import Counter
    from itertools import pairwise

    from clipcurate.queries import wikitext

    def decompress():
        return b"".join(dump._file_chunks(path))

    xml = decompress()
    pages = list(dump.iter_pages(path, threaded=False))
    arts = [p.text for p in pages if p.ns == 0 and not p.redirect]
    plain = [wikitext.strip_markup(t) for t in arts]
    toks = [wikitext.count_tokens(t) for t in plain]

    def count():
        uni, bi = Counter(), Counter()
        for t in toks:
            uni.update(t)
            bi.update(pairwise(t))

    from clipcurate.queries import fastcount

    body = list(dump.body_chunks(dump.Range(str(path)), threaded=False))

    def c_feed():
        c = fastcount.new_counts()
        for chunk in body:
            c.feed(chunk)
        c.finish(True)
        return c.take()

    def c_strip():
        return [fastcount.strip_markup(t) for t in arts]

    steps = [("bz2 decompress (the baseline)", decompress),
             ("decompress + expat -> pages", lambda: sum(1 for _ in dump.iter_pages(path, threaded=False))),
             ("strip markup", lambda: [wikitext.strip_markup(t) for t in arts]),
             ("tokenize (COUNT_TOKEN_RE.findall)", lambda: [wikitext.count_tokens(t) for t in plain]),
             ("count unigrams + bigrams (Counter)", count),
             ("C: strip markup alone (str in, str out)", c_strip),
             ("C: XML -> pages -> strip -> tokenize -> count", c_feed)]
    best = {}
    for _ in range(repeat):
        for name, fn in steps:
            t, _r = timed(fn, time.process_time)
            best[name] = min(best.get(name, t), t)
    base = best[steps[0][0]]
    best["expat -> pages (alone)"] = max(0.0, best.pop(steps[1][0]) - base)
    print(f"input: {path.name}  {len(xml) / 1e6:.1f} MB XML, {len(arts)} articles, "
          f"{sum(map(len, toks)):,} tokens  cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f}")
    print(f"{'step (CPU seconds, best of %d)' % repeat:50s} {'seconds':>8s} {'x bz2':>6s}")
    W = 48
    print("pure Python path:")
    order = [steps[0][0], "expat -> pages (alone)"] + [n for n, _ in steps[2:5]]
    for name in order:
        print(f"  {name:{W}s} {best[name]:8.3f} {best[name] / base:6.2f}")
    total = sum(best[n] for n in order)
    print(f"  {'sum: one worker, one core':{W}s} {total:8.3f} {total / base:6.2f}  -> at most "
          f"{base / total:.2f}x bz2 per worker")
    rest = total - base
    print(f"  {'with decompression on a 2nd core (thread)':{W}s} {max(base, rest):8.3f} "
          f"{max(base, rest) / base:6.2f}  -> at most {base / max(base, rest):.2f}x bz2")
    print("C path (queries/_fastcount.c):")
    for name in (steps[0][0], steps[5][0], steps[6][0]):
        print(f"  {name:{W}s} {best[name]:8.3f} {best[name] / base:6.2f}")
    total = base + best[steps[6][0]]
    print(f"  {'sum: one worker, one core':{W}s} {total:8.3f} {total / base:6.2f}  -> at most "
          f"{base / total:.2f}x bz2 per worker")


def _cpu_all() -> float:
    """CPU seconds of this process and of its children that have ended (the worker pool's)."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn, clock=time.perf_counter):
    t = clock()
    r = fn()
    return clock() - t, r


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dump", type=Path, help="a real (multistream) dump; default: the fixture, repeated")
    ap.add_argument("--copies", type=int, default=60, help="fixture repeats (60 ≈ 15 MB of XML)")
    ap.add_argument("--wordnet", action="store_true",
                    help="input: a dump of the WordNet 3.0 glosses (real English, ~100k-word vocabulary)")
    ap.add_argument("--zipf", action="store_true",
                    help="input: a bz2 dump of --memory-words random Zipf words (400,000-word vocabulary)")
    ap.add_argument("--workers", default="1,2", help="worker counts to measure, e.g. 1,2,4")
    ap.add_argument("--repeat", type=int, default=3, help="best of N for the single-process lines")
    ap.add_argument("--no-thread", action="store_true",
                    help="the N-worker lines without decompression threads (one core per worker)")
    ap.add_argument("--ranges", type=int, default=24,
                    help="counting ranges the file is split into for the N-worker lines")
    ap.add_argument("--pages-per-stream", type=int, default=100, help="pages per bz2 stream (Wikimedia: 100)")
    ap.add_argument("--memory", action="store_true",
                    help="instead: peak RSS of one counting process vs --spill-entries on a Zipf dump")
    ap.add_argument("--breakdown", action="store_true",
                    help="instead: CPU seconds of each step of one worker (decompress, XML, strip, tokenize, count)")
    ap.add_argument("--memory-words", type=int, default=3_000_000)
    ap.add_argument("--memory-vocab", type=int, default=300_000)
    ap.add_argument("--memory-spills", default="100000,10000000000")
    args = ap.parse_args()
    if args.memory:
        return memory_main(args.memory_words, args.memory_vocab, [int(x) for x in args.memory_spills.split(",")])
    tmp = Path(tempfile.mkdtemp(prefix="qparse-"))
    try:
        if args.dump:
            path = args.dump
        elif args.wordnet:
            wn = Path("/usr/share/wordnet")
            if not (wn / "data.noun").is_file():
                sys.exit(f"{wn}/data.noun not found (apt-get install wordnet-base)")
            path = make_wordnet_dump(tmp / "wordnet-glosses.xml.bz2", wn)
        elif args.zipf:
            xml = make_zipf_dump(tmp / "zipf.xml", args.memory_words, 400_000)
            path = tmp / "zipf.xml.bz2"
            path.write_bytes(bz2.compress(xml.read_bytes()))
            xml.unlink()
        else:
            if not FIXTURE.is_file():
                sys.exit(f"fixture {FIXTURE} not found; pass --dump")
            path = make_multistream(FIXTURE, args.copies, tmp / "bench-multistream.xml.bz2",
                                    args.pages_per_stream)
        csize = path.stat().st_size
        if args.breakdown:
            return breakdown_main(path, args.repeat)

        def decompress():
            n = 0
            with bz2.open(path, "rb") as fh:
                while True:
                    b = fh.read(1 << 20)
                    if not b:
                        return n
                    n += len(b)

        def pages():
            st = {}
            sum(1 for _ in dump.iter_pages(path, st, threaded=False))
            return st["bytes"]

        def count1(fast: bool, threaded: bool = False):
            out = tmp / "c1"
            shutil.rmtree(out, ignore_errors=True)
            st = counting.count_range(dump.Range(str(path)), str(out), threaded=threaded, fast=fast)
            assert st["reader"] == ("c" if fast else "expat") and "fallback" not in st, st
            return st["bytes"]

        def fresh():
            counting.release_counters()  # the next range starts with a new, small C counter
            return count1(True)

        # A worker counts range after range with one C counter whose tables keep their size
        # (counting.FastCounts.close): its first range grows them from small, the later ones do
        # not. Both are shown; the lines after "first range" are a later range's (counter reused).
        steps = [("bz2 decompress (baseline)", decompress, time.process_time),
                 ("expat pages", pages, time.process_time),
                 ("count, 1 worker, pure Python", lambda: count1(False), time.process_time),
                 ("count, 1 worker, C, no thread, first range", fresh, time.process_time),
                 ("count, 1 worker, C, no thread", lambda: count1(True), time.process_time),
                 ("count, 1 worker, C, decompression thread", lambda: count1(True, True), time.perf_counter)]
        rows = []
        best = {}
        clock_of = {}
        for _ in range(args.repeat):  # interleaved, best of N: the machine is shared
            for name, fn, clock in steps:
                t, nbytes = timed(fn, clock)
                clock_of[name] = "wall" if clock is time.perf_counter else "cpu"
                if name not in best or t < best[name][0]:
                    best[name] = (t, nbytes)
        xml_bytes = best["bz2 decompress (baseline)"][1]
        base = xml_bytes / best["bz2 decompress (baseline)"][0] / 1e6
        for name, (t, nbytes) in best.items():
            assert nbytes == xml_bytes, (name, nbytes, xml_bytes)
            rows.append((name, t, xml_bytes / t / 1e6))
        # --ranges ranges (a real dump has thousands): a multiple of every worker count measured,
        # so that "N workers vs 1" is not capped by one worker counting one range more than another
        opts = dict(qbuild.DEFAULTS, chunk_mb=max(0.01, csize / 1e6 / args.ranges))
        if args.no_thread:
            # queries build gives each worker a decompression thread when 2 x workers <= cores;
            # without it every worker is one core, so N workers vs 1 is the scaling of that work
            real_cpu_count, qbuild.os.cpu_count = os.cpu_count, lambda: 1
        try:
            w1 = None
            cpu: dict[int, float] = {}
            for w in [int(x) for x in args.workers.split(",")]:
                folder = tmp / f"w{w}"
                cpu0 = _cpu_all()
                t, infos = timed(lambda: qbuild.count_dumps(folder, [path], {**opts, "workers": w}, force=True))
                cpu[w] = _cpu_all() - cpu0
                nbytes = sum(i["bytes"] for i in infos.values())
                # the ranges skip stream 0 (<mediawiki> + <siteinfo>): a few hundred bytes
                assert xml_bytes - 10_000 < nbytes <= xml_bytes, (nbytes, xml_bytes)
                rows.append((f"count, {w} worker(s) ({len(infos)} ranges)", t, xml_bytes / t / 1e6))
                if w == 1:
                    w1 = xml_bytes / t / 1e6
                shutil.rmtree(folder, ignore_errors=True)
        finally:
            if args.no_thread:
                qbuild.os.cpu_count = real_cpu_count
        cpus = os.cpu_count()
        print(f"input: {path.name}  {csize / 1e6:.1f} MB bz2, {xml_bytes / 1e6:.1f} MB XML  "
              f"cpus={cpus} load={os.getloadavg()[0]:.1f}")
        print(f"{'step':50s} {'seconds':>8s} {'XML MB/s':>9s} {'vs bz2':>7s} {'vs 1 worker':>11s}")
        for name, t, r in rows:
            if name not in clock_of:  # wall clock, several processes
                print(f"{name + ' [wall]':50s} {t:8.2f} {r:9.1f} {'':7s} {r / w1:11.2f}")
            else:  # one process: CPU seconds, or wall clock for the threaded line
                print(f"{name + f' [{clock_of[name]}]':50s} {t:8.2f} {r:9.1f} {r / base:7.2f}")
        # Wall-clock scaling needs idle cores; the CPU all processes spent shows whether more
        # workers add work (spawn, imports, per-range setup) or just split it.
        if cpu:
            print("CPU seconds of all processes (this one + finished workers): "
                  + ", ".join(f"{w} worker(s) {c:.2f}" for w, c in cpu.items())
                  + "  (equal = the work splits without overhead; wall time / N needs N idle cores)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
