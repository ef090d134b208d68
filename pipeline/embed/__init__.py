"""Stage ``embed``: open_clip (or copy-detector) embeddings of the pool and of the benchmarks.

The public API (what the CLI, ``clipcurate run`` and other stages call)::

    from clipcurate import embed

    tag = embed.run(ws, model="ViT-B-32", pretrained="laion2b_s34b_b79k", executor=ex)  # `clipcurate embed`
    tag = embed.embed_benchmarks(ws, spec, ["cifar10"])    # benchmarks only (eval, for each checkpoint)
    tag = embed.embed_images(ws, encoder, pool=True)       # any encoder, in the same layout
    for shard, uids, x in embed.iter_pool(ws, tag): ...    # the pool's vectors, shard by shard
    idx, uids, image, classes, captions, cap_index = embed.load_bench(ws, tag, "cifar10")
    embed.model_info(ws, tag)                              # embed/{tag}/model.json

Inside: ``stage`` (the two sharded stages and the functions above), ``encoders`` (CLIP model or
copy detector), ``reader`` (parts and the worker dataset), ``feed`` (the DataLoader pass and the
model), ``layout`` (what is written where, and its readers).
"""

from clipcurate.embed.encoders import ENCODER_LOADERS, ClipEncoder, clip_encoder, device_of, load_encoder, model_spec
from clipcurate.embed.layout import EMBEDDINGS, FOLDER, check_compatible, iter_pool, load_bench, model_info, tag_dir
from clipcurate.embed.stage import DEFAULTS, BenchEmbed, PoolEmbed, embed_benchmarks, embed_images, \
    embed_pool, pool_shards, run

__all__ = [
    "BenchEmbed", "ClipEncoder", "DEFAULTS", "EMBEDDINGS", "ENCODER_LOADERS", "FOLDER", "PoolEmbed",
    "check_compatible", "clip_encoder", "device_of", "embed_benchmarks", "embed_images", "embed_pool", "iter_pool",
    "load_bench", "load_encoder", "model_info", "model_spec", "pool_shards", "run", "tag_dir",
]
