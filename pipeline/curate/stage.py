"""Stage `curate`: the pool minus failed downloads minus decontaminated samples, resharded.

The output is what `train` feeds to stock open_clip_train — webdataset tars whose samples are
``{uid}.jpg|png|webp`` + ``{uid}.txt`` (+ ``{uid}.json``), and a ``sizes.json`` beside them that
open_clip reads to know how many samples the shards hold (so ``--train-num-samples`` is optional).

The algorithm, in two passes:

1. **Plan (manifests only, no images).** Read the pool manifest (uid, shard, key, status) and the
   decontamination list. Keep the rows with status ``success`` whose uid is not on the list (and the
   first of any duplicate uid), sorted by (pool shard, key) so the plan does not depend on how the
   manifest files happen to be split. Cut the kept list into output shards of ``shard_size``.
   A fingerprint of the plan is saved in ``curate/_curate.json``: a rerun with the same inputs resumes
   (finished shards are skipped), a rerun with different inputs is refused unless ``--force``.
2. **Copy (streaming).** For each output shard, index the pool tars it draws from in one streaming
   pass (``tarfile`` mode ``r|``: each member's byte offset, grouped by key, the webdataset
   convention), then copy the wanted samples' bytes unchanged, in sorted key order, into a new tar
   written to a temp file. Only one sample is ever held in memory, and the output does not depend
   on the order in which the downloader's threads happened to write the pool tars. Then the shard's slice of the ``curated``
   manifest, then its completion marker (clipcurate.core.stage), so a kill -9 at any moment loses nothing:
   the rerun redoes only the unfinished shard.

Anything the plan promised but the tars do not deliver (a missing or truncated tar, a sample with no
image or no caption, a json uid that disagrees with the manifest) is skipped and counted per shard;
the counts land in ``curate/stats.json`` and are reported, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from clipcurate.core import config
from clipcurate.core import manifest as mf
from clipcurate.core import registry
from clipcurate.core import sql
from clipcurate.core.console import log, warn
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.io import atomic_path, read_json, write_json
from clipcurate.core.stage import SUCCESS, Stage, done_info, reset
from clipcurate.core.workspace import Workspace

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # what open_clip's wds loader renames to "image"
SIZES_FILE = "sizes.json"  # open_clip_train.data.get_dataset_size reads this beside the shards
META_FILE = "_curate.json"

CURATED = mf.register(
    "curated", version=1, glob="curate/manifest/*.parquet", stage="curate",
    doc="One row per sample in the curated (clean) training shards, in shard order.",
    columns=[
        ("uid", pa.string(), "pool sample uid (also the sample's key in the tar)"),
        ("shard", pa.string(), "output shard name; the file is curate/shards/{shard}.tar"),
        ("key", pa.string(), "webdataset key inside the shard (= uid)"),
        ("caption", pa.string(), "the caption exactly as stored in {key}.txt"),
    ],
)

DATASETS = ("clean", "all")  # the curated set, and the pool as downloaded (the counterfactual's "all")

config.section("curate", {"shard_size": 10000, "decontam": True, "sets": ["clean"]}, {
    "shard_size": "samples per output shard",
    "decontam": "drop the uids listed in overlap/decontam.parquet (false: keep every successful sample)",
    "sets": "which training sets to write: clean (curate/shards) and/or all (curate/all/shards, nothing dropped)",
})


sql.report("curated-shards", "Samples per curated shard.",
           "select shard, count(*) as samples from curated group by 1 order by 1", ("curated",))


@dataclasses.dataclass
class CurateResult:
    shards: list[str]
    samples: int
    counts: dict
    pattern: str  # brace pattern for open_clip_train --train-data


def set_dir(ws: Workspace, data: str = "clean") -> Path:
    """The folder of one training set: ``curate/`` for the clean set, ``curate/all/`` for the pool
    as downloaded (successful samples, nothing decontaminated)."""
    if data not in DATASETS:
        raise ClipcurateError(f"training set {data!r} is not one of {', '.join(DATASETS)}")
    return ws.stage_dir("curate") if data == "clean" else ws.path("curate", "all")


def shards_dir(ws: Workspace, data: str = "clean") -> Path:
    return set_dir(ws, data) / "shards"


def shard_pattern(ws: Workspace, shards: list[str], data: str = "clean") -> str:
    """``.../curate/shards/{00000..00012}.tar`` — the brace pattern open_clip_train expands."""
    d = shards_dir(ws, data)
    if len(shards) == 1:
        return str(d / f"{shards[0]}.tar")
    return str(d / f"{{{shards[0]}..{shards[-1]}}}.tar")


def read_sizes(ws: Workspace, data: str = "clean") -> dict[str, int]:
    """{"00000.tar": n, ...} of a finished curate, or a one-line error naming the command."""
    path = shards_dir(ws, data) / SIZES_FILE
    if not path.is_file() or not (set_dir(ws, data) / SUCCESS).exists():
        raise MissingUpstream(f"curated shards ({path})", "clipcurate curate" + (" --set all" if data == "all" else ""))
    return {k: int(v) for k, v in read_json(path).items()}


# -- pass 1: the plan -------------------------------------------------------------------------

def _plan(ws: Workspace, decontam: bool, shard_size: int):
    """The kept pool rows, sorted, cut into output shards; plus what was dropped and why."""
    registry.require_manifest(ws, "pool")
    pool = mf.read_all("pool", ws.root, columns=["uid", "shard", "key", "status"])
    counts = {"pool_rows": pool.num_rows}
    ok = pool.filter(pc.equal(pool["status"], "success"))
    counts["dropped_not_success"] = pool.num_rows - ok.num_rows

    if decontam:
        if "decontam" not in mf.REGISTRY or not mf.get("decontam").files(ws.root):
            raise MissingUpstream("decontamination list overlap/decontam.parquet (or pass --no-decontam to skip it)",
                                  "clipcurate overlap")
        bad = mf.read_all("decontam", ws.root, columns=["pool_uid"])["pool_uid"].unique()
        keep = pc.invert(pc.is_in(ok["uid"], value_set=bad))
        counts["dropped_decontam"] = ok.num_rows - (pc.sum(keep.cast(pa.int64())).as_py() or 0)
        ok = ok.filter(keep)
    else:
        counts["dropped_decontam"] = 0

    ok = ok.sort_by([("shard", "ascending"), ("key", "ascending"), ("uid", "ascending")])
    uids, pshards, keys = (ok[c].to_pylist() for c in ("uid", "shard", "key"))
    seen: set[str] = set()
    rows = []
    for u, s, k in zip(uids, pshards, keys):
        if u in seen:
            continue
        seen.add(u)
        rows.append((u, s, k))
    counts["dropped_duplicate_uid"] = len(uids) - len(rows)
    counts["planned"] = len(rows)

    plan: dict[str, list[tuple[str, str, str]]] = {}
    for i in range(0, len(rows), shard_size):
        plan[f"{i // shard_size:05d}"] = rows[i:i + shard_size]
    return plan, counts


def _fingerprint(plan: dict, decontam: bool, shard_size: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(json.dumps({"decontam": decontam, "shard_size": shard_size}).encode())
    for shard, rows in plan.items():
        h.update(shard.encode())
        for u, s, k in rows:
            h.update(f"{u}\x1f{s}\x1f{k}\n".encode())
    return h.hexdigest()


# -- pass 2: streaming copy -------------------------------------------------------------------

def _split_name(name: str) -> tuple[str, str]:
    """webdataset's rule: key = path up to the first dot of the basename, ext = the rest."""
    d, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower() if dot else ""


def iter_tar_samples(path: Path):
    """Yield (key, {ext: bytes}) for consecutive members sharing a key, streaming one sample at a
    time. A truncated or corrupt tar ends the stream with ``TarBroken`` after the last good sample."""
    cur_key, cur = None, {}
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                key, ext = _split_name(member.name)
                if key != cur_key:
                    if cur_key is not None:
                        yield cur_key, cur
                    cur_key, cur = key, {}
                fh = tf.extractfile(member)
                cur[ext] = fh.read() if fh is not None else b""
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as exc:
        if cur_key is not None:
            yield cur_key, cur
        raise TarBroken(f"{path.name}: {exc.__class__.__name__}: {exc}") from None
    if cur_key is not None:
        yield cur_key, cur


class TarBroken(Exception):
    pass


_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ")  # gzip, bzip2, xz: no byte offsets to seek to


def iter_tar_samples_sorted(path: Path, wanted: set[str]):
    """Yield (key, {ext: bytes}) for the ``wanted`` keys in sorted key order, whatever order the
    tar's members are in (img2dataset's threads write them in completion order): one streaming pass
    records each member's byte offset, then each sample is read by seeking. Only one sample is held
    in memory. A compressed tar has no offsets: its samples come in member order instead. A truncated
    tar yields what was indexed, then ``TarBroken``."""
    with open(path, "rb") as fh:
        compressed = fh.read(6).startswith(_COMPRESSED)
    if compressed:
        yield from ((k, f) for k, f in iter_tar_samples(path) if k in wanted)
        return
    index: dict[str, dict[str, tuple[int, int]]] = {}
    broken = None
    cur_key = None
    try:
        with tarfile.open(path, mode="r|") as tf:
            for member in tf:
                if not member.isfile():
                    continue
                key, ext = _split_name(member.name)
                if key in wanted and (key == cur_key or key not in index):  # a key's first group only
                    index.setdefault(key, {})[ext] = (member.offset_data, member.size)
                cur_key = key
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as exc:
        broken = f"{path.name}: {exc.__class__.__name__}: {exc}"
    size = path.stat().st_size
    with open(path, "rb") as fh:
        for key in sorted(index):
            files = {}
            for ext, (offset, n) in index[key].items():
                if offset + n > size:  # cut off by truncation
                    continue
                fh.seek(offset)
                files[ext] = fh.read(n)
            yield key, files
    if broken:
        raise TarBroken(broken)


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    """Add one member with fixed metadata, so the same input always gives the same bytes."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    tf.addfile(info, io.BytesIO(data))


class Curate(Stage):
    name = "curate"
    description = "curate"

    def __init__(self, ws: Workspace, plan: dict, force: bool = False, decontam: bool = True,
                 data: str = "clean"):
        super().__init__(set_dir(ws, data), force=force, root=ws.root)  # curate/all: the workspace is two up
        self.reads = ("pool", "overlap") if decontam else ("pool",)  # the runner checks them
        self.ws = ws
        self.plan = plan
        self.data = data

    def shards(self):
        return list(self.plan)

    def run_shard(self, shard: str) -> dict:
        rows = self.plan[shard]
        # wanted[pool shard][pool key] = uid, pool shards in plan order
        wanted: dict[str, dict[str, str]] = {}
        for uid, pshard, key in rows:
            wanted.setdefault(pshard, {})[key] = uid
        stats = {"samples": 0, "bytes_images": 0, "caption_chars": 0, "skipped_missing": 0,
                 "skipped_incomplete": 0, "skipped_uid_mismatch": 0}
        out_uids, out_caps = [], []
        out_path = shards_dir(self.ws, self.data) / f"{shard}.tar"
        with atomic_path(out_path) as tmp:
            with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as out:
                for pshard, keys in wanted.items():
                    src = self.ws.path("pool", "shards", f"{pshard}.tar")
                    found: set[str] = set()
                    if not src.is_file():
                        warn(f"curate: pool shard {src} is missing; {len(keys)} planned samples skipped")
                    else:
                        try:
                            for key, files in iter_tar_samples_sorted(src, set(keys)):
                                uid = keys.get(key)
                                if uid is None or key in found:
                                    continue
                                found.add(key)
                                skip = self._check(files, uid)
                                if skip:
                                    stats[skip] += 1
                                    continue
                                ext = next(e for e in IMAGE_EXTS if e in files)
                                # the sample's bytes, unchanged, under its uid as the new key
                                _add(out, f"{uid}.{ext}", files[ext])
                                _add(out, f"{uid}.txt", files["txt"])
                                if "json" in files:
                                    _add(out, f"{uid}.json", files["json"])
                                caption = files["txt"].decode("utf-8", errors="replace")
                                out_uids.append(uid)
                                out_caps.append(caption)
                                stats["samples"] += 1
                                stats["bytes_images"] += len(files[ext])
                                stats["caption_chars"] += len(caption)
                        except TarBroken as exc:
                            warn(f"curate: pool shard is truncated or corrupt ({exc}); "
                                 f"its remaining planned samples are skipped")
                    stats["skipped_missing"] += len(keys) - len(found)
        mf.write(CURATED, {"uid": out_uids, "shard": [shard] * len(out_uids), "key": out_uids,
                           "caption": out_caps}, self.folder / "manifest" / f"{shard}.parquet")
        return stats

    @staticmethod
    def _check(files: dict, uid: str) -> str | None:
        """Why a sample cannot be copied, as a count name; None when it is fine."""
        if "txt" not in files or not any(e in files for e in IMAGE_EXTS):
            return "skipped_incomplete"
        if "json" in files:
            try:
                meta_uid = json.loads(files["json"]).get("uid")
            except (ValueError, AttributeError):
                meta_uid = None
            if meta_uid is not None and meta_uid != uid:
                return "skipped_uid_mismatch"
        return None

    def finish(self, result) -> None:
        sizes = {}
        per_shard = {}
        for s in self.plan:
            info = done_info(self.folder, s)
            sizes[f"{s}.tar"] = int(info.get("samples", 0))
            per_shard[s] = {k: v for k, v in info.items() if k not in ("shard", "finished_at")}
        write_json(shards_dir(self.ws, self.data) / SIZES_FILE, sizes)
        self.per_shard = per_shard


def curate(ws: Workspace, *, decontam: bool = True, shard_size: int = 10000, force: bool = False,
           data: str = "clean") -> CurateResult:
    """Write curate/shards/*.tar + sizes.json + the curated manifest; see the module docstring.

    ``data="all"`` writes the counterfactual's training set instead: the pool as downloaded (every
    successful sample, nothing decontaminated) in ``curate/all/``, made the same way."""
    if shard_size < 1:
        raise ClipcurateError(f"shard_size {shard_size!r} must be at least 1")
    if data == "all":
        decontam = False
    Curate(ws, {}, decontam=decontam, data=data).check_upstream()  # before reading them (and --force deleting anything)
    plan, counts = _plan(ws, decontam, shard_size)
    if not plan:
        raise ClipcurateError(
            f"nothing to curate: the pool has {counts['pool_rows']} rows, "
            f"{counts['dropped_not_success']} not successful and {counts['dropped_decontam']} decontaminated; "
            f"download more data (`clipcurate download`) or check overlap/decontam.parquet")
    folder = set_dir(ws, data)
    fingerprint = _fingerprint(plan, decontam, shard_size)
    meta_path = folder / META_FILE
    # the clean set's folder holds the "all" set's folder: it is never part of the clean set's output
    own = [p for p in folder.iterdir() if not (data == "clean" and p.name == "all")] if folder.is_dir() else []
    if force:
        for p in own:
            reset(p) if p.is_dir() else p.unlink()
    elif own:
        prev = read_json(meta_path).get("fingerprint") if meta_path.is_file() else None
        if prev != fingerprint:
            raise ClipcurateError(
                f"{folder} is not empty and holds output made from other inputs (pool, decontam list or "
                f"shard_size changed); pass --force to replace it")
    write_json(meta_path, {"fingerprint": fingerprint, "decontam": decontam, "shard_size": shard_size,
                           "plan_counts": counts})
    stage = Curate(ws, plan, decontam=decontam, data=data)
    result = stage.run()
    totals = {**counts, **result.counts}
    write_json(folder / "stats.json", {"totals": totals, "shards": stage.per_shard})
    skipped = {k: v for k, v in totals.items() if k.startswith(("skipped_", "dropped_")) and v}
    log(f"curate: {data} set, {totals.get('samples', 0)} samples in {len(plan)} shards"
        + (f"; {', '.join(f'{k}={v}' for k, v in sorted(skipped.items()))}" if skipped else ""))
    if totals.get("samples", 0) == 0:
        raise ClipcurateError(
            f"curate: none of the {counts['planned']} planned samples could be read from pool/shards "
            f"(see {folder / 'stats.json'}); rerun `clipcurate download`")
    shards = list(plan)
    return CurateResult(shards=shards, samples=int(totals.get("samples", 0)), counts=totals,
                        pattern=shard_pattern(ws, shards, data))
