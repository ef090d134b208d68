"""Atomic writes: temp file in the same folder, fsync, rename.

A reader never sees a partial file; a crash (even kill -9) leaves at most a ``.tmp-*`` file that
:func:`clean_temp` removes and that nothing ever reads.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

TMP_PREFIX = ".tmp-"

# The fault hook of the fault suite (tests/test_faults.py): CLIPCURATE_KILL_AFTER=POINT:N makes this
# process SIGKILL itself at the N-th time it passes POINT — "write" (a file renamed into place),
# "shard" (a shard's marker written), "publish" (a new set complete, before it is switched in),
# "decision" (a review decision appended) — or, with POINT@NAME, right after the first write of a
# file called NAME (write@splits.parquet). A real kill -9, at a reproducible place.
# Only the process that was started with the variable counts: it notes its pid in the environment,
# so the processes it starts (img2dataset, DataLoader workers) inherit the pid and never fire.
KILL_ENV = "CLIPCURATE_KILL_AFTER"
KILL_PID_ENV = "CLIPCURATE_KILL_PID"
if os.environ.get(KILL_ENV) and not os.environ.get(KILL_PID_ENV):
    os.environ[KILL_PID_ENV] = str(os.getpid())
_passed: dict[str, int] = {}


def fault_point(point: str, name: str = "") -> None:
    """SIGKILL this process here when CLIPCURATE_KILL_AFTER asks for it (see above); else nothing."""
    spec = os.environ.get(KILL_ENV)
    if not spec or os.environ.get(KILL_PID_ENV) != str(os.getpid()):
        return
    if spec == f"{point}@{name}":
        os.kill(os.getpid(), signal.SIGKILL)
    if spec.partition(":")[0] != point:
        return
    _passed[point] = _passed.get(point, 0) + 1
    if _passed[point] >= int(spec.partition(":")[2] or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by their owner only; a finished output gets the usual mode.
FILE_MODE = 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    if path.is_symlink():  # a file of a published set (see publish): replacing it would split the set
        raise ValueError(f"{path} belongs to a published set; write it inside clipcurate.core.io.publish")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        _fsync_file(tmp_path)
        os.chmod(tmp_path, FILE_MODE)
        os.replace(tmp_path, path)
        _fsync_dir(path.parent)
        fault_point("write", path.name)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb"):
    """Open a temp file for writing; it replaces ``path`` only if the block succeeds."""
    with atomic_path(path) as tmp:
        with open(tmp, mode) as fh:
            yield fh


def write_bytes(path, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        fh.write(data)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path):
    return json.loads(Path(path).read_text("utf-8"))


def clean_temp(folder: str | os.PathLike) -> int:
    """Remove temp files left by a killed writer; returns how many."""
    n = 0
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.rglob(TMP_PREFIX + "*"):
            if p.is_file():
                p.unlink(missing_ok=True)
                n += 1
    return n


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- publishing several files as one unit -----------------------------------------------------------
#
# A stage that writes several files that belong together (overlap: pairs, neighbors, splits,
# decontam, review_queue, ...) must never leave half of a new set beside half of the old one. The
# files live in generation folders and readers reach them through two levels of symbolic links:
#
#     overlap/pairs.parquet  -> current/pairs.parquet     (one link per name, made once, never changed)
#     overlap/current        -> gen-000007                (the pointer: the one thing a publish switches)
#     overlap/gen-000007/    pairs.parquet neighbors.parquet splits.parquet ...
#
# :func:`publish` builds the next generation in a private staging folder, fsyncs it, renames it to
# ``gen-N`` and then replaces the ``current`` link with one atomic rename. A kill at any moment
# leaves ``current`` on the old generation or on the new one, so every reader (the stages, DuckDB's
# views, a user's script opening ``overlap/splits.parquet``) sees one whole set. Files are never
# modified in place (every write is a new file renamed into place), so the files a new generation
# keeps from the current one are hard links, not copies.

CURRENT = "current"
GEN_PREFIX = "gen-"
STAGING_PREFIX = ".staging-"
PUBLISH_LOCK = ".publish.lock"


def _link_atomically(target: str, path: Path) -> None:
    """Make ``path`` a symbolic link to ``target``, replacing whatever is there in one rename."""
    tmp = path.parent / f"{TMP_PREFIX}{path.name}.{os.getpid()}.link"
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def current_generation(folder: str | os.PathLike) -> Path | None:
    """The folder of the published generation, or None when nothing was published yet."""
    cur = Path(folder) / CURRENT
    return cur.resolve() if cur.is_symlink() and cur.resolve().is_dir() else None


def _generations(folder: Path) -> list[Path]:
    gens = [p for p in folder.glob(GEN_PREFIX + "*") if p.is_dir() and not p.is_symlink()
            and p.name[len(GEN_PREFIX):].isdigit()]
    return sorted(gens, key=lambda p: int(p.name[len(GEN_PREFIX):]))


def _promote(folder: Path, staging: Path) -> Path:
    """Rename a finished staging folder to the next free ``gen-N`` (another writer may take N first)."""
    for _ in range(1000):
        gens = _generations(folder)
        n = int(gens[-1].name[len(GEN_PREFIX):]) + 1 if gens else 1
        gen = folder / f"{GEN_PREFIX}{n:06d}"
        try:
            os.rename(staging, gen)  # fails when a concurrent writer made gen-N meanwhile
        except OSError:
            continue
        _fsync_dir(folder)
        return gen
    raise OSError(f"{folder}: could not name a new generation")


def _adopt_flat(folder: Path, names: Sequence[str]) -> None:
    """Bring plain files (a workspace written before generations, or copied without its links) under
    a generation. Each step keeps what a reader sees: the generation first holds hard links of the
    plain files (the rest from ``current``), ``current`` switches to it, and only then does each
    plain file become a link to the identical file in it."""
    plain = [n for n in names if (folder / n).is_file() and not (folder / n).is_symlink()]
    if not plain:
        return
    cur = folder / CURRENT
    if cur.is_dir() and not cur.is_symlink():  # a copied `current`: the plain files are what readers read
        shutil.rmtree(cur)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=folder))
    old = current_generation(folder)
    for n in names:
        src = folder / n if n in plain else (old / n if old is not None else None)
        if src is not None and src.is_file():
            os.link(src, staging / n)
    _fsync_dir(staging)
    gen = _promote(folder, staging)
    _link_atomically(gen.name, cur)
    for n in plain:
        _link_atomically(f"{CURRENT}/{n}", folder / n)


def _prune(folder: Path, keep: int = 2) -> None:
    """Remove all but the ``keep`` newest generations (never ``current``), and the staging folders of
    writers that are gone (killed)."""
    cur = current_generation(folder)
    for gen in _generations(folder)[:-keep]:
        if cur is None or gen.resolve() != cur:
            shutil.rmtree(gen, ignore_errors=True)
    for st in folder.glob(STAGING_PREFIX + "*"):
        pid = st.name[len(STAGING_PREFIX):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(st, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # ours: a staging folder left by this process is never in use any more
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def publish(folder: str | os.PathLike, names: Sequence[str], keep: Sequence[str] = ()) -> Iterator[Path]:
    """Write a new set of ``names`` into the yielded folder; they become visible together, as
    ``folder/<name>``, when the block succeeds (see the comment above). ``keep``: names carried over
    unchanged from the published set (hard links), e.g. what a refresh does not recompute.
    A kill or an error inside the block leaves the published set as it was."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # One writer at a time (two reviewers refreshing at once): each builds on the set the previous
    # one published, so the last switch carries every change. The lock dies with its process.
    with open(folder / PUBLISH_LOCK, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        with _publish_locked(folder, names, keep) as staging:
            yield staging


@contextmanager
def _publish_locked(folder: Path, names: Sequence[str], keep: Sequence[str]) -> Iterator[Path]:
    _adopt_flat(folder, names)
    staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=folder))
    try:
        old = current_generation(folder)
        for n in keep:
            if old is not None and (old / n).is_file():
                os.link(old / n, staging / n)
        yield staging
        for p in staging.iterdir():
            _fsync_file(p)
        _fsync_dir(staging)
        gen = _promote(folder, staging)
        fault_point("publish")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # a name seen for the first time gets its link before the switch: until then it points at a
    # `current` without it (nothing visible), after it at the new file, together with the others
    for n in names:
        if not (folder / n).is_symlink():
            _link_atomically(f"{CURRENT}/{n}", folder / n)
    _link_atomically(gen.name, folder / CURRENT)  # the switch: old set before, new set after
    _prune(folder)
