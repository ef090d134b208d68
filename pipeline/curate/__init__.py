"""Stage ``curate``: the pool minus failed downloads minus decontaminated samples, resharded into the
webdataset tars (+ ``sizes.json``) that ``train`` feeds to open_clip_train.

Public API (what the CLI, ``clipcurate run`` and other stages may call)::

    from clipcurate import curate

    res = curate.curate(ws, decontam=True, shard_size=10_000)   # -> curate/shards/*.tar, a CurateResult
    curate.read_sizes(ws)               # {"00000.tar": n, ...} of a finished curate (train reads it)
    curate.shard_pattern(ws, shards)    # ".../curate/shards/{00000..00012}.tar" for open_clip_train
    curate.iter_tar_samples(path)       # (key, {ext: bytes}) of a tar, streamed one sample at a time
    curate.curate(ws, data="all")       # the counterfactual's set: the pool as downloaded, curate/all/shards
    curate.read_sizes(ws, "all")        # its sizes; shard_pattern(ws, shards, "all"), set_dir(ws, "all")

``CURATED`` is the manifest it writes (``curate/manifest/*.parquet``).
"""

from clipcurate.curate.stage import (CURATED, DATASETS, CurateResult, curate, iter_tar_samples, read_sizes, set_dir,
                                     shard_pattern, shards_dir)

__all__ = ["curate", "read_sizes", "shard_pattern", "shards_dir", "set_dir", "iter_tar_samples", "CurateResult",
           "CURATED", "DATASETS"]
