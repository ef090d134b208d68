"""Steps 2-5 of a download: one fetch round over some shards, watched.

2. Pre-check. Every url is checked against the URL safety policy in this process (scheme, and
   every address its host resolves to). Refused and malformed urls are decided here: they never
   reach img2dataset and no request is sent for them.
3. Fetch. The fetchable rows of all the round's shards go to ONE img2dataset.download() call, one
   input file per shard, so img2dataset shard j is our j-th shard. It runs in a child process (its
   own process group) that we watch: img2dataset's fetch function is replaced in its workers by
   urlsafety.fetch (pinned, redirect-checked, deadline, body cap) plus an image header check (pixel
   bombs, non-images, truncated files) — see img2dataset_child.py.
4. Convert. When img2dataset writes {j}_stats.json (after closing that shard's images and parquet),
   we turn its output into ours: our keys, sha256 of the stored bytes, every input row accounted
   for (success / failed / refused + reason). Tar, then manifest; :func:`fetch_round` then yields
   the shard and the runner (clipcurate.core.stage) writes its marker — so a kill -9 at any moment
   leaves a shard either finished or redone by the next run.
5. Watchdog. When all shards are converted the child gets a short grace to exit and is then
   killed (img2dataset can hang at the end of a run); when no output grows for `stall_timeout`
   the child is killed and the round ends with its unfinished shards not yielded (the stage gives
   them one more round, then fails with a one-line error that says to rerun).
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate.core import manifest
from clipcurate.core.console import log, warn
from clipcurate.core.executor import ray_address_env
from clipcurate.core.io import FILE_MODE, write_json
from clipcurate.core.workspace import Workspace
from clipcurate.download import urlsafety
from clipcurate.download.plan import INPUT_DIR, INPUT_SCHEMA
from clipcurate.download.pool import FOLDER, POOL, STATUSES, key_width, shard_manifest, shard_tar, write_shard_files

WORK_DIR = "_work"
# Seconds img2dataset gets to exit once every shard is converted. Nothing it does after that is
# used (its output is consumed, the work folder is removed), and its pool teardown sometimes
# hangs (measured here: 2 of 3 runs of 12 shards waited out the old 10 s grace): kill it soon.
END_GRACE = 1.0
STARTUP_LIMIT = 180.0  # seconds img2dataset may take to start (imports) before it counts as stalled
# What img2dataset reads: the input rows to fetch, each with its position in our shard ("row"), from
# which its worker names the sample with our key.
FETCH_SCHEMA = INPUT_SCHEMA.append(pa.field("row", pa.int32()))
# The child process: img2dataset with our hooks (img2dataset_child.py), given its job file.
RUNNER = ("import sys; from clipcurate.download.img2dataset_child import runner_main; "
          "runner_main(sys.argv[1])")


# -- 2. pre-check ----------------------------------------------------------------------------------

def precheck(urls: list[str | None], policy: urlsafety.Policy, threads: int = 32) -> list[tuple | None]:
    """For each url: None (fetch it) or (status, reason) decided without sending anything."""
    hosts: dict[tuple[str, int], object] = {}  # (host, port): an allowed host may be allowed on one port only
    split: list = []
    for url in urls:
        try:
            key = urlsafety.split_url(url)
            split.append(key)
            hosts.setdefault(key, None)
        except urlsafety.Refused as exc:
            split.append(("refused", f"refused: {exc.reason}"))
        except urlsafety.FetchError as exc:
            split.append(("failed", exc.reason))

    def check(key):
        try:
            policy.addresses(*key)
            return None
        except urlsafety.Refused as exc:
            return ("refused", f"refused: {exc.reason}")
        except urlsafety.FetchError as exc:
            return ("failed", exc.reason)

    names = list(hosts)
    with ThreadPoolExecutor(max(1, min(threads, len(names) or 1))) as pool:
        for host, verdict in zip(names, pool.map(check, names)):
            hosts[host] = verdict
    return [hosts[s] if s in hosts else s for s in split]


# -- 4. convert ------------------------------------------------------------------------------------

_REASONS = {
    "Image decoding error": "not an image (decode failed)",
    "image area too large": "image too large (pixels)",
    "Use of image disallowed by X-Robots-Tag directive": "disallowed by X-Robots-Tag",
}


def _reason(msg: str | None) -> str:
    if not msg:
        return "unknown error"
    msg = str(msg).strip().splitlines()[0]
    return _REASONS.get(msg, msg[:120])


def _finish_shard(ws: Workspace, shard: str, rows: list[dict], pre: list, results: dict | None,
                  i2d_tar: Path | None, sps: int) -> dict:
    """Merge pre-check verdicts and img2dataset results into pool rows; tar, then manifest.

    ``results`` is img2dataset's parquet of this shard by uid (with the sha256 of each stored image);
    ``i2d_tar`` is the shard's tar as its worker wrote it under our keys (img2dataset_child's
    _HookedWriter), renamed into the pool here. Without it (nothing was fetched) an empty tar is
    written. A verdict ``("keep", row)`` is a row of the shard's previous result carried over as it
    is (see :func:`prior_rows`); when some of those are successes, their images are copied from the
    previous tar and the new ones appended, through write_shard_files (the same bytes a run that
    fetched them all would write). Returns the shard's counts, for the marker the runner writes next.
    """
    width = key_width(sps)
    out, kept_images = [], set()
    for i, (r, verdict) in enumerate(zip(rows, pre)):
        key = f"{shard}{i:0{width}d}"
        row = {"uid": r["uid"], "url": r["url"], "caption": r["caption"], "shard": shard, "key": key,
               "status": "failed", "error": None, "width": None, "height": None, "sha256": None,
               "query_ids": r["query_ids"]}
        if verdict is not None and verdict[0] == "keep":
            row = dict(verdict[1])
            if row["status"] == "success":
                kept_images.add(key)
        elif verdict is not None:
            row["status"], row["error"] = verdict
        elif results is None or r["uid"] not in results:
            row["error"] = "lost by img2dataset"
        else:
            res = results[r["uid"]]
            if res["status"] == "success" and res["sha256"]:
                row.update(status="success", width=res["width"], height=res["height"], sha256=res["sha256"])
            elif res["status"] == "success":
                row["error"] = "stored image missing"
            else:
                err = _reason(res.get("error_message"))
                row["status"] = "refused" if err.startswith("refused:") else "failed"
                row["error"] = err
        out.append(row)
    if kept_images:
        # The previous tar's kept images, then this round's: one new tar, replacing the old atomically.
        images = itertools.chain(_tar_images(shard_tar(ws, shard), kept_images),
                                 _tar_images(i2d_tar, None) if i2d_tar is not None else ())
        counts = write_shard_files(ws, shard, out, images)
    elif i2d_tar is None:
        counts = write_shard_files(ws, shard, out, {})
    else:
        # The worker fsynced the tar; rename it into the pool (same file system: both under pool/),
        # then the manifest — the same order and durability as write_shard_files.
        target = shard_tar(ws, shard)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(i2d_tar, FILE_MODE)
        os.replace(i2d_tar, target)
        _fsync_dir(target.parent)
        manifest.write(POOL, out, shard_manifest(ws, shard))
        counts = {"rows": len(out), **{s: 0 for s in STATUSES}}
        for r in out:
            counts[r["status"]] += 1
    return counts


def _tar_images(path: Path, keys: set | None) -> Iterator[tuple[str, bytes]]:
    """(key, bytes) of the ``{key}.jpg`` members of a pool tar, streamed; only ``keys`` unless None."""
    with tarfile.open(path) as tar:
        for member in tar:
            key, _, ext = member.name.rpartition(".")
            if ext == "jpg" and (keys is None or key in keys):
                yield key, tar.extractfile(member).read()


def prior_rows(ws: Workspace, shard: str, rows: list[dict]) -> list[dict | None]:
    """The shard's previous result to keep, row by row: its success and failed rows; None = fetch.

    A shard has a previous result when its manifest and tar are in place (a finished shard whose
    marker the stage removed to retry its refused rows after the URL policy changed, or a shard
    whose run was killed between its manifest and its marker). Refused rows are fetched again,
    under the current policy. A manifest that does not match the input (other uids) is ignored.
    """
    path, tar = shard_manifest(ws, shard), shard_tar(ws, shard)
    if not (path.exists() and tar.exists()):
        return [None] * len(rows)
    try:
        old = pq.read_table(path).to_pylist()
    except (OSError, pa.ArrowInvalid):
        return [None] * len(rows)
    if [r["uid"] for r in old] != [r["uid"] for r in rows]:
        return [None] * len(rows)
    return [r if r["status"] in ("success", "failed") else None for r in old]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        log(f"download: could not fsync {path}")
    finally:
        os.close(fd)


def _i2d_results(out_dir: Path, name: str) -> dict:
    """img2dataset's parquet of one shard, by uid."""
    tbl = pq.read_table(out_dir / f"{name}.parquet",
                        columns=["uid", "status", "error_message", "width", "height", "sha256"])
    return {r["uid"]: r for r in tbl.to_pylist()}


# -- 5. one fetch round, watched -----------------------------------------------------------------------

def _kill_group(proc) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the runner leads its own process group
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(5)
    except Exception:  # noqa: BLE001
        pass


def _dir_size(path: Path) -> int:
    total = 0
    for p in path.iterdir() if path.exists() else ():
        try:
            total += p.stat().st_size
        except OSError:
            pass
    return total



def fetch_round(ws: Workspace, todo: list[str], conf: dict, policy: urlsafety.Policy) -> Iterator[tuple[str, dict]]:
    """One img2dataset run over the ``todo`` shards (steps 2-5): yields ``(shard, counts)`` as each
    shard's tar and manifest are in place, in the order they finish. A shard img2dataset did not
    finish (it stalled or crashed) is not yielded. The counts carry ``policy`` (the URL policy the
    shard was fetched under, for the marker: a rerun under another policy retries its refused rows)."""
    for shard, counts in _fetch_round(ws, todo, conf, policy):
        yield shard, dict(counts, policy=policy.to_json())


def _fetch_round(ws: Workspace, todo: list[str], conf: dict, policy: urlsafety.Policy) -> Iterator[tuple[str, dict]]:
    folder = ws.path(FOLDER)
    sps = int(conf["samples_per_shard"])
    work = folder / WORK_DIR / f"run-{os.getpid()}-{time.time_ns()}"
    in_dir = work / "input"
    in_dir.mkdir(parents=True)
    batch = []  # (shard, rows, pre) of the shards that go to img2dataset, in its shard-id order
    for shard in todo:
        rows = pq.read_table(folder / INPUT_DIR / f"{shard}.parquet").to_pylist()
        pre = precheck([r["url"] for r in rows], policy, threads=int(conf["threads"]))
        # Rows the shard's previous result settled (success, failed) are kept; refused ones are redone.
        pre = [("keep", old) if old is not None else v for old, v in zip(prior_rows(ws, shard, rows), pre)]
        fetch = [dict(r, row=i) for i, (r, v) in enumerate(zip(rows, pre)) if v is None]
        if not fetch:  # nothing to fetch: finish it here
            yield shard, _finish_shard(ws, shard, rows, pre, None, None, sps)
            continue
        pq.write_table(pa.Table.from_pylist(fetch, schema=FETCH_SCHEMA), in_dir / f"{shard}.parquet")
        batch.append((shard, rows, pre))
    if not batch:
        shutil.rmtree(work, ignore_errors=True)
        return
    proc, oom = _start_img2dataset(work, batch, conf, policy)
    stall = float(conf["stall_timeout"]) or (
        2 * (float(conf["fetch_deadline"]) + float(conf["timeout"])) * (int(conf["retries"]) + 1) + 60)
    pending = yield from _watch(ws, proc, work / "out", dict(enumerate(batch)), oom, stall, sps)
    log_path = work / "img2dataset.log"
    if pending:
        tail = ""
        if log_path.exists():
            lines = [ln for ln in log_path.read_text("utf-8", "replace").splitlines() if ln.strip()]
            tail = f" (img2dataset log {log_path}: {lines[-1][:160] if lines else 'empty'})"
        warn(f"download: {len(pending)} shards unfinished in this round{tail}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def _img2dataset_kwargs(conf: dict, in_dir: Path, out_dir: Path, processes: int, oom: int) -> dict:
    """The arguments of img2dataset.download() for one round."""
    return dict(
        url_list=str(in_dir), input_format="parquet", url_col="url", caption_col="caption",
        save_additional_columns=["uid", "query_ids", "row"], output_folder=str(out_dir), output_format="webdataset",
        image_size=int(conf["image_size"]), resize_mode=conf["resize_mode"],
        resize_only_if_bigger=bool(conf["resize_only_if_bigger"]), encode_quality=int(conf["encode_quality"]),
        skip_reencode=bool(conf["skip_reencode"]),
        encode_format="jpg", processes_count=processes, thread_count=int(conf["threads"]),
        number_sample_per_shard=int(conf["samples_per_shard"]), timeout=float(conf["timeout"]),
        retries=int(conf["retries"]),
        min_image_size=int(conf["min_image_size"]), max_image_area=float(conf["max_image_area"]),
        oom_shard_count=oom, extract_exif=False, compute_hash=None, incremental_mode="incremental",  # a fresh folder: nothing to skip ("overwrite" deletes its own _tmp)
        distributor=conf["distributor"], max_shard_retry=1, enable_wandb=False,
        user_agent_token=conf["user_agent_token"] or None,
        disallowed_header_directives=list(conf["disallowed_header_directives"]),
    )


def _start_img2dataset(work: Path, batch: list, conf: dict, policy: urlsafety.Policy) -> tuple[subprocess.Popen, int]:
    """Write the round's job (fetch.json for the hooks, job.json for the runner) and start the
    child in its own process group, its output going to ``img2dataset.log``. Returns the process
    and the digits of img2dataset's shard names."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = int(conf["processes"]) or cores
    processes = max(1, min(processes, len(batch)))
    oom = max(5, len(str(len(batch) - 1)))
    write_json(work / "fetch.json", {
        "policy": policy.to_json(), "deadline": float(conf["fetch_deadline"]),
        "max_bytes": int(conf["max_body_bytes"]), "max_area": float(conf["max_image_area"]),
        "pdeathsig": conf["distributor"] == "multiprocessing",
        "shards": [shard for shard, _, _ in batch], "key_width": key_width(int(conf["samples_per_shard"]))})
    kwargs = _img2dataset_kwargs(conf, work / "input", work / "out", processes, oom)
    write_json(work / "job.json", {"kwargs": kwargs, "max_area": float(conf["max_image_area"]),
                                   "inline": processes == 1 and conf["distributor"] == "multiprocessing",
                                   "parent_pid": os.getpid()})
    env = dict(os.environ)
    if conf["distributor"] == "ray":  # img2dataset's Ray tasks join the cluster this run is on
        env.update(ray_address_env())
    with open(work / "img2dataset.log", "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-c", RUNNER, str(work / "job.json")], stdin=subprocess.DEVNULL, stdout=logf,
            stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return proc, oom


def _watch(ws: Workspace, proc: subprocess.Popen, out_dir: Path, pending: dict, oom: int, stall: float,
           sps: int) -> Iterator[tuple[str, dict]]:
    """Convert each shard img2dataset finishes (step 4) and yield it; stop the child when all are
    done or when its output stops growing (step 5). Returns the shards left ``{j: (shard, rows, pre)}``."""
    last_size, last_change, finished_at = -2, time.monotonic(), None
    try:
        while pending:
            for j in sorted(pending):
                name = f"{j:0{oom}d}"
                if not (out_dir / f"{name}_stats.json").exists():
                    continue
                shard, rows, pre = pending.pop(j)
                try:
                    counts = _finish_shard(ws, shard, rows, pre, _i2d_results(out_dir, name), out_dir / f"{name}.tar", sps)
                except Exception as exc:  # noqa: BLE001 - a broken img2dataset shard is redone next round
                    warn(f"download: shard {shard}: img2dataset output unreadable ({exc.__class__.__name__}); will retry")
                    continue
                yield shard, counts
                for suffix in (".tar", ".parquet", "_stats.json"):
                    (out_dir / f"{name}{suffix}").unlink(missing_ok=True)
                last_change = time.monotonic()
            if not pending:
                break
            if proc.poll() is not None:
                if finished_at is None:  # one more look: stats may have landed just before it exited
                    finished_at = time.monotonic()
                    continue
                break
            # Progress = img2dataset's output growing. Its folder appears once its imports are
            # done; start-up gets a longer allowance than the stall timeout.
            size = _dir_size(out_dir) + _dir_size(out_dir / "_tmp") if out_dir.exists() else -1
            limit = stall if size >= 0 else max(stall, STARTUP_LIMIT)
            if size != last_size:
                last_size, last_change = size, time.monotonic()
            elif time.monotonic() - last_change > limit:
                warn(f"download: img2dataset made no progress for {limit:.0f}s; stopping it")
                break
            time.sleep(0.1)
    finally:
        if proc.poll() is None and not pending:
            try:
                proc.wait(END_GRACE)
            except subprocess.TimeoutExpired:
                pass
        if proc.poll() is None:
            _kill_group(proc)
    return pending
