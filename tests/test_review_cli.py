"""`clipcurate review`, `review status`, `review export`, and the `decisions` SQL view."""

from __future__ import annotations

import csv
import json

import pyarrow.parquet as pq
import pytest

from clipcurate.review import decisions
from clipcurate.review import ReviewSession

from _review_helpers import build


@pytest.fixture
def rws(ws):
    return build(ws.root, 12)


def _seed(ws):
    """ana decides 3 pairs, bob disagrees on one, the demo decides one automatically, ana flags one."""
    ids = ReviewSession(ws, "x").queue.pair_ids
    rec = lambda i, d, who, **kw: {"pair_id": ids[i], "decision": d, "reviewer": who, "seconds": 1.0,  # noqa: E731
                                   "benchmark": "cifar10" if i % 2 == 0 else "stl10", "bench_index": i // 2,
                                   "pool_uid": f"p{i}", **kw}
    decisions.append(ws, [rec(0, "duplicate", "ana"), rec(1, "not_duplicate", "ana"), rec(2, "duplicate", "ana"),
                          rec(1, "duplicate", "bob"), rec(5, "duplicate", "demo", source="auto-demo"),
                          rec(3, "flag", "ana")])
    return ids


def test_status_table_marks_automatic_and_disagreements(rws, cli):
    _seed(rws)
    r = cli("-w", rws.root, "review", "status")
    assert r.code == 0, r.err
    assert "queued pairs" in r.out and "automatic (auto-demo)" in r.out
    assert "disagreements (majority wins" in r.out
    r = cli("-w", rws.root, "review", "status", "--format", "json")
    s = json.loads(r.out)
    assert (s["queued"], s["decided"], s["undecided"]) == (12, 4, 8)
    assert (s["duplicate"], s["not_duplicate"], s["decided_automatically"]) == (4, 0, 1)  # tie → duplicate
    assert (s["flagged"], s["disagreements"]) == (1, 1)
    kinds = {r["reviewer"]: r["kind"] for r in s["reviewers"]}
    assert kinds == {"ana": "human", "bob": "human", "demo": "automatic (auto-demo)"}


def test_export_parquet_and_csv(rws, cli, tmp_path):
    ids = _seed(rws)
    r = cli("-w", rws.root, "review", "export", "--output", tmp_path / "d.parquet")
    assert r.code == 0, r.err
    t = pq.read_table(tmp_path / "d.parquet").to_pylist()
    assert [x["pair_id"] for x in t] == [ids[0], ids[1], ids[2], ids[5]]  # queue order
    by = {x["pair_id"]: x for x in t}
    assert by[ids[1]]["disagreement"] and by[ids[1]]["reviewers"] == "ana,bob"
    assert by[ids[5]]["source"] == "auto-demo" and by[ids[0]]["score_clip"] is not None
    r = cli("-w", rws.root, "review", "export", "--format", "csv", "-o", tmp_path / "d.csv")
    assert r.code == 0, r.err
    rows = list(csv.DictReader(open(tmp_path / "d.csv")))
    assert len(rows) == 4 and rows[0]["verdict"] == "duplicate"


def test_sql_view_and_report(rws, cli):
    _seed(rws)
    r = cli("-w", rws.root, "sql", "select reviewer, count(*) from decisions group by 1 order by 1", "-f", "csv")
    assert r.code == 0, r.err
    assert r.out.splitlines()[1:] == ["ana,4", "bob,1", "demo,1"]
    r = cli("-w", rws.root, "sql", "review_progress", "-f", "csv")
    assert r.code == 0 and "auto-demo" in r.out


def test_open_resolves_reviewer_and_refreshes(rws, cli, monkeypatch):
    import clipcurate.cli.review as cr

    seen = {}

    def fake_open(ws, session, images, prefetch):
        seen.update(reviewer=session.reviewer, images=images, n=len(session), sort=session.sort)
        session.decide("duplicate")
        return True

    monkeypatch.setattr(cr, "open_app", fake_open)
    monkeypatch.setattr(cr, "_interactive", lambda: True)
    monkeypatch.setenv("CLIPCURATE_REVIEWER", "carla")
    r = cli("-w", rws.root, "review", "--benchmark", "stl10", "--sort", "clip")
    assert r.code == 0, r.err
    assert seen == {"reviewer": "carla", "images": "halfcell", "n": 6, "sort": "clip"}
    assert "decisions saved" in r.err and "1/6 pairs decided" in r.err
    r = cli("-w", rws.root, "review", "--reviewer", "dan", "--images", "none")
    assert r.code == 0 and seen["reviewer"] == "dan" and seen["images"] == "none"
    assert {x["reviewer"] for x in decisions.load(rws)[0]} == {"carla", "dan"}


def test_errors_are_one_line(rws, ws, cli, tmp_path):
    r = cli("-w", rws.root, "review")  # not a terminal here
    assert r.code == 1 and "needs a terminal" in r.err
    r = cli("-w", rws.root, "review", "--sort", "bogus")
    assert r.code == 1 and "sort 'bogus' not one of" in r.err
    r = cli("-w", rws.root, "review", "--benchmark", "imagenet")
    assert r.code == 1 and "'imagenet' is not in the review queue" in r.err
    r = cli("-w", rws.root, "review", "--images", "ascii")
    assert r.code == 2
    (rws.root / "overlap" / "review_queue.parquet").unlink()
    for args in (["review"], ["review", "status"]):
        r = cli("-w", rws.root, *args)
        assert r.code == 1 and "run `clipcurate overlap` first" in r.err, args
        assert "Traceback" not in r.err
