"""Decisions flow back: review the real `overlap` review queue, and the splits, `status` and `sql`
reflect the verdicts (confirmed → overlap, rejected → clean, decided_by human)."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from _overlap_helpers import make_workspace

# band pairs (between the default low and high thresholds) on two benchmarks
PLANTS = [("cifar10", 3, 0, 10, 0.99), ("cifar10", 5, 2, 5, 0.93), ("stl10", 1, 1, 7, 0.90),
          ("stl10", 2, 1, 8, 0.87)]


@pytest.mark.slow
def test_verdicts_reach_splits_status_and_sql(ws, cli, monkeypatch):
    import clipcurate.cli.review as cr

    make_workspace(ws.root, plants=PLANTS)
    r = cli("-w", ws.root, "overlap")
    assert r.code == 0, r.err
    queue = pq.read_table(ws.root / "overlap" / "review_queue.parquet").to_pylist()
    band = {(q["benchmark"], q["bench_index"]) for q in queue}
    assert {("cifar10", 5), ("stl10", 1)} <= band

    def reviewer_session(ws_, session, images, prefetch):
        # confirm the cifar10 pair, reject the stl10 one, skip everything else
        for _ in range(len(session)):
            p = session.pair()
            key = (p["benchmark"], p["bench_index"])
            session.decide({("cifar10", 5): "duplicate", ("stl10", 1): "not_duplicate"}.get(key, "skip"))
        return session.changed

    monkeypatch.setattr(cr, "open_app", reviewer_session)
    monkeypatch.setattr(cr, "_interactive", lambda: True)
    r = cli("-w", ws.root, "review", "--reviewer", "ana")
    assert r.code == 0, r.err
    assert "overlap splits and decontam list refreshed" in r.err

    splits = {(s["benchmark"], s["bench_index"]): s for s in
              pq.read_table(ws.root / "overlap" / "splits.parquet").to_pylist()}
    assert splits[("cifar10", 5)]["split"] == "overlap" and splits[("cifar10", 5)]["decided_by"] == "human"
    assert splits[("stl10", 1)]["split"] == "clean" and splits[("stl10", 1)]["decided_by"] == "human"

    r = cli("-w", ws.root, "sql", "select split, decided_by, count(*) from splits where decided_by = 'human' "
            "group by all order by 1", "-f", "csv")
    assert r.code == 0 and r.out.splitlines()[1:] == ["clean,human,1", "overlap,human,1"]
    r = cli("-w", ws.root, "sql", "select decision, count(*) from decisions group by 1 order by 1", "-f", "csv")
    assert r.code == 0 and "duplicate,1" in r.out.splitlines() and "not_duplicate,1" in r.out.splitlines()
    r = cli("-w", ws.root, "status", "--format", "csv")
    review_row = [line for line in r.out.splitlines() if line.startswith("review,")]
    assert review_row and "partial" in review_row[0]  # skipped pairs are still undecided
