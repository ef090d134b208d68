"""Stage `download`: candidate (url, caption) pairs → webdataset shards + the `pool` manifest.

The pool is laid out as::

    pool/shards/{shard}.tar        webdataset: {key}.jpg  {key}.txt (caption)  {key}.json (uid, url, ...)
    pool/manifest/{shard}.parquet  one row per input url: success, failed or refused, with the reason
    pool/{shard}.done              completion marker, written last (clipcurate.core.stage contract)

A key is ``{shard}{row:0Nd}`` — the shard name followed by the row's position in the shard,
zero-padded to the digits of ``samples_per_shard`` — the same layout img2dataset uses for its keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate.core import config
from clipcurate.core import manifest
from clipcurate.core import registry
from clipcurate.core import sql
from clipcurate.download import urlsafety
from clipcurate.core.console import log, progress, warn
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.io import FILE_MODE, atomic_path, clean_temp, read_json, write_json, write_text
from clipcurate.core.stage import PLAN, SUCCESS, done_info, is_done, mark_done
from clipcurate.core.uid import pair_uid
from clipcurate.core.workspace import Workspace

STAGE = "download"
FOLDER = "pool"

STATUSES = ("success", "failed", "refused")

POOL = manifest.register(
    "pool",
    version=1,
    glob="pool/manifest/*.parquet",
    stage=STAGE,
    doc="One row per input url of `clipcurate download`, successes and failures alike. Every "
        "`success` row has `{key}.jpg`, `{key}.txt` and `{key}.json` in `pool/shards/{shard}.tar`.",
    columns=[
        ("uid", pa.string(), "128-bit hex id of the (url, caption) pair (`pair_uid`, or the input's uid column)"),
        ("url", pa.string(), "the image url as given"),
        ("caption", pa.string(), "the caption as given"),
        ("shard", pa.string(), "pool shard name (`pool/shards/{shard}.tar`)"),
        ("key", pa.string(), "webdataset key inside the shard (`{shard}` + zero-padded row)"),
        ("status", pa.string(), "`success`, `failed` or `refused` (blocked by the URL safety policy)"),
        ("error", pa.string(), "short reason of a failure or refusal, e.g. `HTTP 404`; null on success"),
        ("width", pa.int32(), "width of the stored image (null unless success)"),
        ("height", pa.int32(), "height of the stored image (null unless success)"),
        ("sha256", pa.string(), "sha256 of the stored image bytes `{key}.jpg` (null unless success)"),
        ("query_ids", pa.list_(pa.int32()), "ids of the queries this candidate matched (empty when unknown)"),
    ],
)

registry.register_stage(STAGE, FOLDER, "clipcurate download", ("pool",))

DEFAULTS = {
    "url_col": "url",
    "caption_col": "caption",
    "image_size": 256,
    "resize_mode": "border",
    "resize_only_if_bigger": False,
    "encode_quality": 95,
    "skip_reencode": False,
    "processes": 0,
    "threads": 64,
    "samples_per_shard": 10000,
    "timeout": 10.0,
    "retries": 0,
    "fetch_deadline": 30.0,
    "max_body_bytes": 32 * 1024 * 1024,
    "max_image_area": 89_478_485,
    "min_image_size": 0,
    "distributor": "multiprocessing",
    "allow_private": False,
    "allow_hosts": [],
    "hosts": {},
    "stall_timeout": 0.0,
    "user_agent_token": "",
    "disallowed_header_directives": ["noai", "noimageai", "noindex", "noimageindex"],
}
DOCS = {
    "url_col": "input column holding the url (for --input files)",
    "caption_col": "input column holding the caption (for --input files)",
    "image_size": "img2dataset image_size: the stored images' side in pixels",
    "resize_mode": "img2dataset resize_mode: no, keep_ratio, center_crop, border, keep_ratio_largest",
    "resize_only_if_bigger": "img2dataset resize_only_if_bigger",
    "encode_quality": "JPEG quality of the stored images",
    "skip_reencode": "img2dataset skip_reencode: keep a JPEG's own bytes when it needs no resize",
    "processes": "img2dataset processes_count (0 = one per CPU core, at most one per pending shard)",
    "threads": "img2dataset thread_count: concurrent fetches per process",
    "samples_per_shard": "input rows per pool shard",
    "timeout": "seconds a connect or a single socket read may take",
    "retries": "img2dataset retries per url",
    "fetch_deadline": "seconds a whole fetch (headers + body) may take; stops servers that trickle",
    "max_body_bytes": "largest body accepted (by Content-Length and while reading)",
    "max_image_area": "largest width*height accepted, checked on the header before decoding (bombs)",
    "min_image_size": "img2dataset min_image_size: smaller images fail",
    "distributor": "img2dataset distributor (multiprocessing)",
    "allow_private": "fetch from loopback/private/link-local/reserved addresses (off: refused)",
    "allow_hosts": "host names exempt from the address check (e.g. an internal CDN)",
    "hosts": "static name -> IP address table consulted before DNS (like /etc/hosts)",
    "stall_timeout": "kill img2dataset when no output grows for this many seconds (0 = auto)",
    "user_agent_token": "img2dataset user_agent_token (also matched in X-Robots-Tag)",
    "disallowed_header_directives": "X-Robots-Tag directives that make a url fail",
}
config.section(STAGE, DEFAULTS, DOCS)

sql.report(
    "download-failures",
    "pool rows by status and reason (how many failed and why)",
    "select status, coalesce(error, '') as reason, count(*) as n from pool "
    "group by status, reason order by status <> 'success', n desc, reason",
    needs=("pool",),
)


# -- the pool's files ---------------------------------------------------------------------------

def shard_tar(ws: Workspace, shard: str) -> Path:
    return ws.path(FOLDER, "shards", f"{shard}.tar")


def shard_manifest(ws: Workspace, shard: str) -> Path:
    return ws.path(FOLDER, "manifest", f"{shard}.parquet")


class TarStream:
    """Write a tar of regular files, byte for byte what ``tarfile`` writes in USTAR format for a
    member with mode 0444, mtime 0 and no owner (deterministic: the same samples give the same
    bytes), without tarfile's per-member cost (TarInfo, field validation, checksum loop in Python).

    Each header is one 512-byte template with the name and the size patched in; the checksum is
    the template's byte sum plus those two fields. A name over 100 bytes or a size over USTAR's 8 GiB
    goes through tarfile itself (prefix split, its errors). ``close`` writes the two zero blocks and
    pads to tarfile's 10 KiB record, as ``TarFile.close`` does.
    """

    def __init__(self, fh):
        self._fh = fh
        self._offset = 0

    @staticmethod
    def _template() -> tuple[bytes, int]:
        info = tarfile.TarInfo("x")
        info.mode, info.mtime = 0o444, 0
        head = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
        head[0:100] = bytes(100)        # name
        head[124:136] = bytes(12)       # size
        head[148:156] = b" " * 8        # checksum, counted as spaces
        return bytes(head), sum(head)

    def add(self, name: str, data: bytes) -> None:
        raw = name.encode("utf-8")
        size = len(data)
        if len(raw) > 100 or size >= 8 ** 11:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = size, 0o444, 0
            head = info.tobuf(tarfile.USTAR_FORMAT)
        else:
            template, base = _TAR_TEMPLATE
            size_field = b"%011o\0" % size
            head = bytearray(template)
            head[0:len(raw)] = raw
            head[124:136] = size_field
            head[148:155] = b"%06o\0" % (base + sum(raw) + sum(size_field))
        pad = -size % 512
        self._fh.write(head)
        self._fh.write(data)
        if pad:
            self._fh.write(bytes(pad))
        self._offset += len(head) + size + pad

    def close(self) -> None:
        end = self._offset + 1024
        self._fh.write(bytes(1024 + (-end % tarfile.RECORDSIZE)))
        self._offset = 0


_TAR_TEMPLATE = TarStream._template()


def sample_members(key: str, shard: str, row: dict, data: bytes) -> tuple[str, list[tuple[str, bytes]]]:
    """sha256 and the three tar members (``{key}.jpg``, ``.txt``, ``.json``) of one stored image.

    ``row`` holds uid, url, caption, width, height and query_ids. Used by the img2dataset workers
    (_HookedWriter) and by write_shard_files, so both write the same bytes.
    """
    digest = hashlib.sha256(data).hexdigest()
    meta = {"uid": row["uid"], "url": row["url"], "caption": row["caption"], "key": key, "shard": shard,
            "width": row["width"], "height": row["height"], "sha256": digest,
            "query_ids": list(row.get("query_ids") or [])}
    return digest, [(f"{key}.jpg", data), (f"{key}.txt", (row["caption"] or "").encode("utf-8")),
                    (f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))]


def write_shard_files(ws: Workspace, shard: str, rows: list[dict], images) -> dict:
    """Write ``pool/shards/{shard}.tar`` then ``pool/manifest/{shard}.parquet``, each atomically.

    ``rows`` are complete pool rows (every manifest column); ``images`` gives the stored JPEG bytes
    of the success rows, as a dict key → bytes or as an iterable of (key, bytes) pairs that is
    streamed into the tar in its own order (so a shard's images are never all in memory). The tar
    holds ``{key}.jpg``, ``{key}.txt`` and ``{key}.json`` per success row; sha256 (and, when
    missing, width/height from the image header) are filled in here. A success row whose image
    never comes becomes ``failed`` / ``stored image missing``. Returns counts for the marker,
    which the caller writes afterwards.
    """
    from PIL import Image

    waiting = {r["key"]: r for r in rows if r["status"] == "success"}
    pairs = images.items() if isinstance(images, dict) else images
    with atomic_path(shard_tar(ws, shard)) as tmp, open(tmp, "wb", buffering=1 << 20) as fh:
        tar = TarStream(fh)
        for key, data in pairs:
            r = waiting.pop(key, None)
            if r is None:
                continue
            if r.get("width") is None or r.get("height") is None:
                with Image.open(io.BytesIO(data)) as im:
                    r["width"], r["height"] = im.size
            r["sha256"], members = sample_members(key, shard, r, data)
            for name, blob in members:
                tar.add(name, blob)
        tar.close()
    for r in waiting.values():
        r.update(status="failed", error="stored image missing", width=None, height=None, sha256=None)
    manifest.write(POOL, rows, shard_manifest(ws, shard))
    counts = {s: 0 for s in STATUSES}
    for r in rows:
        counts[r["status"]] += 1
    return {"rows": len(rows), **counts}


def key_width(samples_per_shard: int) -> int:
    """Digits of the row part of a key (img2dataset's ``oom_sample_per_shard``)."""
    return max(1, len(str(max(1, int(samples_per_shard) - 1))))


def write_pool_shard(ws: Workspace, shard: str, samples: list[dict]) -> dict:
    """Write one finished pool shard exactly as a real download leaves it (for tests and demos).

    Each sample is a dict with ``url`` and ``caption`` and optionally ``uid`` (default
    ``pair_uid(url, caption)``), ``key`` (default ``{shard}{i:04d}``), ``query_ids`` (default []),
    ``image`` (JPEG bytes or a PIL image, encoded as JPEG), ``status`` (default ``success`` when
    there is an image, else ``failed``) and ``error`` (default ``"synthetic failure"`` for a
    failed sample). Writes the tar, the manifest and then the shard's completion marker::

        from clipcurate.core.synth import make_image
        write_pool_shard(ws, "00000", [{"url": "http://x/0.jpg", "caption": "a circle",
                                        "image": make_image(0, seed=0)}])
    """
    from PIL import Image

    from clipcurate.core.synth import jpeg_bytes

    rows, images = [], {}
    for i, s in enumerate(samples):
        img = s.get("image")
        data = jpeg_bytes(img) if isinstance(img, Image.Image) else img
        status = s.get("status") or ("success" if data is not None else "failed")
        if status not in STATUSES:
            raise ValueError(f"status {status!r} not in {STATUSES}")
        if status == "success" and data is None:
            raise ValueError(f"sample {i}: status 'success' needs an image")
        key = s.get("key") or f"{shard}{i:04d}"
        row = {"uid": s.get("uid") or pair_uid(s["url"], s["caption"]), "url": s["url"],
               "caption": s["caption"], "shard": shard, "key": key, "status": status,
               "error": None, "width": None, "height": None, "sha256": None,
               "query_ids": [int(q) for q in (s.get("query_ids") or [])]}
        if status == "success":
            images[key] = data  # sha256, width and height are filled in by write_shard_files
        else:
            row["error"] = s.get("error") or ("refused: synthetic" if status == "refused" else "synthetic failure")
        rows.append(row)
    counts = write_shard_files(ws, shard, rows, images)
    folder = ws.path(FOLDER)
    mark_done(folder, shard, counts)
    # Keep `status` truthful: the plan lists every shard written so far, all of them done.
    plan = folder / PLAN
    shards = set(read_json(plan).get("shards", [])) if plan.exists() else set()
    write_json(plan, {"stage": STAGE, "shards": sorted(shards | {shard})})
    if all(is_done(folder, s) for s in shards | {shard}):
        write_text(folder / SUCCESS, "")
    return counts


# =================================================================================================
# The real download: plan → pre-check → img2dataset (in a watched child process) → convert.
# =================================================================================================
#
# 1. Plan. The input (candidates.parquet, or a user's Parquet/CSV/TSV/JSONL) is read once, uids are
#    computed, duplicates dropped, and the rows are cut into shards of `samples_per_shard`. Each
#    shard's rows are saved as pool/_input/{shard}.parquet, then pool/_input/plan.json (last) with a
#    fingerprint of the input. A rerun with the same input reuses the plan; a different input is an
#    error unless --force (which starts the pool over).
# 2. Pre-check. Every url is checked against the URL safety policy in this process (scheme, and
#    every address its host resolves to). Refused and malformed urls are decided here: they never
#    reach img2dataset and no request is sent for them.
# 3. Fetch. The fetchable rows of all unfinished shards go to ONE img2dataset.download() call, one
#    input file per shard, so img2dataset shard j is our j-th unfinished shard. It runs in a child
#    process (its own process group) that we watch: img2dataset's fetch function is replaced in its
#    workers by urlsafety.fetch (pinned, redirect-checked, deadline, body cap) plus an image header
#    check (pixel bombs, non-images, truncated files) — see _HookedWriter below.
# 4. Convert. When img2dataset writes {j}_stats.json (after closing that shard's images and parquet),
#    we turn its output into ours: our keys, sha256 of the stored bytes, every input row accounted
#    for (success / failed / refused + reason). Tar, then manifest, then the marker — so a kill -9
#    at any moment leaves a shard either finished or redone by the next run.
# 5. Watchdog. When all shards are converted the child gets a short grace to exit and is then
#    killed (img2dataset can hang at the end of a run); when no output grows for `stall_timeout`
#    the child is killed and the unfinished shards get one more round, then the run fails with a
#    one-line error that says to rerun.

INPUT_DIR = "_input"
WORK_DIR = "_work"
ROUNDS = 2  # fetch rounds per run for shards that did not finish (img2dataset stalled or crashed)
# Seconds img2dataset gets to exit once every shard is converted. Nothing it does after that is
# used (its output is consumed, the work folder is removed), and its pool teardown sometimes
# hangs (measured here: 2 of 3 runs of 12 shards waited out the old 10 s grace): kill it soon.
END_GRACE = 1.0
STARTUP_LIMIT = 180.0  # seconds img2dataset may take to start (imports) before it counts as stalled
INPUT_SCHEMA = pa.schema([("uid", pa.string()), ("url", pa.string()), ("caption", pa.string()),
                          ("query_ids", pa.list_(pa.int32()))])
# What img2dataset reads: the input rows to fetch, each with its position in our shard ("row"), from
# which its worker names the sample with our key.
FETCH_SCHEMA = INPUT_SCHEMA.append(pa.field("row", pa.int32()))


def _conf(cfg: dict | None) -> dict:
    conf = dict(DEFAULTS)
    for k, v in (cfg or {}).items():
        if k not in DEFAULTS:
            raise ClipcurateError(f"unknown download option {k!r}; known: {', '.join(sorted(DEFAULTS))}")
        if v is not None:
            conf[k] = v
    if conf["samples_per_shard"] < 1:
        raise ClipcurateError(f"samples_per_shard {conf['samples_per_shard']!r} must be at least 1")
    if conf["distributor"] not in ("multiprocessing", "ray"):
        raise ClipcurateError(f"distributor {conf['distributor']!r} is not supported; use multiprocessing")
    modes = ("no", "keep_ratio", "center_crop", "border", "keep_ratio_largest")
    if conf["resize_mode"] not in modes:
        raise ClipcurateError(f"resize_mode {conf['resize_mode']!r} is not one of {', '.join(modes)}")
    return conf


def policy_from(conf: dict) -> urlsafety.Policy:
    hosts = conf["hosts"]
    if isinstance(hosts, str):  # from the environment: "name=ip,name2=ip2"
        pairs = [p.split("=", 1) for p in hosts.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise ClipcurateError(f"[download] hosts {hosts!r}: write it as name=ip,name2=ip2")
        hosts = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(hosts, dict):
        raise ClipcurateError(f"[download] hosts {hosts!r}: must be a table of name = ip address")
    try:
        return urlsafety.Policy.make(conf["allow_private"], conf["allow_hosts"], hosts)
    except ValueError as exc:
        raise ClipcurateError(f"[download] hosts: {exc}; give IP addresses, e.g. 'cdn.example' = '192.0.2.7'") from None


# -- 1. plan ---------------------------------------------------------------------------------------

def read_input(ws: Workspace, input_path: str | os.PathLike | None, conf: dict) -> pa.Table:
    """The rows to download: uid, url, caption, query_ids (INPUT_SCHEMA), in input order."""
    if input_path is None:
        path = ws.path("candidates", "candidates.parquet")
        if "candidates" in manifest.REGISTRY:
            files = registry.require_manifest(ws, "candidates")
            path = files[0]
        elif not path.exists():
            raise MissingUpstream(f"candidates ({path})", "clipcurate queries match")
        url_col, cap_col = "url", "caption"
    else:
        path = Path(input_path)
        url_col, cap_col = conf["url_col"], conf["caption_col"]
    tbl = _read_table(path)
    cols = tbl.column_names
    for want, opt in ((url_col, "--url-col"), (cap_col, "--caption-col")):
        if want not in cols:
            raise ClipcurateError(f"{path}: no column {want!r} (columns: {', '.join(cols)}); name it with {opt}")
    urls = [None if u is None else str(u) for u in tbl.column(url_col).to_pylist()]
    caps = ["" if c is None else str(c) for c in tbl.column(cap_col).to_pylist()]
    if "uid" in cols:
        uids = [str(u) if u is not None else pair_uid(url, cap)
                for u, url, cap in zip(tbl.column("uid").to_pylist(), urls, caps)]
    else:
        uids = [pair_uid(url, cap) for url, cap in zip(urls, caps)]
    qcol = next((c for c in ("query_ids", "entry_ids") if c in cols), None)
    if qcol:
        qids = [[int(q) for q in (v or [])] if isinstance(v, (list, tuple)) else ([] if v is None else [int(v)])
                for v in tbl.column(qcol).to_pylist()]
    else:
        qids = [[] for _ in urls]
    return pa.table({"uid": uids, "url": urls, "caption": caps, "query_ids": qids}, schema=INPUT_SCHEMA)


def _read_table(path: Path) -> pa.Table:
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson

    if not path.exists():
        raise ClipcurateError(f"input file {str(path)!r} not found")
    name = path.name.lower()
    base = name[:-3] if name.endswith(".gz") else name
    try:
        if base.endswith(".parquet"):
            return pq.read_table(path)
        if base.endswith(".csv"):
            return pacsv.read_csv(path)
        if base.endswith(".tsv"):
            return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(delimiter="\t"))
        if base.endswith((".jsonl", ".json", ".ndjson")):
            return pajson.read_json(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ClipcurateError(f"{path}: cannot read it ({str(exc).splitlines()[0][:120]})") from None
    raise ClipcurateError(f"{path}: unknown file type; use .parquet, .csv, .tsv or .jsonl (optionally .gz)")


def _fingerprint(tbl: pa.Table, samples_per_shard: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{samples_per_shard}\n".encode())
    for uid, url in zip(tbl.column("uid").to_pylist(), tbl.column("url").to_pylist()):
        h.update(f"{uid}\x1f{url}\n".encode())
    return h.hexdigest()


def shard_names(n_rows: int, samples_per_shard: int) -> list[str]:
    n = max(1, -(-n_rows // samples_per_shard))
    width = max(5, len(str(n - 1)))
    return [f"{i:0{width}d}" for i in range(n)]


def plan(ws: Workspace, input_path=None, conf: dict | None = None, force: bool = False) -> list[str]:
    """Cut the input into shards under pool/_input (reused when the input did not change)."""
    conf = _conf(conf)
    folder = ws.path(FOLDER)
    in_dir = folder / INPUT_DIR
    tbl = read_input(ws, input_path, conf)
    # Duplicate uids (the same url + caption twice) would be two rows with one uid: keep the first.
    seen, keep = set(), []
    for i, uid in enumerate(tbl.column("uid").to_pylist()):
        if uid not in seen:
            seen.add(uid)
            keep.append(i)
    dupes = tbl.num_rows - len(keep)
    if dupes:
        warn(f"download: {dupes} duplicate input rows (same uid) skipped")
        tbl = tbl.take(keep)
    sps = int(conf["samples_per_shard"])
    fp = _fingerprint(tbl, sps)
    plan_file = in_dir / "plan.json"
    if plan_file.exists() and not force:
        old = read_json(plan_file)
        if old.get("fingerprint") == fp:
            return old["shards"]
        done = [s for s in old.get("shards", []) if is_done(folder, s)]
    else:
        done = [] if force else sorted(folder.glob("*.done"))  # e.g. shards written by write_pool_shard
    if done and not force:
        raise ClipcurateError(
            f"pool/ holds {len(done)} shards downloaded from another input (or samples_per_shard); "
            f"rerun with --force to start the pool over")
    if folder.exists():
        shutil.rmtree(folder)
    shards = shard_names(tbl.num_rows, sps)
    for i, s in enumerate(shards):
        with atomic_path(in_dir / f"{s}.parquet") as tmp:
            pq.write_table(tbl.slice(i * sps, sps), tmp)
    write_json(plan_file, {"fingerprint": fp, "shards": shards, "rows": tbl.num_rows,
                           "samples_per_shard": sps, "duplicates_skipped": dupes,
                           "input": str(input_path) if input_path else "candidates"})
    return shards


# -- 2. pre-check ----------------------------------------------------------------------------------

def precheck(urls: list[str | None], policy: urlsafety.Policy, threads: int = 32) -> list[tuple | None]:
    """For each url: None (fetch it) or (status, reason) decided without sending anything."""
    hosts: dict[str, object] = {}
    split: list = []
    for url in urls:
        try:
            host, _ = urlsafety.split_url(url)
            split.append(host)
            hosts.setdefault(host, None)
        except urlsafety.Refused as exc:
            split.append(("refused", f"refused: {exc.reason}"))
        except urlsafety.FetchError as exc:
            split.append(("failed", exc.reason))

    def check(host):
        try:
            policy.addresses(host)
            return None
        except urlsafety.Refused as exc:
            return ("refused", f"refused: {exc.reason}")
        except urlsafety.FetchError as exc:
            return ("failed", exc.reason)

    names = list(hosts)
    with ThreadPoolExecutor(max(1, min(threads, len(names) or 1))) as pool:
        for host, verdict in zip(names, pool.map(check, names)):
            hosts[host] = verdict
    return [hosts[s] if isinstance(s, str) else s for s in split]


# -- 3. the img2dataset worker hook ------------------------------------------------------------------
#
# img2dataset fetches with img2dataset.downloader.download_image (plain urllib: no address checks,
# redirects followed anywhere, no deadline, no body cap). Its Downloader is pickled to the worker
# processes with its sample writer class, so we hand download() a writer class of ours: unpickling
# imports this module in each worker, and the writer's constructor — which runs at the start of
# every shard, before any fetch — replaces download_image there with _hooked_download_image. The
# limits travel in {work}/fetch.json next to img2dataset's output folder, so any distributor with
# a shared filesystem gets them.

_HOOK: dict = {}


def _set_pdeathsig() -> None:
    """Linux: die with the parent, so a kill -9 of `clipcurate download` leaves no orphans."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - best effort
        pass


def _install_hook(output_folder: str) -> None:
    work = Path(output_folder).parent
    settings = json.loads((work / "fetch.json").read_text("utf-8"))
    if _HOOK.get("work") != str(work):
        _HOOK.clear()
        _HOOK.update(settings, work=str(work), policy=urlsafety.Policy.from_json(settings["policy"]))
        if settings.get("pdeathsig"):
            _set_pdeathsig()
    import img2dataset.downloader as i2d_downloader
    import img2dataset.resizer as i2d_resizer

    i2d_downloader.download_image = _hooked_download_image
    if not isinstance(i2d_resizer.A, _CachedTransforms):
        i2d_resizer.A = _CachedTransforms(i2d_resizer.A)
    if not getattr(i2d_resizer.Resizer.__call__, "_clipcurate", False):
        i2d_resizer.Resizer.__call__ = _resizer_call(i2d_resizer.Resizer.__call__, i2d_resizer)


def _resizer_call(original, i2d_resizer):
    """img2dataset's Resizer.__call__, without the decode when the image is kept byte for byte.

    With ``resize_mode no`` and ``skip_reencode``, img2dataset stores a JPEG's own bytes (when
    ``imghdr`` calls it a JPEG and it has no alpha channel); it still decodes the whole image, only
    to learn its size for the min-size / area / aspect checks — at 256 px half the CPU of a stored
    image, for a 2 MP photo ~10 ms. The size is in the JPEG header: read it there (Pillow parses
    the markers, no pixel is decoded) and apply the same checks in the same order. Anything else —
    another mode, a format that is re-encoded, a CMYK JPEG (img2dataset would matte its fourth
    channel as alpha), a header Pillow cannot parse — goes to img2dataset's own code.
    """
    import imghdr  # deprecated, but what img2dataset's own check uses: the same verdict

    from PIL import Image

    def call(self, img_stream, blurring_bbox_list=None):
        if (self.skip_reencode and not self.disable_all_reencoding and blurring_bbox_list is None
                and self.resize_mode == i2d_resizer.ResizeMode.no and self.what_ext == "jpeg"):
            try:
                img_stream.seek(0)
                if imghdr.what(img_stream) == "jpeg":
                    img_stream.seek(0)
                    with Image.open(img_stream) as im:
                        ok = im.format == "JPEG" and im.mode in ("RGB", "L")
                        width, height = im.size
                    if ok and width > 0 and height > 0:
                        if min(height, width) < self.min_image_size:
                            return None, None, None, None, None, "image too small"
                        if height * width > self.max_image_area:
                            return None, None, None, None, None, "image area too large"
                        if max(height, width) / min(height, width) > self.max_aspect_ratio:
                            return None, None, None, None, None, "aspect ratio too large"
                        img_stream.seek(0)
                        return img_stream.read(), width, height, width, height, None
            except Exception:  # noqa: BLE001 - not parseable here: img2dataset decides
                img_stream.seek(0)
                return original(self, img_stream, blurring_bbox_list)
            img_stream.seek(0)
        return original(self, img_stream, blurring_bbox_list)

    call._clipcurate = True
    call.__wrapped__ = original
    return call


class _CachedTransforms:
    """Stands in for the `albumentations` module inside img2dataset's Resizer.

    The Resizer builds a new LongestMaxSize / PadIfNeeded / SmallestMaxSize / CenterCrop for every
    image; constructing one runs albumentations' pydantic validation (~0.2 ms per image for
    `border`, a quarter of the whole resize + re-encode). These transforms are deterministic
    (p=1.0, no random parameters), so one instance per distinct argument set gives the same pixels:
    build it once and reuse it. Anything else is the real module's attribute.
    """

    CACHED = ("LongestMaxSize", "SmallestMaxSize", "PadIfNeeded", "CenterCrop")

    def __init__(self, module):
        self._module = module
        self._made: dict = {}

    def __getattr__(self, name):
        attr = getattr(self._module, name)
        if name not in self.CACHED:
            return attr

        def make(**kwargs):
            key = (name, repr(sorted(kwargs.items())))
            made = self._made.get(key)
            if made is None:
                made = self._made[key] = attr(**kwargs)
                if name == "PadIfNeeded" and set(kwargs) <= {"min_height", "min_width", "border_mode", "value", "p"}:
                    made = self._made[key] = _PadIfNeeded(made, kwargs["min_height"], kwargs["min_width"])
            return made
        return make


class _PadIfNeeded:
    """PadIfNeeded that hands back an image already at least min_height x min_width as it is.

    albumentations would copy it through cv2.copyMakeBorder with zero borders (the same pixels) after
    its per-call bookkeeping (~0.05 ms per image); in `border` mode that is every image whose longest
    side the resize has just made `image_size` on both sides, or that was square. Smaller images are
    padded by albumentations itself.
    """

    def __init__(self, transform, min_height: int, min_width: int):
        self._transform, self._h, self._w = transform, min_height, min_width

    def __call__(self, *args, **kwargs):
        image = kwargs.get("image")
        if not args and set(kwargs) == {"image"} and image.shape[0] >= self._h and image.shape[1] >= self._w:
            return {"image": image}
        return self._transform(*args, **kwargs)


def _hooked_download_image(row, timeout, user_agent_token, disallowed_header_directives):
    """img2dataset's download_image, fetched through urlsafety and checked as an image."""
    from img2dataset.downloader import is_disallowed

    key, url = row
    h = _HOOK
    try:
        agent = urlsafety.USER_AGENT
        if user_agent_token:
            agent += f" (compatible; {user_agent_token}; +https://github.com/rom1504/img2dataset)"
        data, headers = urlsafety.fetch(url, h["policy"], timeout=timeout, deadline=h["deadline"],
                                        max_bytes=h["max_bytes"], user_agent=agent)
        if disallowed_header_directives and is_disallowed(headers, user_agent_token, disallowed_header_directives):
            return key, None, "disallowed by X-Robots-Tag"
        problem = inspect_image(data, h["max_area"])
        if problem:
            return key, None, problem
        return key, io.BytesIO(data), None
    except urlsafety.Refused as exc:
        return key, None, f"refused: {exc.reason}"
    except urlsafety.FetchError as exc:
        return key, None, exc.reason
    except Exception as exc:  # noqa: BLE001 - never let one url break the shard
        return key, None, f"{exc.__class__.__name__}: {str(exc)[:80]}"


def inspect_image(data: bytes, max_area: float) -> str | None:
    """Check a body before anything decodes it in full: a reason, or None when it looks sound.

    - not an image: no decoder recognises the header;
    - image too large (pixels): width*height from the header exceeds ``max_area`` — a
      decompression bomb is a tiny file that declares a huge canvas, so this check must come
      before decoding (cv2 would allocate the whole canvas);
    - truncated image: a JPEG whose entropy-coded data ends early (cv2 would decode it "fine",
      grey bottom and all) — one without its end marker is decoded at 1/8 scale, which raises
      when data is missing; other formats are verified (chunk CRCs for PNG).
    """
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        return "image too large (pixels)"
    except Exception:  # noqa: BLE001
        return "not an image"
    with im:
        w, h = im.size
        if w * h > max_area:
            return "image too large (pixels)"
        if w < 1 or h < 1:
            return "not an image"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if im.format == "JPEG":
                    # A complete JPEG ends with the EOI marker (FF D9), perhaps padded: then skip the
                    # decode. Without it, decode at 1/8 scale: Pillow raises when the data ends early.
                    if data.rstrip(b"\0 \r\n")[-2:] != b"\xff\xd9":
                        im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                        im.load()
                else:
                    im.verify()
        except Exception:  # noqa: BLE001
            return "truncated image"
    return None


class _HookedWriter:
    """Stands in for img2dataset's WebDatasetSampleWriter; constructed after installing the fetch hook.

    It writes img2dataset's per-shard parquet as that writer does (one row per url, with status,
    error and size), plus a ``sha256`` column of the stored bytes, and writes the shard's images
    straight into *our* webdataset tar ``{name}.tar``: our key (our shard name + the row's position,
    carried in the ``row`` column), ``{key}.jpg``, ``{key}.txt``, ``{key}.json`` — the bytes
    write_shard_files would write. The parent then only renames the finished tar into the pool
    (step 4): no second pass over the images, and the tar work is spread over the worker processes
    instead of the one process that plans. Both files are complete when img2dataset writes
    ``{name}_stats.json``, which it does after close().
    """

    def __init__(self, shard_id, output_folder, save_caption, oom_shard_count, schema, encode_format):
        _install_hook(output_folder)
        from img2dataset.writer import BufferedParquetWriter

        name = f"{shard_id:0{oom_shard_count}d}"
        self._shard = _HOOK["shards"][shard_id]
        self._width = _HOOK["key_width"]
        self._fh = open(f"{output_folder}/{name}.tar", "wb", buffering=1 << 20)  # noqa: SIM115 - closed in close()
        self._tar = TarStream(self._fh)
        self._parquet = BufferedParquetWriter(f"{output_folder}/{name}.parquet",
                                              schema.append(pa.field("sha256", pa.string())), 100)

    def write(self, img_str, key, caption, meta):
        meta["sha256"] = None
        if img_str is not None:
            our_key = f"{self._shard}{meta['row']:0{self._width}d}"
            meta["sha256"], members = sample_members(our_key, self._shard, meta, img_str)
            for member, blob in members:
                self._tar.add(member, blob)
        self._parquet.write(meta)

    def close(self):
        self._parquet.close()
        self._tar.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())  # the parent renames it into the pool: durable first, as atomic_path
        self._fh.close()


class _LazyModule(types.ModuleType):
    """A module imported on first attribute access (then it is the real one in sys.modules)."""

    def __getattr__(self, name):
        import importlib

        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


class _NoLogger:
    """Stands in for img2dataset's LoggerProcess: we report progress ourselves, and a logger
    process is one more process that could outlive a killed run."""

    def __init__(self, *args, **kwargs):
        self.done_shards = set()

    def start(self):
        pass

    def join(self, timeout=None):
        pass

    def terminate(self):
        pass


def _worker_init() -> None:
    """Start of every img2dataset pool worker: die with the runner, and skip importing torch."""
    _set_pdeathsig()
    sys.modules.setdefault("torch", None)  # see _runner_main


def _pool_distributor(processes_count, downloader, reader, subjob_size, max_shard_retry):
    """img2dataset's multiprocessing_distributor, with a worker initializer (_worker_init).

    img2dataset uses a "spawn" pool: every worker is a fresh interpreter that imports img2dataset
    (albumentations, OpenCV, pandas, wandb: ~1.8 s of CPU each, as much as fetching ~1000 images
    on loopback). The runner has already imported all of it, so the workers are forked from it
    instead and start at once. The runner is single-threaded when the pool is made (the
    LoggerProcess is ours, a no-op); a worker replaced after maxtasksperchild shards is forked while
    the pool's own handler threads run, as with Python's default "fork" pools on Linux.
    """
    from multiprocessing import get_context

    from img2dataset.distributor import retrier

    with get_context("fork").Pool(processes_count, maxtasksperchild=5, initializer=_worker_init) as pool:
        def run(gen):
            return [row for ok, row in pool.imap_unordered(downloader, gen) if ok is False]

        retrier(run, run(reader), max_shard_retry)
        pool.terminate()
        pool.join()


def _inline_distributor(processes_count, downloader, reader, subjob_size, max_shard_retry):
    """processes == 1: run img2dataset's Downloader in the runner itself (saves spawning a pool)."""
    failed = [row for row in reader if not downloader(row)[0]]
    for _ in range(max_shard_retry):
        failed = [row for row in failed if not downloader(row)[0]]


def _runner_main(job_file: str) -> None:
    """The child process (``python -c ... job.json``): dies with us, runs img2dataset.download().

    It is started with its own session (process group), stdout/stderr going to the run's log.
    """
    _set_pdeathsig()
    job = json.loads(Path(job_file).read_text("utf-8"))
    if os.getppid() != job["parent_pid"]:  # the parent died before prctl took effect
        os._exit(1)
    # Second line of defence against bombs in formats PIL does not parse: OpenCV's own limit.
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(int(min(job["max_area"], 2 ** 62)))
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import
    # img2dataset's writer imports webdataset, which imports torch only to offer a DataLoader; nothing
    # here needs it, and it is a third of the start-up time. A None entry makes `import torch` fail
    # fast, and webdataset then falls back to its stand-ins.
    sys.modules.setdefault("torch", None)
    # Two more imports nothing here uses (~1 s of the start-up together): img2dataset's logger
    # imports wandb at the top (we never enable it, and its LoggerProcess is replaced below), and
    # its distributor module imports Ray to define the Ray distributor, needed only with --distributor ray.
    sys.modules.setdefault("wandb", types.ModuleType("wandb"))
    if job["kwargs"]["distributor"] != "ray":
        sys.modules.setdefault("ray", None)  # `import ray` raises ModuleNotFoundError, which img2dataset expects
    # albumentations imports huggingface_hub (~0.15 s) only to offer saving pipelines to the Hub, and
    # does without it when the import fails. albumentations itself (~0.6 s) is needed only to resize:
    # with resize_mode "no" img2dataset never calls it, so it is imported on first use only.
    sys.modules.setdefault("huggingface_hub", None)
    if job["kwargs"]["resize_mode"] == "no":
        sys.modules.setdefault("albumentations", _LazyModule("albumentations"))
    # img2dataset imports at the top what only other paths use: pandas (~0.2 s; its reader needs it
    # for JSON input, ours is Parquet), webdataset (its tar writer, replaced by _HookedWriter) and
    # fire (its command line). Imported on first use, if any.
    for name in ("pandas", "webdataset", "fire"):
        sys.modules.setdefault(name, _LazyModule(name))
    import img2dataset  # noqa: F401  (the package re-exports a function named `main`: take the module)

    i2d_main = sys.modules["img2dataset.main"]
    i2d_main.WebDatasetSampleWriter = _HookedWriter
    i2d_main.LoggerProcess = _NoLogger
    i2d_main.multiprocessing_distributor = _inline_distributor if job["inline"] else _pool_distributor
    i2d_main.download(**job["kwargs"])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: img2dataset's pools have been known to hang in it


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
    """Merge pre-check verdicts and img2dataset results into pool rows; tar, manifest, marker.

    ``results`` is img2dataset's parquet of this shard by uid (with the sha256 of each stored image);
    ``i2d_tar`` is the shard's tar as its worker wrote it under our keys (_HookedWriter), renamed
    into the pool here. Without it (nothing was fetched) an empty tar is written.
    """
    width = key_width(sps)
    out = []
    for i, (r, verdict) in enumerate(zip(rows, pre)):
        key = f"{shard}{i:0{width}d}"
        row = {"uid": r["uid"], "url": r["url"], "caption": r["caption"], "shard": shard, "key": key,
               "status": "failed", "error": None, "width": None, "height": None, "sha256": None,
               "query_ids": r["query_ids"]}
        if verdict is not None:
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
    if i2d_tar is None:
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
    mark_done(ws.path(FOLDER), shard, counts)
    return counts


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


def _fetch_round(ws: Workspace, todo: list[str], conf: dict, policy: urlsafety.Policy, advance) -> None:
    folder = ws.path(FOLDER)
    sps = int(conf["samples_per_shard"])
    work = folder / WORK_DIR / f"run-{os.getpid()}-{time.time_ns()}"
    in_dir, out_dir = work / "input", work / "out"
    in_dir.mkdir(parents=True)
    batch = []  # (shard, rows, pre) of the shards that go to img2dataset, in its shard-id order
    for shard in todo:
        rows = pq.read_table(folder / INPUT_DIR / f"{shard}.parquet").to_pylist()
        pre = precheck([r["url"] for r in rows], policy, threads=int(conf["threads"]))
        fetch = [dict(r, row=i) for i, (r, v) in enumerate(zip(rows, pre)) if v is None]
        if not fetch:  # nothing to fetch: finish it here
            _finish_shard(ws, shard, rows, pre, None, None, sps)
            advance()
            continue
        pq.write_table(pa.Table.from_pylist(fetch, schema=FETCH_SCHEMA), in_dir / f"{shard}.parquet")
        batch.append((shard, rows, pre))
    if not batch:
        shutil.rmtree(work, ignore_errors=True)
        return

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    processes = int(conf["processes"]) or cores
    processes = max(1, min(processes, len(batch)))
    oom = max(5, len(str(len(batch) - 1)))
    write_json(work / "fetch.json", {
        "policy": policy.to_json(), "deadline": float(conf["fetch_deadline"]),
        "max_bytes": int(conf["max_body_bytes"]), "max_area": float(conf["max_image_area"]),
        "pdeathsig": conf["distributor"] == "multiprocessing",
        "shards": [shard for shard, _, _ in batch], "key_width": key_width(sps)})
    kwargs = dict(
        url_list=str(in_dir), input_format="parquet", url_col="url", caption_col="caption",
        save_additional_columns=["uid", "query_ids", "row"], output_folder=str(out_dir), output_format="webdataset",
        image_size=int(conf["image_size"]), resize_mode=conf["resize_mode"],
        resize_only_if_bigger=bool(conf["resize_only_if_bigger"]), encode_quality=int(conf["encode_quality"]),
        skip_reencode=bool(conf["skip_reencode"]),
        encode_format="jpg", processes_count=processes, thread_count=int(conf["threads"]),
        number_sample_per_shard=sps, timeout=float(conf["timeout"]), retries=int(conf["retries"]),
        min_image_size=int(conf["min_image_size"]), max_image_area=float(conf["max_image_area"]),
        oom_shard_count=oom, extract_exif=False, compute_hash=None, incremental_mode="incremental",  # a fresh folder: nothing to skip ("overwrite" deletes its own _tmp)
        distributor=conf["distributor"], max_shard_retry=1, enable_wandb=False,
        user_agent_token=conf["user_agent_token"] or None,
        disallowed_header_directives=list(conf["disallowed_header_directives"]),
    )
    stall = float(conf["stall_timeout"]) or (
        2 * (float(conf["fetch_deadline"]) + float(conf["timeout"])) * (int(conf["retries"]) + 1) + 60)
    log_path = work / "img2dataset.log"
    write_json(work / "job.json", {"kwargs": kwargs, "max_area": float(conf["max_image_area"]),
                                   "inline": processes == 1 and conf["distributor"] == "multiprocessing",
                                   "parent_pid": os.getpid()})
    env = dict(os.environ)
    if conf["distributor"] == "ray":  # img2dataset's Ray tasks join the cluster this run is on
        from clipcurate.core.executor import ray_address_env
        env.update(ray_address_env())
    with open(log_path, "ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from clipcurate.download.stage import _runner_main; _runner_main(sys.argv[1])",
             str(work / "job.json")], stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
            env=env, start_new_session=True)
    pending = {j: b for j, b in enumerate(batch)}
    last_size, last_change, finished_at = -2, time.monotonic(), None
    try:
        while pending:
            for j in sorted(pending):
                name = f"{j:0{oom}d}"
                if not (out_dir / f"{name}_stats.json").exists():
                    continue
                shard, rows, pre = pending.pop(j)
                try:
                    _finish_shard(ws, shard, rows, pre, _i2d_results(out_dir, name), out_dir / f"{name}.tar", sps)
                except Exception as exc:  # noqa: BLE001 - a broken img2dataset shard is redone next round
                    warn(f"download: shard {shard}: img2dataset output unreadable ({exc.__class__.__name__}); will retry")
                    continue
                for suffix in (".tar", ".parquet", "_stats.json"):
                    (out_dir / f"{name}{suffix}").unlink(missing_ok=True)
                advance()
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
    if pending:
        tail = ""
        if log_path.exists():
            lines = [ln for ln in log_path.read_text("utf-8", "replace").splitlines() if ln.strip()]
            tail = f" (img2dataset log {log_path}: {lines[-1][:160] if lines else 'empty'})"
        warn(f"download: {len(pending)} shards unfinished in this round{tail}")
    else:
        shutil.rmtree(work, ignore_errors=True)


# -- the stage -------------------------------------------------------------------------------------------

@dataclasses.dataclass
class DownloadResult:
    shards_total: int
    shards_skipped: int
    counts: dict


def download(ws: Workspace, input_path: str | os.PathLike | None = None, *, cfg: dict | None = None,
             force: bool = False, executor=None) -> DownloadResult:
    """Download the candidates (or ``input_path``) into ``pool/``; see the module docstring.

    ``cfg`` holds [download] options (defaults in ``DEFAULTS``); the CLI passes the merged config.
    A rerun finishes what a killed run left; ``force`` starts the pool over.
    """
    conf = _conf(cfg)
    policy = policy_from(conf)
    ws.create()
    folder = ws.path(FOLDER)
    shards = plan(ws, input_path, conf, force=force)
    clean_temp(folder)
    shutil.rmtree(folder / WORK_DIR, ignore_errors=True)  # leftovers of a killed run
    write_json(folder / PLAN, {"stage": STAGE, "shards": shards})
    todo = [s for s in shards if not is_done(folder, s)]
    skipped = len(shards) - len(todo)
    if skipped:
        log(f"download: {skipped}/{len(shards)} shards already done, skipping them")
    if todo:
        (folder / SUCCESS).unlink(missing_ok=True)
    if not policy.allow_private:
        log("download: private, loopback and link-local addresses are refused (--allow-private to fetch them)")
    with progress("download shards", total=len(shards)) as advance:
        advance(skipped)
        for _ in range(ROUNDS):
            if not todo:
                break
            if executor is not None and executor.kind != "local":  # --executor ray: a Ray task per shard
                from clipcurate.download.remote import download_shards
                download_shards(executor, ws, todo, conf, policy, advance)
            else:
                _fetch_round(ws, todo, conf, policy, advance)
            todo = [s for s in shards if not is_done(folder, s)]
    if todo:
        raise ClipcurateError(
            f"download: {len(todo)} of {len(shards)} shards did not finish (img2dataset stalled or crashed; "
            f"see pool/{WORK_DIR}/*/img2dataset.log); rerun `clipcurate download` to retry them")
    counts: dict = {}
    for s in shards:
        for k, v in done_info(folder, s).items():
            if k in ("rows",) + STATUSES:
                counts[k] = counts.get(k, 0) + v
    write_text(folder / SUCCESS, "")
    return DownloadResult(len(shards), skipped, counts)
