"""`queries match`: MetaCLIP matching semantics (golden + against the naive loop), balancing,
input formats, determinism and bad input."""

from __future__ import annotations

import json
import math
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from clipcurate.queries import stage
from clipcurate.core.uid import pair_uid
from clipcurate.core.workspace import Workspace
from clipcurate.queries.match import Matcher, draw, naive_match, spacing, spacing_reference

from _queries_helpers import run_cli

ENTRIES = ["cat", "black cat", "cat.", "Cat", "a", "New", "New York", "York City", "New York City",
           "don't", "e-mail", "dog?", "hot", "hot dog", "dog", "city", "York"]


def ids(*names):
    return sorted(ENTRIES.index(n) for n in names)


GOLDEN = [
    # punctuation is spaced out of the caption, never out of the entry
    ("A black cat.", ids("cat", "black cat")),
    ("cat.", ids("cat")),
    ("my cat,your dog;their hot dog!", ids("cat", "dog", "hot", "hot dog")),
    ("dog?", ids("dog")),
    # case-sensitive
    ("CAT Cat cat", ids("Cat", "cat")),
    ("a City", ids("a")),
    # overlapping and nested entries all count, each once
    ("New York City at night", ids("New", "New York", "York City", "New York City", "York")),
    ("New York, New York", ids("New", "New York", "York")),
    ("cat cat cat", ids("cat")),
    # entries that are prefixes of words or of other entries
    ("catalog hotdogs Newark", []),
    ("hot", ids("hot")),
    # tab, newline, carriage return become spaces; apostrophes and hyphens stay inside words
    ("black\tcat\nand\rdon't e-mail", ids("cat", "black cat", "don't", "e-mail")),
    ("dont email", []),
    ("`cat`", ids("cat")),
    ("", []),
]


@pytest.mark.parametrize("caption,expected", GOLDEN)
def test_golden_semantics(caption, expected):
    assert naive_match(caption, ENTRIES) == expected
    for engine in ("pyahocorasick", "ahocorasick_rs"):
        m = Matcher(ENTRIES, engine)
        assert m.match(caption) == expected
        assert m.match_many(["x", caption, caption + " cat"]) == [[], expected, naive_match(caption + " cat", ENTRIES)]


def test_spacing_is_metaclip_spacing():
    rng = random.Random(0)
    alphabet = "ab ,.;:?!`\t\n\r'-x\u00e9"
    for _ in range(2000):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
        assert spacing(s) == spacing_reference(s)


def test_automaton_equals_naive_loop_on_random_input():
    rng = random.Random(1)
    words = ["ab", "a", "b", "ba", "abc", "c", "AB", "b.", "a,b", "a b", "a  b", "c?"]
    entries = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 3))) for _ in range(60)]
    entries += entries[:5] + [""]  # repeated strings: both positions match, as in the loop
    captions = ["".join(rng.choice(["ab", "a", "b", "c", " ", " ", ",", ".", "?", "\n", "AB"])
                        for _ in range(rng.randint(0, 25))) for _ in range(1500)]
    m1, m2 = Matcher(entries), Matcher(entries, "ahocorasick_rs")
    want = [naive_match(c, entries) for c in captions]
    for c, w in zip(captions, want):
        assert m1.match(c) == w, c
        assert m2.match(c) == w, c
    assert m1.match_many(captions) == want
    assert m2.match_many(captions) == want


def test_draw_is_uniform_and_keyed():
    us = [draw(0, f"{i:032x}", 7) for i in range(20000)]
    assert all(0.0 <= u < 1.0 for u in us)
    assert abs(sum(us) / len(us) - 0.5) < 0.01
    assert draw(0, "ab" * 16, 1) == draw(0, "ab" * 16, 1) != draw(1, "ab" * 16, 1)
    assert draw(0, "ab" * 16, 1) != draw(0, "ab" * 16, 2)


# -- the stage ------------------------------------------------------------------------------------------

def _ws_with_queries(tmp_path, entries) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.create()
    from clipcurate.core import manifest

    manifest.write(stage.QUERIES, {"query": entries, "source": ["unigram"] * len(entries),
                                   "count": [None] * len(entries), "pmi": [None] * len(entries),
                                   "views": [None] * len(entries), "entry_id": list(range(len(entries)))},
                   ws.path("queries", "queries.parquet"))
    return ws


def _balance_input(tmp_path):
    rows = ([("alpha", i) for i in range(30_000)] + [("alpha beta", i) for i in range(2_000)]
            + [("gamma here", i) for i in range(500)] + [("nothing", i) for i in range(300)])
    random.Random(5).shuffle(rows)
    tbl = pa.table({"url": [f"http://x/{c.replace(' ', '_')}/{i}.jpg" for c, i in rows],
                    "caption": [c for c, _ in rows]})
    path = tmp_path / "cands.parquet"
    pq.write_table(tbl, path)
    return path, tbl


@pytest.mark.slow
def test_balancing_keep_rate_and_determinism(tmp_path):
    ws = _ws_with_queries(tmp_path, ["alpha", "beta", "gamma", "unused"])
    path, tbl = _balance_input(tmp_path)
    stats = stage.match(ws, path, max_per_query=1000, seed=3)
    assert stats["rows"] == 32_800 and stats["matched"] == 32_500 and stats["unmatched"] == 300
    counts = pq.read_table(ws.path("candidates", "entry_counts.parquet")).to_pylist()
    assert [c["count_before"] for c in counts] == [32_000, 2_000, 500, 0]
    # p(alpha) = 1000/32000, p(beta) = 1000/2000, p(gamma) = 1: the expected number kept is
    # 30000 p_a + 2000 (1 - (1 - p_a)(1 - p_b)) + 500
    pa_, pb = 1000 / 32_000, 0.5
    p_ab = 1 - (1 - pa_) * (1 - pb)
    mean = 30_000 * pa_ + 2_000 * p_ab + 500
    sd = math.sqrt(30_000 * pa_ * (1 - pa_) + 2_000 * p_ab * (1 - p_ab))
    assert abs(stats["kept"] - mean) < 4 * sd, (stats["kept"], mean, sd)
    assert counts[2]["count_after"] == 500 and counts[3]["count_after"] == 0
    assert abs(counts[1]["count_after"] - 2000 * p_ab) < 4 * math.sqrt(2000 * p_ab * (1 - p_ab))
    out = pq.read_table(ws.path("candidates", "candidates.parquet"))
    assert out.num_rows == stats["kept"]
    assert out.column_names == ["uid", "url", "caption", "entry_ids", "extra"]
    row = out.slice(0, 1).to_pylist()[0]
    assert row["uid"] == pair_uid(row["url"], row["caption"])
    first = sorted(out.column("uid").to_pylist())

    # same seed → same output, even with the rows in another order and other batch sizes
    rev = tmp_path / "rev.parquet"
    pq.write_table(tbl.take(list(range(tbl.num_rows - 1, -1, -1))), rev)
    ws2 = _ws_with_queries(tmp_path / "b", ["alpha", "beta", "gamma", "unused"])
    stage.match(ws2, rev, max_per_query=1000, seed=3, batch_rows=777)
    assert sorted(pq.read_table(ws2.path("candidates", "candidates.parquet")).column("uid").to_pylist()) == first
    # a rerun is skipped when nothing changed; another seed gives another sample
    stage.match(ws, path, max_per_query=1000, seed=3)
    stage.match(ws, path, max_per_query=1000, seed=4)
    assert sorted(pq.read_table(ws.path("candidates", "candidates.parquet")).column("uid").to_pylist()) != first


def test_formats_columns_extra_nulls_and_duplicates(tmp_path, capsys):
    ws = _ws_with_queries(tmp_path, ["red car", "car", "tree"])
    rows = [{"URL": "http://a/1.jpg", "TEXT": "a red car.", "width": 640},
            {"URL": "http://a/2.jpg", "TEXT": "a tree", "width": 320},
            {"URL": "http://a/3.jpg", "TEXT": None, "width": 1},
            {"URL": "http://a/4.jpg", "TEXT": "nothing here", "width": 2},
            {"URL": "http://a/1.jpg", "TEXT": "a red car.", "width": 640}]
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    csv = tmp_path / "c.csv"
    csv.write_text("URL,TEXT,width\n" + "".join(
        f'{r["URL"]},"{r["TEXT"] or ""}",{r["width"]}\n' for r in rows if r["TEXT"]))
    tsv = tmp_path / "c.tsv"
    tsv.write_text("URL\tTEXT\twidth\n" + "".join(
        f'{r["URL"]}\t{r["TEXT"]}\t{r["width"]}\n' for r in rows if r["TEXT"]))
    pdir = tmp_path / "pq"
    pdir.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:2]), pdir / "part0.parquet")
    pq.write_table(pa.Table.from_pylist(rows[2:]), pdir / "part1.parquet")
    for src in (jsonl, csv, tsv, pdir):
        code = run_cli(["-w", str(ws.root), "queries", "match", str(src), "--url-column", "URL",
                        "--caption-column", "TEXT", "--max-per-query", "100", "--force"])
        assert code == 0, capsys.readouterr().err
        out = pq.read_table(ws.path("candidates", "candidates.parquet")).to_pylist()
        assert [(r["url"], r["caption"], r["entry_ids"]) for r in out] == [
            ("http://a/1.jpg", "a red car.", [0, 1]), ("http://a/2.jpg", "a tree", [2])], src
        assert json.loads(out[0]["extra"]) == {"width": 640}
        st = json.loads(ws.path("candidates", "stats.json").read_text())
        assert st["duplicates"] == 1 and st["unmatched"] == 1
    assert "kept\t2" in capsys.readouterr().out


def test_query_list_from_file_and_engine(tmp_path):
    ws = Workspace(tmp_path / "ws")
    cands = tmp_path / "c.csv"
    cands.write_text("url,caption\nhttp://x/1,a red car\nhttp://x/2,green tree\n")
    meta = tmp_path / "metadata.json"
    meta.write_text(json.dumps(["tree", "red car", "car"]))
    stage.match(ws, cands, queries_file=meta, engine="ahocorasick_rs")
    out = pq.read_table(ws.path("candidates", "candidates.parquet")).to_pylist()
    assert [r["entry_ids"] for r in out] == [[1, 2], [0]]
    txt = tmp_path / "q.txt"
    txt.write_text("car\ntree\n")
    stage.match(ws, cands, queries_file=txt)
    counts = pq.read_table(ws.path("candidates", "entry_counts.parquet")).to_pylist()
    assert [(c["query"], c["count_before"], c["count_after"]) for c in counts] == [("car", 1, 1), ("tree", 1, 1)]


def _one_line_error(capsys, argv, *needles):
    code = run_cli(argv)
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and err.splitlines()[-1] == errors[0], err
    for n in needles:
        assert n in errors[0], err


def test_bad_candidates_one_line_exit_1(tmp_path, capsys):
    ws = _ws_with_queries(tmp_path, ["car"])
    nocap = tmp_path / "c.csv"
    nocap.write_text("url,text\nhttp://x/1,a car\n")
    _one_line_error(capsys, ["-w", str(ws.root), "queries", "match", str(nocap)], "no column 'caption'",
                    "--caption-column")
    _one_line_error(capsys, ["-w", str(ws.root), "queries", "match", str(nocap), "--caption-column", "text",
                             "--url-column", "link"], "no column 'link'")
    bad = tmp_path / "c.parquet"
    bad.write_text("not parquet")
    _one_line_error(capsys, ["-w", str(ws.root), "queries", "match", str(bad)], "c.parquet")
    odd = tmp_path / "c.xlsx"
    odd.write_text("x")
    _one_line_error(capsys, ["-w", str(ws.root), "queries", "match", str(odd)], "unknown candidates format")
    _one_line_error(capsys, ["-w", str(tmp_path / "empty"), "queries", "match", str(nocap)],
                    "clipcurate queries build")
    _one_line_error(capsys, ["-w", str(ws.root), "queries", "match", str(tmp_path / "none.csv")], "not found")
