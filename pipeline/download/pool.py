"""The pool: what `download` leaves, and how to write a shard of it.

    pool/shards/{shard}.tar        webdataset: {key}.jpg  {key}.txt (caption)  {key}.json (uid, url, ...)
    pool/manifest/{shard}.parquet  one row per input url: success, failed or refused, with the reason
    pool/{shard}.done              completion marker, written last (clipcurate.core.stage contract)

A key is ``{shard}{row:0Nd}`` — the shard name followed by the row's position in the shard,
zero-padded to the digits of ``samples_per_shard`` — the same layout img2dataset uses for its keys.
The tar is written by :class:`TarStream` (deterministic bytes); its three members per image come
from :func:`sample_members`, whoever writes them (the img2dataset workers, or write_shard_files).
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
from PIL import Image

from clipcurate.core import manifest
from clipcurate.core.io import atomic_path
from clipcurate.core.stage import add_done_shard
from clipcurate.core.synth import jpeg_bytes
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
    (img2dataset_child._HookedWriter) and by write_shard_files, so both write the same bytes.
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
    add_done_shard(ws.path(FOLDER), STAGE, shard, counts)
    return counts
