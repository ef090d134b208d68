"""A badly typed line in the decision log is a counted skip, not a TypeError in every reader."""

from __future__ import annotations

import json

from clipcurate.review import decisions


def test_badly_typed_records_are_skipped_and_counted(ws):
    good = {"pair_id": "p1", "pool_uid": "u", "benchmark": "b", "bench_index": 3, "decision": "duplicate",
            "reviewer": "ana", "ts": 1.0, "seconds": 2.0, "source": "human"}
    bad = [dict(good, reviewer=["x"]), dict(good, pair_id={"a": 1}), dict(good, bench_index="3"),
           dict(good, bench_index=True), dict(good, ts="yesterday"), dict(good, decision="maybe"), [1, 2], "text"]
    lines = [json.dumps(good)] + [json.dumps(b) for b in bad] + ["{torn"]
    decisions.log_path(ws).parent.mkdir(parents=True, exist_ok=True)
    decisions.log_path(ws).write_text("\n".join(lines) + "\n")
    records, skipped = decisions.load(ws)
    assert records == [good] and skipped == len(bad) + 1
    assert set(decisions.effective(ws)) == {"p1"}  # readers work on what is left


def test_review_status_survives_a_bad_line(ws, cli):
    decisions.append(ws, [{"pair_id": "p1", "pool_uid": "u", "benchmark": "b", "bench_index": 0,
                           "decision": "duplicate", "reviewer": "ana", "seconds": 1.0}])
    with open(decisions.log_path(ws), "a") as fh:
        fh.write(json.dumps({"pair_id": {"x": 1}, "decision": "duplicate", "reviewer": ["x"]}) + "\n")
    r = cli("-w", ws.root, "review", "status", "--format", "json")
    assert "unhashable" not in r.err and "Traceback" not in r.err, r.err
