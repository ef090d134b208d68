"""The review decision log: append-only JSON lines, crash-safe, shared by several reviewers.

Each decision is one line appended to ``review/decisions.jsonl`` under an exclusive ``flock``, in a
single ``write`` of the whole line followed by ``fsync``. A kill -9 can at worst leave a last line
without its newline; :func:`load` ignores such a torn tail (and counts it), so every line that was
saved stays readable. Two reviewers appending at once lose nothing: the lock serialises the writes.

A record::

    {"pair_id": "...", "pool_uid": "...", "benchmark": "cifar10", "bench_index": 12,
     "decision": "duplicate" | "not_duplicate" | "skip" | "flag" | "undo",
     "reviewer": "ana", "ts": 1764350000.1, "seconds": 2.4, "source": "human" | "auto-demo",
     "session": "3f2a..."}   # which review session wrote it (its undo acts on its own records only)

Each reviewer's records for a pair form a stack: an ``undo`` pops that reviewer's previous record
for the pair (whatever it was). A reviewer's vote is the latest ``duplicate``/``not_duplicate`` left
on the stack; ``skip`` (not now) and ``flag`` (needs a second look) never replace a vote. Reviewers
who disagree are reported by :func:`disagreements`, and the pair's verdict is the majority, ties
going to ``duplicate`` (the conservative side for decontamination).

:class:`LogTail` reads only what was appended since its last call, so a review session sees the
other reviewers' decisions as they land without rereading the whole log.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections import Counter, defaultdict
from pathlib import Path

from clipcurate.core.io import fault_point
from clipcurate.core.uid import make_uid
from clipcurate.core.workspace import Workspace

DECISIONS = ("duplicate", "not_duplicate", "skip", "flag", "undo")
VERDICTS = ("duplicate", "not_duplicate")


def log_path(ws: Workspace) -> Path:
    return ws.root / "review" / "decisions.jsonl"


def pair_id(pool_uid: str, benchmark: str, bench_index: int) -> str:
    return make_uid("pair-decision", pool_uid, benchmark, int(bench_index))


def append(ws: Workspace, records: list[dict], fsync: bool = True) -> None:
    """Append decisions atomically (one locked write, then fsync per call).

    Once ``write`` has returned the records are in the kernel: a kill -9 of this process can no
    longer lose them. ``fsync`` also makes them survive a power cut; ``fsync=False`` leaves that to
    a later :func:`flush` (the review screen does it in a background thread, off the key path)."""
    if not records:
        return
    path = log_path(ws)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for r in records:
        if r.get("decision") not in DECISIONS:
            raise ValueError(f"decision {r.get('decision')!r} not in {DECISIONS}")
        rec = {"ts": time.time(), "source": "human", "seconds": None, **r}
        lines.append(json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n")
    data = "".join(lines).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # A previous writer killed mid-line leaves a torn tail: start on a fresh line.
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as fh:
                fh.seek(size - 1)
                if fh.read(1) != b"\n":
                    data = b"\n" + data
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    fault_point("decision")  # the fault suite's kill -9 (CLIPCURATE_KILL_AFTER=decision:N)


def flush(ws: Workspace) -> None:
    """fsync the log: what earlier ``append(..., fsync=False)`` calls wrote reaches the disk."""
    path = log_path(ws)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load(ws: Workspace) -> tuple[list[dict], int]:
    """All readable records in log order, and the number of torn/unreadable lines skipped."""
    path = log_path(ws)
    if not path.exists():
        return [], 0
    with open(path, "rb") as fh:
        return parse_lines(fh)


def parse_lines(lines) -> tuple[list[dict], int]:
    """Decision records from raw log lines, and how many lines were torn or not decisions."""
    records, bad = [], 0
    for line in lines:
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if valid(rec):
            records.append(rec)
        else:
            bad += 1
    return records, bad


# The types a record's fields must have (pair_id and decision are required; any other field may be
# missing or null). A line that breaks them — `"reviewer": ["x"]`, a dict as pair_id — is skipped and
# counted like a torn one, instead of failing every reader later with "unhashable type".
_NONE = type(None)
FIELDS = {"pair_id": (str,), "decision": (str,), "pool_uid": (str, _NONE), "benchmark": (str, _NONE),
          "bench_index": (int, _NONE), "reviewer": (str, _NONE), "ts": (int, float, _NONE),
          "seconds": (int, float, _NONE), "source": (str, _NONE), "session": (str, _NONE)}


def valid(rec) -> bool:
    """Whether a parsed line is a decision record: the known fields of the right types."""
    if not isinstance(rec, dict) or rec.get("decision") not in DECISIONS or "pair_id" not in rec:
        return False
    for key, types in FIELDS.items():
        if key in rec and (not isinstance(rec[key], types) or isinstance(rec[key], bool)):
            return False
    return True


def stacks(records: list[dict]) -> dict[tuple[str, str], list[dict]]:
    """(pair_id, reviewer) → that reviewer's records for the pair, oldest first, undos applied."""
    out: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        push(out, r)
    return out


def push(stacks_: dict, r: dict) -> tuple[str, str]:
    """Apply one record to the stacks (an undo pops); returns its (pair_id, reviewer) key.

    An undo that names its ``session`` removes that session's latest record for the pair, so two
    sessions under one reviewer name never undo each other's votes; one without (older logs) pops
    the reviewer's latest record."""
    key = (r["pair_id"], r.get("reviewer") or "unknown")
    stack = stacks_.setdefault(key, [])
    if r["decision"] == "undo":
        session = r.get("session")
        mine = [i for i, s in enumerate(stack) if session is None or s.get("session") == session]
        if mine:
            stack.pop(mine[-1])
    else:
        stack.append(r)
    return key


def vote(stack: list[dict]) -> dict | None:
    """The latest verdict record on a reviewer's stack (skip and flag never replace a vote)."""
    for r in reversed(stack):
        if r["decision"] in VERDICTS:
            return r
    return None


def per_reviewer(records: list[dict]) -> dict[str, dict[str, dict]]:
    """pair_id → reviewer → that reviewer's effective record: the latest vote if there is one,
    else the latest skip/flag (after undo)."""
    out: dict[str, dict[str, dict]] = defaultdict(dict)
    for (pid, reviewer), stack in stacks(records).items():
        if stack:
            out[pid][reviewer] = vote(stack) or stack[-1]
    return out


def effective(ws_or_records) -> dict[str, dict]:
    """pair_id → {"verdict", "votes", "reviewers", "source", "pool_uid", "benchmark", "bench_index"}."""
    records = load(ws_or_records)[0] if isinstance(ws_or_records, Workspace) else ws_or_records
    result = {}
    for pid, by_rev in per_reviewer(records).items():
        votes = Counter(r["decision"] for r in by_rev.values() if r["decision"] in VERDICTS)
        if not votes:
            continue
        verdict = "duplicate" if votes["duplicate"] >= votes["not_duplicate"] else "not_duplicate"
        any_rec = next(iter(by_rev.values()))
        sources = sorted({r.get("source", "human") for r in by_rev.values() if r["decision"] in VERDICTS})
        result[pid] = {"verdict": verdict, "votes": dict(votes), "reviewers": sorted(by_rev),
                       "source": "+".join(sources), "pool_uid": any_rec.get("pool_uid"),
                       "benchmark": any_rec.get("benchmark"), "bench_index": any_rec.get("bench_index")}
    return result


def disagreements(ws_or_records) -> list[dict]:
    return [dict(pair_id=pid, **v) for pid, v in effective(ws_or_records).items() if len(v["votes"]) > 1]


class LogTail:
    """Incremental reader of the log: :meth:`read_new` returns the records appended since the
    last call. An unfinished last line (a writer mid-append, or one killed) is left for later; if
    it is never finished, the next append starts a fresh line and the torn bytes count as bad."""

    def __init__(self, ws: Workspace):
        self.path = log_path(ws)
        self.offset = 0
        self.bad = 0

    def read_new(self) -> list[dict]:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return []
        if size <= self.offset:
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            data = fh.read(size - self.offset)
        end = data.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        out, bad = parse_lines(data[:end].split(b"\n"))
        self.bad += bad
        return out
