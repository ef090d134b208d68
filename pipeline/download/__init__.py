"""Stage `download`: candidate (url, caption) pairs → the pool (webdataset shards + `pool` manifest).

The public API — what the CLI, `clipcurate run`, other stages and tests may call:

    download(ws, input_path=None, cfg=None, force=False, executor=None) -> DownloadResult
        the stage (clipcurate.download.stage): plan, pre-check, img2dataset, convert
    Download                    the same as a clipcurate.core.stage.Stage object
    write_pool_shard(ws, shard, samples) -> counts
        one finished pool shard exactly as a real download leaves it (tests, demos)
    shard_tar(ws, shard), shard_manifest(ws, shard)
        where a pool shard's tar and manifest live (pool/shards/{shard}.tar, pool/manifest/{shard}.parquet)
    POOL, STATUSES, FOLDER      the `pool` manifest, its row statuses, the stage folder ("pool")
    TarStream, sample_members   the deterministic webdataset tar writer and a sample's three members
    plan(ws, input_path, conf, force) -> shard names      step 1 alone (pool/_input)
    inspect_image(data, max_area) -> reason | None        the image header check every fetch gets
    DEFAULTS, policy_from(conf)                           [download] options and their URL policy

The modules: stage (the Stage), plan (input → shards), fetch (pre-check, one watched img2dataset
round, convert), img2dataset_child (what runs inside img2dataset's process), pool (the pool's files),
options ([download] config), urlsafety (the URL policy and the pinned, redirect-checking fetch).
"""

from clipcurate.download.img2dataset_child import inspect_image
from clipcurate.download.options import DEFAULTS, policy_from
from clipcurate.download.plan import plan
from clipcurate.download.pool import (FOLDER, POOL, STAGE, STATUSES, TarStream, key_width, sample_members,
                                      shard_manifest, shard_tar, write_pool_shard, write_shard_files)
from clipcurate.download.stage import Download, DownloadResult, download

__all__ = [
    "DEFAULTS", "FOLDER", "POOL", "STAGE", "STATUSES", "Download", "DownloadResult", "TarStream", "download",
    "inspect_image", "key_width", "plan", "policy_from", "sample_members", "shard_manifest", "shard_tar",
    "write_pool_shard", "write_shard_files",
]
