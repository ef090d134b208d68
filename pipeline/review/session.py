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
    u       undo this session's last action (pops it from the log's stack) and go back to that pair
    j / k   move

Opening a session resumes at the first pair (in the view's order) this reviewer has neither
decided nor skipped; when only skipped pairs are left, at the first of those.

Decisions flow back through ``clipcurate.overlap.refresh_after_review`` (the overlap stage reads the
decision log), so that confirmed pairs count as overlap and rejected ones as clean in the splits.
"""

from __future__ import annotations

import csv
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
from clipcurate.review import decisions
from clipcurate.core import sql
from clipcurate.core import manifest as mf
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.io import atomic_path, write_text
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
SORTS = ("score", *SIGNALS, "benchmark")
IMAGE_MODES = ("auto", "halfcell", "sixel", "kitty", "none")
ACTIONS = ("duplicate", "not_duplicate", "skip", "flag")

config.section("review", {"reviewer": "", "images": "halfcell", "sort": "score", "prefetch": 4},
               {"reviewer": "name recorded with each decision (default: $CLIPCURATE_REVIEWER, $USER)",
                "images": "auto | halfcell | sixel | kitty | none (text only)",
                "sort": "queue order: " + " | ".join(SORTS),
                "prefetch": "pairs decoded ahead of the one on screen"})


# --------------------------------------------------------------------------------------------
# The queue


def queue_path(ws: Workspace) -> Path:
    return ws.root / QUEUE_FILE


def load_queue(ws: Workspace) -> "Queue":
    """The review queue, or a one-line error naming `clipcurate overlap`."""
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
              signal: str | None = None) -> np.ndarray:
        """Row numbers of the view: filter by benchmark and by 'signal computed', then sort."""
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
        rows = np.flatnonzero(keep)
        # The queue's own order (position) breaks every tie, so each view is deterministic.
        pos = self.position[rows]
        if sort == "score":
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
                 queue: Queue | None = None, source: str = "human",
                 clock: Callable[[], float] = time.monotonic, background_fsync: bool = False):
        self.ws = ws
        self.reviewer = reviewer
        self.source = source
        self.clock = clock
        self.queue = queue if queue is not None else load_queue(ws)
        self.tail = decisions.LogTail(ws)
        self.stacks: dict[tuple[str, str], list[dict]] = {}
        self.reviewers_of: dict[str, set[str]] = {}
        self.mine: set[str] = set()  # pair_ids this reviewer has a vote on
        self.history: list[str] = []  # pair_ids of this session's actions, for undo
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

    # -- the log ----------------------------------------------------------------------------
    def sync(self) -> int:
        """Replay records appended to the log since the last call; returns how many."""
        new = self.tail.read_new()
        for r in new:
            pid, rev = decisions.push(self.stacks, r)
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
        return len(new)

    def _append(self, decision: str, pid: str) -> dict:
        row = self.queue.row(self.order[self.view_pos[pid]]) if pid in self.view_pos else None
        rec = {"pair_id": pid, "decision": decision, "reviewer": self.reviewer, "source": self.source,
               "session": self.session_id}
        if row is not None:
            rec.update(pool_uid=row["pool_uid"], benchmark=row["benchmark"], bench_index=int(row["bench_index"]))
        if decision != "undo":
            rec["seconds"] = round(max(0.0, self.clock() - self.shown_at), 3)
        if self._flusher is not None:
            decisions.append(self.ws, [rec], fsync=False)
            self._flusher.submit(decisions.flush, self.ws)
        else:
            decisions.append(self.ws, [rec])
        self.changed = True
        self.sync()
        return rec

    # -- the view ---------------------------------------------------------------------------
    def set_view(self, sort: str = "score", benchmarks: Iterable[str] | None = None,
                 signal: str | None = None, keep_pair: bool = False) -> None:
        """Filter and sort the queue; go to the resume position (or stay on the current pair)."""
        current = self.pair_id if keep_pair else None
        self.sort, self.benchmarks, self.signal = sort, list(benchmarks or []), signal
        self.order = self.queue.order(sort, self.benchmarks, signal)
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
        """The first pair neither decided nor skipped by this reviewer; else the first undecided."""
        ids = self.queue.pair_ids
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

    def next_undecided(self) -> int:
        """The next view position after the current one without my vote (else just the next)."""
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
        self.history.append(pid)
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
        """Undo this session's last action and go back to its pair."""
        if not self.history:
            self.message = "nothing to undo in this session"
            return None
        pid = self.history.pop()
        rec = self._append("undo", pid)
        if pid in self.view_pos:
            self.goto(self.view_pos[pid])
        self.message = "undone"
        return rec

    def progress(self) -> tuple[int, int]:
        """(pairs I decided in this view, pairs in this view)."""
        return self.decided_in_view, len(self)


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
    return {
        "queued": len(queued) if queue is not None else None,
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


EXPORT_COLUMNS = [
    ("pair_id", pa.string()), ("pool_uid", pa.string()), ("benchmark", pa.string()), ("bench_index", pa.int64()),
    ("verdict", pa.string()), ("votes_duplicate", pa.int32()), ("votes_not_duplicate", pa.int32()),
    ("reviewers", pa.string()), ("source", pa.string()), ("disagreement", pa.bool_()), ("flagged", pa.bool_()),
    ("seconds", pa.float64()), ("last_ts", pa.float64()), ("position", pa.int64()), ("score_clip", pa.float32()),
    ("score_detector", pa.float32()), ("phash_dist", pa.int32()), ("text_sim", pa.float32()),
]


def export_table(ws: Workspace) -> pa.Table:
    """One row per decided pair: the verdict, its votes and sources, joined with the queue's scores."""
    records, _ = decisions.load(ws)
    eff = decisions.effective(records)
    st = decisions.stacks(records)
    queue = _queue_or_none(ws)
    qrow = {pid: i for i, pid in enumerate(queue.pair_ids)} if queue is not None else {}
    rows = []
    for pid in sorted(eff, key=lambda p: (qrow.get(p, 1 << 62), p)):
        e = eff[pid]
        votes = [decisions.vote(s) for (p, _), s in st.items() if p == pid]
        votes = [v for v in votes if v is not None]
        q = queue.row(qrow[pid]) if pid in qrow else {}
        rows.append({
            "pair_id": pid, "pool_uid": e["pool_uid"], "benchmark": e["benchmark"],
            "bench_index": e["bench_index"], "verdict": e["verdict"],
            "votes_duplicate": e["votes"].get("duplicate", 0), "votes_not_duplicate": e["votes"].get("not_duplicate", 0),
            "reviewers": ",".join(sorted(v.get("reviewer") or "unknown" for v in votes)), "source": e["source"],
            "disagreement": len(e["votes"]) > 1,
            "flagged": any(r["decision"] == "flag" for (p, _), s in st.items() if p == pid for r in s),
            "seconds": sum(float(v.get("seconds") or 0) for v in votes),
            "last_ts": max(float(v.get("ts") or 0) for v in votes),
            "position": q.get("position"), "score_clip": q.get("score_clip"), "score_detector": q.get("score_detector"),
            "phash_dist": q.get("phash_dist"), "text_sim": q.get("text_sim"),
        })
    schema = pa.schema([pa.field(n, t) for n, t in EXPORT_COLUMNS])
    return pa.Table.from_pylist(rows, schema=schema)


def export(ws: Workspace, output: str | os.PathLike, fmt: str = "parquet") -> int:
    """Write the decided pairs to Parquet or CSV (atomically); returns the number of rows."""
    if fmt not in ("parquet", "csv"):
        raise ClipcurateError(f"export format {fmt!r}: use parquet or csv")
    tbl = export_table(ws)
    with atomic_path(output) as tmp:
        if fmt == "parquet":
            pq.write_table(tbl, tmp, compression="zstd")
        else:
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                w = csv.writer(fh, lineterminator="\n")
                w.writerow(tbl.column_names)
                for r in tbl.to_pylist():
                    w.writerow(["" if v is None else v for v in r.values()])
    return tbl.num_rows


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
