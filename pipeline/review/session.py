"""The review stage: people decide the pairs that `overlap` put in its review band.

This module is the pure part: a :class:`ReviewSession` is a small state machine over two inputs,
and the Textual app (:mod:`clipcurate.review.app`) only draws it and forwards keys to it.

1. The **queue** is ``overlap/review_queue.parquet`` (manifest ``review_queue``): one row per band
   pair, highest score first. It is held as Arrow columns; a *view* of it is just an array of row
   numbers (filtered by benchmark or by "this signal was computed", sorted by a signal), so 100,000
   queued pairs cost a few numpy arrays, not 100,000 objects.
2. The **decision log** is ``review/decisions.jsonl`` (see :mod:`clipcurate.review.decisions`). The session
   never keeps decisions of its own: every key press appends one record to the log, then the session
   replays what was appended since it last looked (its own record and any other reviewer's), so its
   state is always exactly the log's.

Per pair and reviewer the records form a stack (``undo`` pops). A reviewer has *decided* a pair
when a ``duplicate``/``not_duplicate`` vote is on their stack. Keys map to actions:

    y / n   vote duplicate / not duplicate, then go to the next pair this reviewer has not decided
    s       skip: log it (time spent counts), go to the next pair; the pair stays undecided
    f       flag for a second look (stays on the pair; does not change the vote)
    x       in the sample view: none of the sample's undecided pairs is a copy (one record per pair)
    u       undo this session's last action (pops its records from the log's stacks) and go back
    j / k   move

Opening a session resumes at the first pair (in the view's order) this reviewer has neither
decided nor skipped; when only skipped pairs are left, at the first of those.

In the ``triage`` order (:mod:`clipcurate.review.triage`) the session knows which pairs can still
change a benchmark sample's split, resumes at the first of them and, after each vote, goes to the
next one, skipping the pairs of samples a vote has settled. ``audit=True`` opens the rule's own
decisions (overlap and clean pairs) instead of the review band; votes there are ordinary records.

Decisions flow back through ``clipcurate.overlap.refresh_after_review`` (the overlap stage reads the
decision log), so that confirmed pairs count as overlap and rejected ones as clean in the splits.
"""

from __future__ import annotations

import getpass
import os
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate.core import config
from clipcurate.review import decisions, triage
from clipcurate.core import sql
from clipcurate.core import manifest as mf
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.io import write_text
from clipcurate.core.workspace import Workspace

QUEUE_FILE = "overlap/review_queue.parquet"
QUEUE_COLUMNS = ["position", "pair_id", "pool_uid", "benchmark", "bench_index", "bench_uid", "score_clip",
                 "score_detector", "phash_dist", "dhash_dist", "kp_inliers", "text_sim", "rank"]

# name → (column, True when higher means "more likely a duplicate")
SIGNALS: dict[str, tuple[str, bool]] = {
    "clip": ("score_clip", True),
    "detector": ("score_detector", True),
    "phash": ("phash_dist", False),
    "dhash": ("dhash_dist", False),
    "keypoints": ("kp_inliers", True),
    "text": ("text_sim", True),
}
# "triage": the pairs that can still change a sample's split first (clipcurate.review.triage);
# "score": the queue's own order (highest score first; seeded random in the audit queue)
SORTS = ("triage", "score", *SIGNALS, "benchmark")
IMAGE_MODES = ("auto", "halfcell", "sixel", "kitty", "none")
ACTIONS = ("duplicate", "not_duplicate", "skip", "flag")

config.section("review", {"reviewer": "", "images": "halfcell", "sort": "triage", "prefetch": 4},
               {"reviewer": "name recorded with each decision (default: $CLIPCURATE_REVIEWER, $USER)",
                "images": "auto | halfcell | sixel | kitty | none (text only)",
                "sort": "queue order: " + " | ".join(SORTS),
                "prefetch": "pairs decoded ahead of the one on screen"})


# --------------------------------------------------------------------------------------------
# The queue


def queue_path(ws: Workspace) -> Path:
    return ws.root / QUEUE_FILE


def load_queue(ws: Workspace, audit: bool = False) -> "Queue":
    """The review queue, or a one-line error naming `clipcurate overlap`. ``audit``: the rule's own
    decisions instead (overlap and clean pairs, seeded random order; :func:`triage.audit_table`)."""
    if audit:
        return Queue(triage.audit_table(ws, QUEUE_COLUMNS))
    path = queue_path(ws)
    if not path.is_file():
        raise MissingUpstream(f"review queue ({path})", "clipcurate overlap")
    if "review_queue" in mf.REGISTRY:
        tbl = mf.read("review_queue", path)
    else:  # the overlap stage is not installed: read the agreed columns directly
        tbl = pq.read_table(path)
    missing = [c for c in QUEUE_COLUMNS if c not in tbl.column_names]
    if missing:
        raise ClipcurateError(f"{path}: columns {missing} missing; rerun `clipcurate overlap --force`")
    return Queue(tbl.select(QUEUE_COLUMNS))


class Queue:
    """The review queue as Arrow columns; rows are addressed by their row number."""

    def __init__(self, table: pa.Table):
        self.table = table.combine_chunks()
        self.n = table.num_rows
        self.pair_ids: list[str] = self.table.column("pair_id").to_pylist()
        self.benchmark = np.asarray(self.table.column("benchmark").to_pylist(), dtype=object)
        self.bench_index = self.table.column("bench_index").to_numpy(zero_copy_only=False)
        self.position = self.table.column("position").to_numpy(zero_copy_only=False)
        self._rows: dict[int, dict] = {}

    def __len__(self) -> int:
        return self.n

    @property
    def benchmarks(self) -> list[str]:
        return sorted(set(self.benchmark.tolist()))

    def row(self, i: int) -> dict:
        """Row ``i`` as a dict (cached: the app asks for the same few rows repeatedly)."""
        r = self._rows.get(i)
        if r is None:
            if len(self._rows) > 4096:
                self._rows.clear()
            r = self._rows[i] = self.table.slice(i, 1).to_pylist()[0]
        return r

    def _signal(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        col = self.table.column(SIGNALS[name][0])
        valid = ~col.is_null().to_numpy(zero_copy_only=False)
        values = col.fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
        return values, valid

    def order(self, sort: str = "score", benchmarks: Iterable[str] | None = None,
              signal: str | None = None, sample: tuple[str, int] | None = None,
              triaged: "triage.Triage | None" = None) -> np.ndarray:
        """Row numbers of the view: filter by benchmark, by 'signal computed' and to one benchmark
        sample, then sort (``triage`` needs the :class:`~clipcurate.review.triage.Triage`)."""
        if sort not in SORTS:
            raise ClipcurateError(f"sort {sort!r} not one of: {', '.join(SORTS)}")
        if signal is not None and signal not in SIGNALS:
            raise ClipcurateError(f"signal {signal!r} not one of: {', '.join(SIGNALS)}")
        keep = np.ones(self.n, dtype=bool)
        if benchmarks:
            wanted = list(benchmarks)
            unknown = sorted(set(wanted) - set(self.benchmarks))
            if unknown:
                raise ClipcurateError(f"benchmark {unknown[0]!r} is not in the review queue "
                                      f"(queued: {', '.join(self.benchmarks) or 'none'})")
            keep &= np.isin(self.benchmark, wanted)
        if signal is not None:
            keep &= self._signal(signal)[1]
        if sample is not None:
            keep &= (self.benchmark == sample[0]) & (self.bench_index == int(sample[1]))
        rows = np.flatnonzero(keep)
        # The queue's own order (position) breaks every tie, so each view is deterministic.
        pos = self.position[rows]
        if sort == "triage" and triaged is not None:
            return triaged.order(rows, self.position)
        if sort in ("score", "triage"):
            idx = np.argsort(pos, kind="stable")
        elif sort == "benchmark":
            idx = np.lexsort((pos, self.benchmark[rows].astype(str)))
        else:
            values, valid = self._signal(sort)
            v = values[rows] if SIGNALS[sort][1] else -values[rows]
            # strongest first, pairs without this signal last
            idx = np.lexsort((pos, -v, ~valid[rows]))
        return rows[idx]


# --------------------------------------------------------------------------------------------
# The session


def default_reviewer(option: str | None = None, environ=None) -> str:
    """--reviewer, else $CLIPCURATE_REVIEWER, $USER, $LOGNAME, the login name."""
    environ = os.environ if environ is None else environ
    for v in (option, environ.get("CLIPCURATE_REVIEWER"), environ.get("USER"), environ.get("LOGNAME")):
        if v and v.strip():
            return v.strip()
    try:
        return getpass.getuser()
    except Exception:  # pragma: no cover - no passwd entry
        return "unknown"


class ReviewSession:
    """The review state machine. Every action appends to the log first, then replays the log."""

    def __init__(self, ws: Workspace, reviewer: str, *, sort: str = "score",
                 benchmarks: Iterable[str] | None = None, signal: str | None = None,
                 sample: tuple[str, int] | None = None, audit: bool = False,
                 queue: Queue | None = None, source: str = "human",
                 clock: Callable[[], float] = time.monotonic, background_fsync: bool = False):
        self.ws = ws
        self.reviewer = reviewer
        self.source = source
        self.clock = clock
        self.audit = audit
        self.review_sort = "triage" if audit else sort  # the review queue's order, kept through an audit
        self.queue = queue if queue is not None else load_queue(ws, audit)
        self.triage = self._triage()
        self.sample = sample
        self.tail = decisions.LogTail(ws)
        self.stacks: dict[tuple[str, str], list[dict]] = {}
        self.reviewers_of: dict[str, set[str]] = {}
        self.mine: set[str] = set()  # pair_ids this reviewer has a vote on
        self.history: list[tuple[str, ...]] = []  # pair_ids of each of this session's actions, for undo
        self.session_id = uuid.uuid4().hex  # in each record: an undo removes this session's records only
        self.changed = False  # did this session write anything
        self.message = ""
        self.order = np.zeros(0, dtype=np.int64)
        self.view_pos: dict[str, int] = {}
        self.decided_in_view = 0
        self.pos = 0
        # With background_fsync each record is written (kill -9 safe) before the action returns,
        # and fsynced (power-cut safe) by this thread a few milliseconds later, off the key path.
        self._flusher = ThreadPoolExecutor(1, thread_name_prefix="review-fsync") if background_fsync else None
        self.sync()
        self.set_view(sort, benchmarks, signal)

    def close(self) -> None:
        """Wait for pending fsyncs (call when the session ends)."""
        if self._flusher is not None:
            self._flusher.shutdown(wait=True)
            self._flusher = None

    def _triage(self) -> triage.Triage:
        """What each queued pair can still change (the review queue: band pairs and the rule's
        overlap pairs of the same samples; the audit queue: nothing — every pair is decided)."""
        t = triage.Triage(self.queue.table, triage.automatic_decisions(self.ws), triage.thresholds(self.ws))
        if not self.audit:
            t.add_auto_overlap(self.ws)
        return t

    def verdict(self, pid: str) -> str | None:
        """The pair's verdict over every reviewer's latest vote (majority, a tie is a duplicate)."""
        votes = [decisions.vote(self.stacks.get((pid, rev), [])) for rev in self.reviewers_of.get(pid, ())]
        votes = [v["decision"] for v in votes if v is not None]
        if not votes:
            return None
        return "duplicate" if 2 * votes.count("duplicate") >= len(votes) else "not_duplicate"

    # -- the log ----------------------------------------------------------------------------
    def sync(self) -> int:
        """Replay records appended to the log since the last call; returns how many."""
        new = self.tail.read_new()
        touched = set()
        for r in new:
            pid, rev = decisions.push(self.stacks, r)
            touched.add(pid)
            self.reviewers_of.setdefault(pid, set()).add(rev)
            if rev == self.reviewer:
                had = pid in self.mine
                has = decisions.vote(self.stacks[(pid, rev)]) is not None
                if has and not had:
                    self.mine.add(pid)
                    self.decided_in_view += pid in self.view_pos
                elif had and not has:
                    self.mine.discard(pid)
                    self.decided_in_view -= pid in self.view_pos
        for pid in touched:  # who else still matters, now that these pairs have (or lost) a verdict
            self.triage.set_verdict(pid, self.verdict(pid))
        return len(new)

    def _append(self, decision: str, pid: str) -> dict:
        return self._append_many(decision, [pid])[0]

    def _append_many(self, decision: str, pids: list[str]) -> list[dict]:
        """One record per pair, written in one locked append; the time spent on screen is shared
        among them (a group verdict took one look, not one per pair)."""
        seconds = round(max(0.0, self.clock() - self.shown_at) / len(pids), 3)
        recs = []
        for pid in pids:
            row = self.queue.row(self.order[self.view_pos[pid]]) if pid in self.view_pos else None
            rec = {"pair_id": pid, "decision": decision, "reviewer": self.reviewer, "source": self.source,
                   "session": self.session_id}
            if row is not None:
                rec.update(pool_uid=row["pool_uid"], benchmark=row["benchmark"],
                           bench_index=int(row["bench_index"]))
            if decision != "undo":
                rec["seconds"] = seconds
            recs.append(rec)
        if self._flusher is not None:
            decisions.append(self.ws, recs, fsync=False)
            self._flusher.submit(decisions.flush, self.ws)
        else:
            decisions.append(self.ws, recs)
        self.changed = True
        self.sync()
        return recs

    # -- the view ---------------------------------------------------------------------------
    def set_view(self, sort: str = "score", benchmarks: Iterable[str] | None = None,
                 signal: str | None = None, keep_pair: bool = False, sample: tuple[str, int] | None = ...) -> None:
        """Filter and sort the queue; go to the resume position (or stay on the current pair).
        ``sample``: only that benchmark sample's pairs (None: all; left out: as before)."""
        current = self.pair_id if keep_pair else None
        self.sort, self.benchmarks, self.signal = sort, list(benchmarks or []), signal
        if sample is not ...:
            self.sample = sample
        self.order = self.queue.order(sort, self.benchmarks, signal, self.sample, self.triage)
        self.view_samples = {self.triage.sample_of[self.queue.pair_ids[r]] for r in self.order.tolist()} \
            if (self.benchmarks or signal or self.sample) else None
        ids = self.queue.pair_ids
        self.view_pos = {ids[r]: i for i, r in enumerate(self.order.tolist())}
        self.decided_in_view = sum(1 for pid in self.mine if pid in self.view_pos)
        if current is not None and current in self.view_pos:
            self.goto(self.view_pos[current])
        else:
            self.goto(self.resume_position())

    def __len__(self) -> int:
        return len(self.order)

    def resume_position(self) -> int:
        """The first pair neither decided nor skipped by this reviewer; else the first undecided.
        In triage order: the first pair that still matters, when there is one."""
        ids = self.queue.pair_ids
        if self.sort == "triage":
            nxt = self._next_mattering(-1)
            if nxt is not None:
                return nxt
        first_skipped = None
        for i, r in enumerate(self.order.tolist()):
            pid = ids[r]
            if pid in self.mine:
                continue
            if (pid, self.reviewer) not in self.stacks or not self.stacks[(pid, self.reviewer)]:
                return i
            if first_skipped is None:
                first_skipped = i
        return first_skipped if first_skipped is not None else 0

    @property
    def done(self) -> bool:
        return self.decided_in_view >= len(self)

    @property
    def pair_id(self) -> str | None:
        return self.queue.pair_ids[self.order[self.pos]] if len(self) else None

    def pair(self, i: int | None = None) -> dict | None:
        """The queue row at view position ``i`` (default: the current one)."""
        i = self.pos if i is None else i
        if not len(self) or not 0 <= i < len(self):
            return None
        return self.queue.row(int(self.order[i]))

    def upcoming(self, n: int) -> list[dict]:
        """The next ``n`` pairs after the current one (to prefetch their images)."""
        return [self.pair(i) for i in range(self.pos + 1, min(len(self), self.pos + 1 + n))]

    def state(self, pid: str | None = None) -> dict:
        """What the log says about a pair: my vote, my flag/skip, the other reviewers' votes."""
        pid = pid or self.pair_id
        stack = self.stacks.get((pid, self.reviewer), [])
        mine = decisions.vote(stack)
        others = {}
        for rev in sorted(self.reviewers_of.get(pid, ())):
            if rev == self.reviewer:
                continue
            v = decisions.vote(self.stacks.get((pid, rev), []))
            if v is not None:
                others[rev] = v
        return {"vote": mine["decision"] if mine else None,
                "seconds": mine.get("seconds") if mine else None,
                "flagged": any(r["decision"] == "flag" for r in stack),
                "skipped": bool(stack) and stack[-1]["decision"] == "skip",
                "others": {rev: r["decision"] for rev, r in others.items()},
                "others_source": {rev: r.get("source", "human") for rev, r in others.items()}}

    # -- moving -----------------------------------------------------------------------------
    def goto(self, i: int) -> None:
        self.pos = min(max(0, int(i)), max(0, len(self) - 1))
        self.shown_at = self.clock()

    def move(self, delta: int) -> None:
        self.sync()
        self.goto(self.pos + delta)

    def matter(self) -> int:
        """Pairs that matter (:mod:`clipcurate.review.triage`) among the samples of this view."""
        if self.view_samples is None:
            return self.triage.matter
        return sum(self.triage.matter_of.get(k, 0) for k in self.view_samples)

    def _next_mattering(self, after: int) -> int | None:
        """The first view position after ``after`` (then from the top) whose pair still matters
        and has no vote of mine; None when no pair of the view matters any more."""
        if self.matter() == 0:
            return None
        ids, order, n = self.queue.pair_ids, self.order, len(self)
        for i in [*range(after + 1, n), *range(0, min(after + 1, n))]:
            pid = ids[order[i]]
            if pid not in self.mine and self.triage.matters(pid):
                return i
        return None

    def next_undecided(self) -> int:
        """The next view position after the current one without my vote (else just the next). In
        triage order the pairs whose vote no longer changes anything are skipped."""
        if self.sort == "triage":
            nxt = self._next_mattering(self.pos)
            if nxt is not None:
                return nxt
        if self.decided_in_view >= len(self):  # all decided (re-reviewing): no need to scan
            return min(self.pos + 1, len(self) - 1)
        ids = self.queue.pair_ids
        order = self.order
        for i in range(self.pos + 1, len(self)):
            if ids[order[i]] not in self.mine:
                return i
        return min(self.pos + 1, len(self) - 1)

    # -- actions ----------------------------------------------------------------------------
    def decide(self, decision: str) -> dict | None:
        """y / n / s / f on the current pair; returns the record written."""
        if decision not in ACTIONS:
            raise ValueError(f"decision {decision!r} not in {ACTIONS}")
        pid = self.pair_id
        if pid is None:
            return None
        rec = self._append(decision, pid)
        self.history.append((pid,))
        if decision in decisions.VERDICTS:
            self.message = f"saved: {decision.replace('_', ' ')}"
            self.goto(self.next_undecided())
        elif decision == "skip":
            self.message = "skipped"
            self.goto(self.pos + 1)
        else:
            self.message = "flagged for a second look"
            self.shown_at = self.clock()
        return rec

    def undo(self) -> dict | None:
        """Undo this session's last action (a sample-view verdict: all its records) and go back
        to its (first) pair."""
        if not self.history:
            self.message = "nothing to undo in this session"
            return None
        pids = self.history.pop()
        recs = self._append_many("undo", list(pids))
        if pids[0] in self.view_pos:
            self.goto(self.view_pos[pids[0]])
        self.message = "undone" if len(pids) == 1 else f"undone: {len(pids)} pairs"
        return recs[0]

    # -- the sample view --------------------------------------------------------------------
    def group(self) -> list[int]:
        """View positions of the current pair's benchmark sample whose pairs are still undecided
        (no verdict from anyone, no vote of mine), in view order: what the sample view shows."""
        pid = self.pair_id
        if pid is None or self.audit:
            return []
        tri = self.triage
        key = tri.sample_of.get(pid)
        return sorted(self.view_pos[p] for p in tri.pairs_of.get(key, ())
                      if p in self.view_pos and p not in tri.verdict and p not in self.mine)

    def reject_group(self) -> list[dict]:
        """"None of these is a copy": a ``not_duplicate`` record for every pair :meth:`group`
        shows (one action; :meth:`undo` takes them all back), then the next pair as after a vote."""
        shown = self.group()
        if not shown:
            self.message = "no undecided pair of this sample to reject"
            return []
        pids = [self.queue.pair_ids[self.order[i]] for i in shown]
        recs = self._append_many("not_duplicate", pids)
        self.history.append(tuple(pids))
        self.message = f"saved: none of {len(pids)} is a copy"
        self.goto(self.next_undecided())
        return recs

    def progress(self) -> tuple[int, int]:
        """(pairs I decided in this view, pairs in this view)."""
        return self.decided_in_view, len(self)

    def set_audit(self, audit: bool) -> None:
        """Switch between the review queue and the audit queue (the rule's own decisions)."""
        if audit == self.audit:
            return
        queue = load_queue(self.ws, audit)  # raises (nothing changed) when overlap has not run
        if audit:
            self.review_sort = self.sort  # back to it when the audit ends
        self.audit, self.queue = audit, queue
        self.triage = self._triage()
        for pid in {p for p, _ in self.stacks}:
            self.triage.set_verdict(pid, self.verdict(pid))
        self.set_view("score" if audit else self.review_sort, [], None, sample=None)


# --------------------------------------------------------------------------------------------
# Status, export, flowing back into the splits


def _queue_or_none(ws: Workspace) -> Queue | None:
    return load_queue(ws) if queue_path(ws).is_file() else None


def summary(ws: Workspace) -> dict:
    """Progress and disagreements for `review status` (reads the queue and the log, writes nothing)."""
    records, bad = decisions.load(ws)
    queue = _queue_or_none(ws)
    if queue is None and not records:
        raise MissingUpstream(f"review queue ({queue_path(ws)})", "clipcurate overlap")
    eff = decisions.effective(records)
    st = decisions.stacks(records)
    queued = set(queue.pair_ids) if queue is not None else set()
    flagged = {pid for (pid, _), s in st.items() if any(r["decision"] == "flag" for r in s)}
    per: dict[tuple[str, str], dict] = {}
    for (pid, rev), stack in st.items():
        if not stack:
            continue
        v = decisions.vote(stack)
        src = (v or stack[-1]).get("source", "human")
        row = per.setdefault((rev, src), {"reviewer": rev, "source": src, "decided": 0, "duplicate": 0,
                                          "not_duplicate": 0, "skipped": 0, "flagged": 0, "seconds": []})
        if v is not None:
            row["decided"] += 1
            row[v["decision"]] += 1
            if v.get("seconds") is not None:
                row["seconds"].append(float(v["seconds"]))
        elif stack[-1]["decision"] == "skip":
            row["skipped"] += 1
        row["flagged"] += any(r["decision"] == "flag" for r in stack)
    reviewers = []
    for row in sorted(per.values(), key=lambda r: (r["source"] != "human", r["reviewer"])):
        secs = row.pop("seconds")
        row["median_seconds"] = round(statistics.median(secs), 2) if secs else None
        row["kind"] = "human" if row["source"] == "human" else f"automatic ({row['source']})"
        reviewers.append(row)
    decided_q = [pid for pid in eff if not queued or pid in queued]
    auto = [pid for pid in decided_q if eff[pid]["source"] != "human"]
    dis = decisions.disagreements(records)
    rule = triage.automatic_decisions(ws)
    return {
        "queued": len(queued) if queue is not None else None,
        # pairs whose vote can still change a benchmark sample's split
        "pairs_that_matter": triage.pairs_that_matter(ws, queue.table, eff) if queue is not None else None,
        "audit": triage.agreement(eff, triage.audited_decisions(ws)) if rule else [],
        "decided": len(decided_q),
        "undecided": (len(queued - set(decided_q)) if queue is not None else None),
        "duplicate": sum(eff[p]["verdict"] == "duplicate" for p in decided_q),
        "not_duplicate": sum(eff[p]["verdict"] == "not_duplicate" for p in decided_q),
        "decided_automatically": len(auto),
        "flagged": len(flagged),
        "disagreements": len(dis),
        "torn_or_bad_lines": bad,
        "reviewers": reviewers,
        "disagreement_pairs": [{"pair_id": d["pair_id"], "benchmark": d["benchmark"],
                                "bench_index": d["bench_index"], "verdict": d["verdict"],
                                "votes": ", ".join(f"{k}={v}" for k, v in sorted(d["votes"].items())),
                                "reviewers": ", ".join(d["reviewers"])} for d in dis],
    }


def mark_progress(ws: Workspace, queue: Queue | None = None) -> bool:
    """Write review/_SUCCESS when every queued pair has a verdict (so `status` says done)."""
    queue = queue if queue is not None else _queue_or_none(ws)
    if queue is None:
        return False
    eff = decisions.effective(decisions.load(ws)[0])
    done = all(pid in eff for pid in queue.pair_ids)
    marker = ws.root / "review" / "_SUCCESS"
    if done:
        marker.parent.mkdir(parents=True, exist_ok=True)
        write_text(marker, "")
    else:
        marker.unlink(missing_ok=True)
    return done


# --------------------------------------------------------------------------------------------
# SQL: a `decisions` view over the JSONL log (DuckDB skips a torn last line)


def _decisions_view(ws: Workspace) -> str | None:
    path = decisions.log_path(ws)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    cols = ("{pair_id: 'VARCHAR', pool_uid: 'VARCHAR', benchmark: 'VARCHAR', bench_index: 'BIGINT', "
            "decision: 'VARCHAR', reviewer: 'VARCHAR', ts: 'DOUBLE', seconds: 'DOUBLE', source: 'VARCHAR'}")
    p = "'" + str(path).replace("'", "''") + "'"
    return (f"SELECT pair_id, pool_uid, benchmark, bench_index, decision, reviewer, "
            f"to_timestamp(ts) AS ts, seconds, source FROM read_json({p}, format='newline_delimited', "
            f"columns={cols}, ignore_errors=true) WHERE pair_id IS NOT NULL AND decision IS NOT NULL")


sql.extra_view("decisions", _decisions_view,
               "Every review decision logged (review/decisions.jsonl), one row per record.")
sql.report("review_progress", "review decisions per reviewer, source and decision (undo not applied)",
           "select reviewer, source, decision, count(*) as n, round(median(seconds), 2) as median_seconds "
           "from decisions group by all order by reviewer, source, decision", needs=("decisions",))
