"""Generated inputs for the queries tests: MediaWiki dumps (plain, bz2, multistream + index),
a tiny WordNet dict dir, hourly page-view files, and a reference tokenizer/counter."""

from __future__ import annotations

import bz2
import gzip
import random
import re
from collections import Counter
from pathlib import Path
from xml.sax.saxutils import escape

FIXTURE = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "wikipedia" / "enwiki-table-markup.xml.bz2"

HEADER = ('<mediawiki xmlns="http://www.mediawiki.org/xml/export-{v}/" '
          'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" version="{v}" xml:lang="en">\n'
          '  <siteinfo>\n    <sitename>Wikipedia</sitename>\n    <dbname>enwiki</dbname>\n'
          '    <namespaces>\n      <namespace key="0" case="first-letter" />\n'
          '      <namespace key="10" case="first-letter">Template</namespace>\n    </namespaces>\n'
          '  </siteinfo>\n')
FOOTER = "</mediawiki>\n"


def page_xml(title: str, text: str, ns: int = 0, redirect: str | None = None, page_id: int = 1) -> str:
    red = f'    <redirect title="{escape(redirect)}" />\n' if redirect else ""
    return (f"  <page>\n    <title>{escape(title)}</title>\n    <ns>{ns}</ns>\n    <id>{page_id}</id>\n{red}"
            f"    <revision>\n      <id>{page_id * 10}</id>\n      <timestamp>2024-01-01T00:00:00Z</timestamp>\n"
            f"      <contributor><username>T</username><id>1</id></contributor>\n"
            f"      <comment>edit &amp; more</comment>\n      <model>wikitext</model>\n"
            f"      <format>text/x-wiki</format>\n"
            f'      <text bytes="{len(text)}" xml:space="preserve">{escape(text)}</text>\n'
            f"      <sha1>x</sha1>\n    </revision>\n  </page>\n")


def write_dump(path: Path, pages: list[dict], schema: str = "0.10", kind: str = "bz2",
               pages_per_stream: int = 100) -> Path:
    """``pages``: dicts with title, text, ns (0), redirect (None). ``kind``: xml, bz2, multistream.

    multistream writes ``<name>-index.txt.bz2`` next to it, exactly like Wikimedia's: stream 0 is the
    header, then one stream per ``pages_per_stream`` pages, then one with ``</mediawiki>``.
    """
    path = Path(path)
    xml_pages = [page_xml(p["title"], p["text"], p.get("ns", 0), p.get("redirect"), i + 1)
                 for i, p in enumerate(pages)]
    header = HEADER.format(v=schema)
    if kind == "xml":
        path.write_text(header + "".join(xml_pages) + FOOTER, "utf-8")
    elif kind == "bz2":
        path.write_bytes(bz2.compress((header + "".join(xml_pages) + FOOTER).encode()))
    elif kind == "multistream":
        blob = bytearray(bz2.compress(header.encode()))
        index_lines = []
        for s in range(0, len(pages), pages_per_stream):
            off = len(blob)
            for i in range(s, min(s + pages_per_stream, len(pages))):
                index_lines.append(f"{off}:{i + 1}:{pages[i]['title']}\n")
            blob += bz2.compress("".join(xml_pages[s:s + pages_per_stream]).encode())
        blob += bz2.compress(FOOTER.encode())
        path.write_bytes(bytes(blob))
        assert path.name.endswith(".xml.bz2") and "multistream" in path.name
        idx = path.with_name(path.name[: -len(".xml.bz2")] + "-index.txt.bz2")
        idx.write_bytes(bz2.compress("".join(index_lines).encode()))
    else:
        raise ValueError(kind)
    return path


# -- synthetic corpus ------------------------------------------------------------------------------

SYLLABLES = ["ka", "lo", "mi", "ren", "to", "sa", "vel", "dor", "ni", "qua", "zu", "bel", "an", "tri", "os"]


def vocabulary(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = set()
    while len(words) < n:
        w = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.15:
            w = w.capitalize()
        words.add(w)
    return sorted(words)


def synthetic_pages(n_pages: int, vocab_size: int = 3000, words_per_page: int = 200, seed: int = 0,
                    markup: bool = True) -> list[dict]:
    """Zipf-ish random articles with markup the stripper must remove, plus redirects and a
    non-article page (which must not be counted)."""
    rng = random.Random(seed)
    vocab = vocabulary(vocab_size, seed)
    weights = [1.0 / (i + 1) for i in range(len(vocab))]
    pages = []
    for i in range(n_pages):
        ws = rng.choices(vocab, weights, k=words_per_page)
        parts = []
        for j, w in enumerate(ws):
            parts.append(w)
            r = rng.random()
            if r < 0.06:
                parts.append(".")
            elif r < 0.09:
                parts.append(",")
            elif r < 0.10:
                parts.append("\n")
        text = " ".join(parts)
        if markup:
            text = ("{{Infobox thing|name=Zzinfobox|value={{nested|Zznested}}}}\n" + text +
                    "\n{| class=\"wikitable\"\n|-\n| Zztable || cell\n|}\n<ref>Zzref cite</ref>"
                    "[[Category:Zzcategory]][[File:Zzfile.jpg|thumb|Zzcaption]]")
        pages.append({"title": f"Page {i}", "text": text})
        if i % 50 == 7:
            pages.append({"title": f"Redirect {i}", "text": "#REDIRECT [[Page 1]] Zzredirect", "redirect": "Page 1"})
        if i % 50 == 11:
            pages.append({"title": f"Talk:Page {i}", "text": "Zztalk words here", "ns": 1})
    return pages


# -- an independent reference for counting ----------------------------------------------------------

_REF_BREAK = re.compile(r"[^\w\s'’-]+|\n")
_REF_WORD = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*")


def reference_counts(plain_texts: list[str]) -> tuple[Counter, Counter]:
    """Split into clauses at breaks, words per clause, bigrams within a clause."""
    uni, bi = Counter(), Counter()
    for text in plain_texts:
        for clause in _REF_BREAK.split(text):
            ws = _REF_WORD.findall(clause)
            uni.update(ws)
            bi.update(zip(ws, ws[1:]))
    return uni, bi


# -- WordNet dict dir ---------------------------------------------------------------------------------

LICENSE = "  1 This software and database is being provided to you, the LICENSEE, by  \n" \
          "  2 Princeton University under the following license.  \n"

# (offset, lex_filenum, ss_type, words) per file; offsets are made consistent below.
TINY_WORDNET = {
    "adj": [("a", ["able"]), ("s", ["abaxial", "dorsal"]), ("a", ["galore(ip)"]), ("a", ["Able"])],
    "adv": [("r", ["a.d.", "anno_domini"]), ("r", ["very"])],
    "noun": [("n", ["dog", "domestic_dog", "Canis_familiaris"]), ("n", ["hot_dog", "dog"]),
             ("n", ["New_York", "New_York_City"]), ("n", ["dog"])],
    "verb": [("v", ["dog", "chase"]), ("v", ["run"])],
}


def write_wordnet(d: Path) -> Path:
    """A WordNet 3.0-format dict dir that NLTK's reader also accepts (with a lexnames file)."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    index: dict[str, dict[str, list[int]]] = {}
    for pos, synsets in TINY_WORDNET.items():
        lines = []
        offset = len(LICENSE.encode())
        for ss_type, words in synsets:
            ws = " ".join(f"{w} 0" for w in words)
            # a satellite adjective points (&, "similar to") at its head adjective, the first line
            ptrs = f"001 & {len(LICENSE.encode()):08d} a 0000" if ss_type == "s" else "000"
            line = f"{offset:08d} 00 {ss_type} {len(words):02x} {ws} {ptrs} | gloss of {words[0]}  \n"
            lines.append(line)
            idx_pos = "a" if pos == "adj" else ss_type
            for w in words:
                base = re.sub(r"\([^()]*\)$", "", w).lower()
                index.setdefault(pos, {}).setdefault(base, []).append(offset)
            offset += len(line.encode())
        (d / f"data.{pos}").write_text(LICENSE + "".join(lines), "utf-8")
    for pos, lemmas in index.items():
        p = {"adj": "a", "adv": "r", "noun": "n", "verb": "v"}[pos]
        body = "".join(f"{lemma} {p} {len(offs)} 0 {len(offs)} 0 {' '.join(f'{o:08d}' for o in offs)}  \n"
                       for lemma, offs in sorted(index[pos].items()))
        (d / f"index.{pos}").write_text(LICENSE + body, "utf-8")
    for pos in ("adj", "adv", "noun", "verb"):
        (d / f"{pos}.exc").write_text("", "utf-8")
    (d / "lexnames").write_text("".join(f"{i:02d}\tlex.{i}\t1\n" for i in range(45)), "utf-8")
    return d


# -- page views ---------------------------------------------------------------------------------------

def write_pageviews(path: Path, rows: list[tuple[str, str, int]]) -> Path:
    """``rows``: (domain_code, title, views) → a gzip'd hourly pageviews file."""
    body = "".join(f"{d} {t} {v} 0\n" for d, t, v in rows)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write(body)
    return Path(path)


def run_cli(argv: list[str]) -> int:
    """Run ``clipcurate`` in-process; return the exit code."""
    from clipcurate.cli.app import main

    try:
        main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0
