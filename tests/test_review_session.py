"""The review session as a pure state machine, compared with a small reference model."""

from __future__ import annotations

import random

import pytest

from clipcurate.review import decisions
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.review import ReviewSession, load_queue
from clipcurate.core.workspace import Workspace

from _review_helpers import build


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


@pytest.fixture
def rws(tmp_path):
    return build(tmp_path / "ws", 12)


class Reference:
    """The obvious model: per pair, this reviewer's stack of actions; undo pops the last action
    of the session. Moves follow the documented rules."""

    def __init__(self, ids):
        self.ids = ids
        self.stack = {pid: [] for pid in ids}
        self.history = []
        self.pos = 0

    def vote(self, pid):
        for d in reversed(self.stack[pid]):
            if d in ("duplicate", "not_duplicate"):
                return d
        return None

    def act(self, key):
        n = len(self.ids)
        pid = self.ids[self.pos]
        if key in ("y", "n", "s", "f"):
            d = {"y": "duplicate", "n": "not_duplicate", "s": "skip", "f": "flag"}[key]
            self.stack[pid].append(d)
            self.history.append(pid)
            if key in "yn":
                nxt = [i for i in range(self.pos + 1, n) if self.vote(self.ids[i]) is None]
                self.pos = nxt[0] if nxt else min(self.pos + 1, n - 1)
            elif key == "s":
                self.pos = min(self.pos + 1, n - 1)
        elif key == "u":
            if self.history:
                pid = self.history.pop()
                self.stack[pid].pop()
                self.pos = self.ids.index(pid)
        elif key == "j":
            self.pos = min(self.pos + 1, n - 1)
        elif key == "k":
            self.pos = max(self.pos - 1, 0)


def test_session_matches_reference_model(rws):
    clock = Clock()
    s = ReviewSession(rws, "ana", clock=clock)
    ref = Reference(list(s.queue.pair_ids))
    rng = random.Random(7)
    for step in range(300):
        key = rng.choice("yynnsfujjkk")
        clock.t += 1.5
        {"y": lambda: s.decide("duplicate"), "n": lambda: s.decide("not_duplicate"), "s": lambda: s.decide("skip"),
         "f": lambda: s.decide("flag"), "u": s.undo, "j": lambda: s.move(1), "k": lambda: s.move(-1)}[key]()
        ref.act(key)
        assert s.pos == ref.pos, (step, key)
        for pid in ref.ids:
            assert s.state(pid)["vote"] == ref.vote(pid), (step, key, pid)
            assert s.state(pid)["flagged"] == ("flag" in ref.stack[pid])
        assert s.progress() == (sum(ref.vote(p) is not None for p in ref.ids), 12)
    # the log replayed from scratch agrees with the live session
    eff = decisions.effective(rws)
    assert {p: v["verdict"] for p, v in eff.items()} == {p: ref.vote(p) for p in ref.ids if ref.vote(p)}


def test_records_carry_reviewer_time_and_pair(rws):
    clock = Clock()
    s = ReviewSession(rws, "ana", clock=clock)
    first = s.pair()
    clock.t += 2.25
    rec = s.decide("duplicate")
    assert rec["seconds"] == 2.25 and rec["reviewer"] == "ana" and rec["source"] == "human"
    (saved,), bad = decisions.load(rws)
    assert bad == 0
    assert saved["pair_id"] == first["pair_id"] == decisions.pair_id(first["pool_uid"], first["benchmark"],
                                                                      first["bench_index"])
    assert saved["pool_uid"] == first["pool_uid"] and saved["bench_index"] == first["bench_index"]
    assert saved["ts"] > 1e9


def test_resume_at_first_undecided(rws):
    s = ReviewSession(rws, "ana")
    s.decide("duplicate")  # 0
    s.decide("not_duplicate")  # 1
    s.decide("skip")  # 2 stays undecided
    assert ReviewSession(rws, "ana").pos == 3  # neither decided nor skipped
    assert ReviewSession(rws, "bob").pos == 0  # each reviewer resumes on their own
    s2 = ReviewSession(rws, "ana")
    for _ in range(9):  # pairs 3..11
        s2.decide("duplicate")
    assert s2.progress() == (11, 12)
    assert ReviewSession(rws, "ana").pos == 2  # only the skipped pair is left
    s3 = ReviewSession(rws, "ana")
    s3.decide("duplicate")
    assert s3.done and ReviewSession(rws, "ana").pos == 0


def test_undo_with_nothing_to_undo(rws):
    s = ReviewSession(rws, "ana")
    assert s.undo() is None and "nothing to undo" in s.message
    assert decisions.load(rws) == ([], 0)


def test_two_reviewers_see_each_other(rws):
    a = ReviewSession(rws, "ana")
    b = ReviewSession(rws, "bob")
    a.decide("duplicate")
    b.sync()
    assert b.state(a.queue.pair_ids[0])["others"] == {"ana": "duplicate"}
    b.decide("not_duplicate")
    dis = decisions.disagreements(rws)
    assert len(dis) == 1 and dis[0]["verdict"] == "duplicate"  # a tie counts as duplicate


def test_filters_and_sorts(rws):
    q = load_queue(rws)
    s = ReviewSession(rws, "ana", benchmarks=["stl10"])
    assert len(s) == 6 and all(s.pair(i)["benchmark"] == "stl10" for i in range(len(s)))
    s = ReviewSession(rws, "ana", signal="detector")
    assert len(s) == 8 and all(s.pair(i)["score_detector"] is not None for i in range(len(s)))
    s = ReviewSession(rws, "ana", sort="detector")
    vals = [s.pair(i)["score_detector"] for i in range(len(s))]
    present = [v for v in vals if v is not None]
    assert present == sorted(present, reverse=True) and vals[len(present):] == [None] * (12 - len(present))
    s = ReviewSession(rws, "ana", sort="phash")
    ph = [s.pair(i)["phash_dist"] for i in range(len(s))]
    assert ph == sorted(ph)
    s = ReviewSession(rws, "ana", sort="score")
    assert [s.pair(i)["position"] for i in range(12)] == list(range(12))
    # switching the view keeps the pair on screen
    s.goto(5)
    pid = s.pair_id
    s.set_view("clip", keep_pair=True)
    assert s.pair_id == pid
    with pytest.raises(ClipcurateError, match="'imagenet' is not in the review queue"):
        q.order(benchmarks=["imagenet"])
    with pytest.raises(ClipcurateError, match="sort 'bogus'"):
        q.order(sort="bogus")


def test_missing_queue_names_the_command(tmp_path):
    ws = Workspace(tmp_path / "empty").create()
    with pytest.raises(MissingUpstream, match="clipcurate overlap"):
        ReviewSession(ws, "ana")


def test_background_fsync_session_writes_the_same_log(rws):
    s = ReviewSession(rws, "ana", background_fsync=True)
    s.decide("duplicate")
    s.decide("not_duplicate")
    s.undo()
    s.close()
    s.close()  # idempotent
    assert [r["decision"] for r in decisions.load(rws)[0]] == ["duplicate", "not_duplicate", "undo"]
