"""Stage `download`: candidate (url, caption) pairs → webdataset shards + the `pool` manifest.

The pool is laid out as::

    pool/shards/{shard}.tar        webdataset: {key}.jpg  {key}.txt (caption)  {key}.json (uid, url, ...)
    pool/manifest/{shard}.parquet  one row per input url: success, failed or refused, with the reason
    pool/{shard}.done              completion marker, written last (pipeline.stage contract)

A key is ``{shard}{row:0Nd}`` — the shard name followed by the row's position in the shard,
zero-padded to the digits of ``samples_per_shard`` — the same layout img2dataset uses for its keys.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa

from . import config, manifest, registry, sql
from .io import atomic_path, read_json, write_json, write_text
from .stage import PLAN, SUCCESS, is_done, mark_done
from .uid import pair_uid
from .workspace import Workspace

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


def _tar_add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o444
    info.mtime = 0  # deterministic tars: the same samples give the same bytes
    tf.addfile(info, io.BytesIO(data))


def write_shard_files(ws: Workspace, shard: str, rows: list[dict], images: dict[str, bytes]) -> dict:
    """Write ``pool/shards/{shard}.tar`` then ``pool/manifest/{shard}.parquet``, each atomically.

    ``rows`` are complete pool rows (every manifest column); ``images`` maps the key of each
    success row to its stored JPEG bytes. The tar holds ``{key}.jpg``, ``{key}.txt`` and
    ``{key}.json`` for every success row, in row order. Returns counts for the shard's marker.
    The caller writes the completion marker afterwards.
    """
    tar_path = shard_tar(ws, shard)
    with atomic_path(tar_path) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tf:
            for r in rows:
                if r["status"] != "success":
                    continue
                key = r["key"]
                meta = {"uid": r["uid"], "url": r["url"], "caption": r["caption"], "key": key,
                        "shard": shard, "width": r["width"], "height": r["height"],
                        "sha256": r["sha256"], "query_ids": list(r.get("query_ids") or [])}
                _tar_add(tf, f"{key}.jpg", images[key])
                _tar_add(tf, f"{key}.txt", (r["caption"] or "").encode("utf-8"))
                _tar_add(tf, f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))
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

        from pipeline.synth import make_image
        write_pool_shard(ws, "00000", [{"url": "http://x/0.jpg", "caption": "a circle",
                                        "image": make_image(0, seed=0)}])
    """
    from PIL import Image

    from .synth import jpeg_bytes

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
            with Image.open(io.BytesIO(data)) as im:
                row["width"], row["height"] = im.size
            row["sha256"] = hashlib.sha256(data).hexdigest()
            images[key] = data
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
