"""The fault suite (issue 19): kill -9 at several points of download, embed, overlap, curate and
review, rerun, compare with an uninterrupted run; and the bad inputs, each a one-line error or a
counted skip that leaves earlier outputs intact.

The kills are real: ``CLIPCURATE_KILL_AFTER=POINT:N`` (clipcurate.core.io.fault_point) makes the
``clipcurate`` subprocess SIGKILL itself at a reproducible place — after N shard markers
(``shard:N``), right after a named file is renamed into place (``write@splits.parquet``), with a new
overlap set complete but not switched in (``publish:1``), after N review decisions (``decision:N``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

import _curate_helpers as CH
import _embed_helpers as EH
import _overlap_helpers as OH
from _download_server import ImageServer, bomb_png, write_urls
from clipcurate import stages
from clipcurate.core import manifest as mf
from clipcurate.core.io import KILL_ENV
from clipcurate.core.workspace import Workspace
from clipcurate.overlap.schema import PUBLISHED

pytestmark = pytest.mark.slow

TINY = "clipcurate-tiny"


def clip(ws: Path, *args, kill: str | None = None, quiet: bool = True, timeout: int = 240
         ) -> subprocess.CompletedProcess:
    """``clipcurate -q -w ws ARGS`` in a subprocess (its own session, so a kill takes its children)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPCURATE_")}
    if kill:
        env[KILL_ENV] = kill
    return subprocess.run([sys.executable, "-m", "clipcurate", *(["-q"] if quiet else []), "-w", str(ws),
                           *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=timeout, start_new_session=True)


def killed(p: subprocess.CompletedProcess) -> None:
    assert p.returncode == -signal.SIGKILL, f"not killed (rc {p.returncode}): {p.stderr[-3000:]}"


def ok(p: subprocess.CompletedProcess) -> None:
    assert p.returncode == 0, p.stderr[-3000:]
    assert "Traceback" not in p.stderr


def one_line_error(p: subprocess.CompletedProcess, *words: str) -> str:
    """rc 1, no traceback, one line on stderr, holding each of ``words``."""
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert p.returncode == 1 and "Traceback" not in p.stderr and len(lines) == 1, p.stderr[-3000:]
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def files(folder: Path, pattern: str = "**/*") -> dict[str, bytes]:
    """Relative path -> bytes of the (published) files under ``folder`` (bookkeeping left out)."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.glob(pattern))
            if p.is_file() and not p.name.startswith((".", "_")) and not p.name.endswith(".done")}


def published(ws: Path) -> dict[str, bytes]:
    """The overlap set as readers see it: ``overlap/NAME`` for every published name."""
    return {n: (ws / "overlap" / n).read_bytes() for n in PUBLISHED if (ws / "overlap" / n).is_file()}


# -- overlap -------------------------------------------------------------------------------------

# planted pairs: (benchmark, row, pool shard, pool row, cosine). 0.99, 0.97: overlap; 0.87, 0.90 and
# 0.92: in the review band (0.85-0.95), which counts as overlap (review_default); --low 0.91 drops two
PLANTS = [("cifar10", 0, 0, 5, 0.99), ("cifar10", 1, 1, 7, 0.90), ("stl10", 2, 2, 9, 0.92),
          ("stl10", 3, 0, 11, 0.97), ("cifar10", 4, 2, 3, 0.87)]


def overlap_ws(root: Path) -> Path:
    stages.load()
    OH.make_workspace(root, shards=4, per_shard=150, plants=PLANTS)
    ok(clip(root, "overlap"))
    return root


def test_overlap_killed_anywhere_leaves_the_old_set_and_downstream_refuses(tmp_path):
    base = overlap_ws(tmp_path / "base")
    old = published(base)
    assert set(old) == set(PUBLISHED)
    new_args = ("overlap", "--force", "--low", "0.91")
    straight = tmp_path / "straight"
    shutil.copytree(base, straight, symlinks=True)
    ok(clip(straight, *new_args))
    new = published(straight)
    decontam = lambda ws: pq.read_table(ws / "overlap" / "decontam.parquet").num_rows  # noqa: E731
    assert decontam(straight) < decontam(base)  # the new floor drops the band pairs at 0.87 and 0.90

    for i, point in enumerate(["shard:2", "write@pairs.parquet", "write@splits.parquet", "publish:1"]):
        ws = tmp_path / f"k{i}"
        shutil.copytree(base, ws, symlinks=True)
        killed(clip(ws, *new_args, kill=point))
        # the old set, whole: not the new splits beside the old decontam list (issue 19, case 2)
        assert published(ws) == old, point
        if i == 2:
            one_line_error(clip(ws, "curate"), "overlap", "partial", "clipcurate overlap")
            one_line_error(clip(ws, "review"), "overlap", "partial", "clipcurate overlap")
            q = clip(ws, "sql", "select count(*) as n from decontam", "--format", "csv")
            ok(q)
            assert q.stdout.split()[-1] == str(decontam(base))
        rerun = ("overlap", "--low", "0.91") if point == "shard:2" else new_args  # resume / same command
        ok(clip(ws, *rerun))
        assert published(ws) == new, point
        assert not list((ws / "overlap").glob(".staging-*"))

    # the catalogue was refreshed by the stage: its views read the published set
    con = duckdb.connect(str(straight / "clipcurate.duckdb"), read_only=True)
    try:
        assert con.execute("select count(*) from decontam").fetchone()[0] == decontam(straight)
    finally:
        con.close()


def test_stale_or_partial_upstream_is_refused_in_one_line(tmp_path):
    ws = overlap_ws(tmp_path / "ws")
    # embed reran after overlap: the embeddings overlap read changed since (a shard redone)
    tag_pool = ws / "embed" / OH.TAG / "pool"
    (tag_pool / "_plan.json").write_text(json.dumps({"stage": "embed", "shards": ["00000"]}))
    one_line_error(clip(ws, "overlap"), "embed/", "partial", "clipcurate embed")
    (tag_pool / "_SUCCESS").write_text("")
    ok(clip(ws, "overlap", "--force"))
    (tag_pool / "00000.done").write_text('{"n": 150, "finished_at": 2}')  # shard 00000 embedded again
    one_line_error(clip(ws, "review"), "overlap", "out of date", "embed/", "clipcurate overlap")


def test_bad_inputs_are_one_line_errors_and_leave_the_outputs(tmp_path):
    """Issue 19's cases 1, 3 and 6 on a finished overlap: a writing `sql`, badly typed decision
    lines, embeddings that are not unit length."""
    ws = overlap_ws(tmp_path / "ws")
    old = published(ws)
    target = ws / "overlap" / "decontam.parquet"
    one_line_error(clip(ws, "sql", f"copy (select 'x' as a) to '{target}' (format parquet)"), "read-only")
    one_line_error(clip(ws, "sql", "select * from read_csv('/etc/passwd')"))
    # badly typed decision lines are counted skips for every reader
    log = ws / "review" / "decisions.jsonl"
    log.parent.mkdir(exist_ok=True)
    log.write_text('{"pair_id": "p1", "decision": "duplicate", "reviewer": ["x"]}\n'
                   '{"pair_id": {"a": 1}, "decision": "duplicate", "reviewer": "x"}\n')
    ok(clip(ws, "overlap", "refresh"))
    ok(clip(ws, "review", "status"))
    assert published(ws) == old  # nothing decided: the refreshed set is the same
    # a pool shard scaled x3: refused, naming the file, before anything is replaced
    npy = ws / "embed" / OH.TAG / "pool" / "00001.npy"
    np.save(npy, np.load(npy).astype(np.float32) * 3)
    one_line_error(clip(ws, "overlap", "--force"), "00001.npy")
    assert published(ws) == old


# -- review ----------------------------------------------------------------------------------------

DECIDE = """
import sys
from clipcurate.core.workspace import Workspace
from clipcurate.review import ReviewSession
s = ReviewSession(Workspace(sys.argv[1]), "ana")
s.goto(s.resume_position())
while not s.done:
    row = s.pair()
    s.decide("duplicate" if row["bench_index"] % 2 == 0 else "not_duplicate")
"""


def decide_all(ws: Path, kill: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLIPCURATE_")}
    if kill:
        env[KILL_ENV] = kill
    return subprocess.run([sys.executable, "-c", DECIDE, str(ws)], env=env, capture_output=True, text=True,
                          timeout=120)


def verdicts(ws: Path) -> dict[str, str]:
    from clipcurate.review import effective_decisions

    return {pid: v["verdict"] for pid, v in effective_decisions(Workspace(ws)).items()}


def test_review_killed_while_deciding_and_while_writing_back(tmp_path):
    base = overlap_ws(tmp_path / "base")
    assert pq.read_table(base / "overlap" / "review_queue.parquet").num_rows >= 3
    straight = tmp_path / "straight"
    shutil.copytree(base, straight, symlinks=True)
    ok(decide_all(straight))
    ok(clip(straight, "overlap", "refresh"))
    want = verdicts(straight)
    refreshed = published(straight)

    ws = tmp_path / "ws"
    shutil.copytree(base, ws, symlinks=True)
    killed(decide_all(ws, kill="decision:2"))  # two decisions saved, then kill -9
    assert len(verdicts(ws)) == 2
    ok(decide_all(ws))  # the session resumes at the first undecided pair
    assert verdicts(ws) == want
    old = published(ws)
    for point in ("write@splits.parquet", "publish:1"):  # the write-back, killed
        killed(clip(ws, "overlap", "refresh", kill=point))
        assert published(ws) == old
    ok(clip(ws, "overlap", "refresh"))
    assert published(ws) == refreshed


def test_undo_removes_only_this_sessions_vote(tmp_path):
    import _review_helpers as RH
    from clipcurate.review import ReviewSession, effective_decisions

    ws = RH.build(tmp_path / "ws", n_pairs=4)
    a, b = ReviewSession(ws, "ana"), ReviewSession(ws, "ana")  # one reviewer name, two sessions
    a.goto(0)
    b.goto(0)
    pid = a.pair_id
    a.decide("duplicate")
    b.decide("not_duplicate")
    a.undo()  # a's own vote goes; b's stays
    assert effective_decisions(ws)[pid]["verdict"] == "not_duplicate"
    b.undo()
    assert pid not in effective_decisions(ws)


# -- curate ----------------------------------------------------------------------------------------

def curate_ws(root: Path) -> Path:
    ws = Workspace(root).create()
    rows = CH.make_pool(ws, n=60, shards=3)
    CH.write_decontam(ws, [r["uid"] for r in rows[:5]])
    return root


def test_curate_killed_then_rerun_matches_uninterrupted(tmp_path):
    straight = curate_ws(tmp_path / "straight")
    ok(clip(straight, "curate", "--shard-size", "12"))
    want = files(straight / "curate")
    for i, point in enumerate(["shard:1", "shard:3", "write@00002.tar"]):
        ws = curate_ws(tmp_path / f"k{i}")
        killed(clip(ws, "curate", "--shard-size", "12", kill=point))
        ok(clip(ws, "curate", "--shard-size", "12"))
        got = files(ws / "curate")
        assert got.keys() == want.keys() and all(got[k] == want[k] for k in want if k != "stats.json"), point


# -- embed -----------------------------------------------------------------------------------------

EMBED = ("embed", "-m", TINY, "-p", "random", "--device", "cpu", "-j", "0", "--no-benchmarks")


def embed_ws(root: Path, **kw) -> Workspace:
    ws = Workspace(root).create()
    EH.make_pool(ws, shards=3, per_shard=8, **kw)
    return ws


def test_embed_killed_then_rerun_is_byte_identical(tmp_path):
    """Killed after its first shard, then again with the third shard's vectors written but not its
    marker; the rerun gives the uninterrupted run's files, byte for byte."""
    straight = embed_ws(tmp_path / "straight")
    ok(clip(straight.root, *EMBED))
    want = files(straight.root / "embed", "*/pool/*")
    ws = embed_ws(tmp_path / "ws")
    killed(clip(ws.root, *EMBED, kill="shard:1"))
    assert len(list(ws.root.glob("embed/*/pool/*.done"))) == 1
    killed(clip(ws.root, *EMBED, kill="write@00002.npy"))
    assert len(list(ws.root.glob("embed/*/pool/*.done"))) == 2
    ok(clip(ws.root, *EMBED))
    assert files(ws.root / "embed", "*/pool/*") == want


def _member_offsets(tar: Path) -> list[tuple[str, int, int]]:
    with tarfile.open(tar) as tf:
        return [(m.name, m.offset, m.offset_data + m.size) for m in tf.getmembers()]


def test_truncated_pool_tars_are_counted_skips(tmp_path):
    """Cut inside a member: the samples before it embedded, the rest counted skips; cut between
    members: the samples the manifest lists but the tar lacks are counted skips (not "0 skipped")."""
    ws = embed_ws(tmp_path / "ws", size=40)
    shards = ws.root / "pool" / "shards"
    inside = _member_offsets(shards / "00000.tar")[7]  # the third sample's image (3 members a sample)
    with open(shards / "00000.tar", "r+b") as fh:
        fh.truncate(inside[1] + 512 + 100)  # 100 bytes into its data
    between = _member_offsets(shards / "00001.tar")[15]  # the sixth sample's first member header
    with open(shards / "00001.tar", "r+b") as fh:
        fh.truncate(between[1])
    p = clip(ws.root, *EMBED, quiet=False)  # before: exit 1 and a worker traceback / "0 skipped"
    ok(p)
    assert "skipped 9 unreadable sample(s) in 2 shard(s)" in " ".join(p.stderr.split()), p.stderr
    markers = {s: json.loads(next(ws.root.glob(f"embed/*/pool/{s}.done")).read_text()) for s in ("00000", "00001")}
    assert (markers["00000"]["n"], markers["00000"]["n_bad"]) == (2, 6)
    assert (markers["00001"]["n"], markers["00001"]["n_bad"]) == (5, 3)
    assert all("cut short" in r for r in markers["00000"]["bad"])
    assert all("not in the tar" in r for r in markers["00001"]["bad"])
    assert json.loads(next(ws.root.glob("embed/*/pool/00002.done")).read_text())["n"] == 8


# -- the pixel rule: download, bench add, embed ------------------------------------------------------

def test_decompression_bomb_and_13000px_are_counted_skips_everywhere(tmp_path, ws):
    from clipcurate.core.imageload import MAX_PIXELS, ImageTooLarge, open_image
    from clipcurate.download import DEFAULTS, inspect_image

    bomb, big = bomb_png(30000, 30000), bomb_png(13000, 13000)
    # download: the header check every fetch gets, at its default cap (the same MAX_PIXELS)
    assert DEFAULTS["max_image_area"] == MAX_PIXELS
    assert inspect_image(bomb, DEFAULTS["max_image_area"]) == inspect_image(big, DEFAULTS["max_image_area"]) \
        == "image too large (pixels)"
    for data in (bomb, big):
        with pytest.raises(ImageTooLarge):
            open_image(data)
    one_line_error(clip(ws.root, "download", "--max-image-area", MAX_PIXELS + 1), "max_image_area")  # no 2nd rule
    # bench add: a folder with both among good images; an earlier benchmark stays as it was
    src = EH.folder_tree(tmp_path / "src", broken=False)
    ok(clip(ws.root, "bench", "add", "first", "--from", src))
    first = files(ws.root / "benchmarks" / "first")
    cls = sorted(d for d in src.iterdir() if d.is_dir())[0]
    (cls / "bomb.png").write_bytes(bomb)
    (cls / "big.png").write_bytes(big)
    p = clip(ws.root, "bench", "add", "second", "--from", src)
    ok(p)
    meta = json.loads((ws.root / "benchmarks" / "second" / "meta.json").read_text())
    assert meta["n_skipped"] == 2 and all("image too large" in s for s in meta["skipped"]), meta
    assert files(ws.root / "benchmarks" / "first") == first
    # embed: a pool shard holding both; the other samples embedded
    from clipcurate.download import write_pool_shard
    from clipcurate.core.synth import make_image

    samples = [{"url": f"http://x/{i}.jpg", "caption": "c", "image": make_image(i, i, size=40)} for i in range(6)]
    write_pool_shard(ws, "00000", samples)
    tar = ws.root / "pool" / "shards" / "00000.tar"  # samples 4 and 5 become the bomb and the 13000 px PNG
    with tarfile.open(tar) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    with tarfile.open(tar, "w") as tf:
        for m, data in members:
            if m.name.endswith(("0004.jpg", "0005.jpg")):
                data = bomb if m.name.endswith("0004.jpg") else big
                m.size = len(data)
            tf.addfile(m, io.BytesIO(data))
    p = clip(ws.root, *EMBED)
    ok(p)
    marker = json.loads(next((ws.root / "embed").glob("*/pool/00000.done")).read_text())
    assert (marker["n"], marker["n_bad"]) == (4, 2) and all("image too large" in r for r in marker["bad"]), marker


# -- download ----------------------------------------------------------------------------------------

def pool_state(root: Path) -> tuple[list, dict]:
    stages.load()
    rows = sorted((r["uid"], r["key"], r["status"], r["error"]) for r in mf.read_all("pool", root).to_pylist())
    tars = {}
    for t in sorted((root / "pool" / "shards").glob("*.tar")):
        with tarfile.open(t) as tf:
            tars[t.name] = {m.name: hashlib.sha256(tf.extractfile(m).read()).hexdigest() for m in tf if m.isfile()}
    return rows, tars


def test_download_killed_then_rerun_matches_uninterrupted(tmp_path):
    with ImageServer() as srv:
        rows = [(srv.url(f"/img/{i}.jpg"), srv.caption(i)) for i in range(10)] + [(srv.url("/bomb.png"), "bomb")]
        write_urls(tmp_path / "urls.parquet", rows)
        args = ("download", "--input", tmp_path / "urls.parquet", "--allow-private", "--samples-per-shard", "4",
                "--processes", "1", "--threads", "4", "--timeout", "5")
        ok(clip(tmp_path / "straight", *args))
        want = pool_state(tmp_path / "straight")
        assert [r[2:] for r in want[0] if r[2] != "success"] == [("failed", "image too large (pixels)")]
        for i, point in enumerate(["shard:1", "shard:2"]):
            ws = tmp_path / f"k{i}"
            killed(clip(ws, *args, kill=point))
            assert len(list((ws / "pool").glob("*.done"))) == i + 1
            ok(clip(ws, *args))
            assert pool_state(ws) == want, point
    assert sum(r[2] == "success" for r in want[0]) == 10
