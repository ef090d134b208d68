"""Test data for the detector and signals tests: generated images in a pool shard, a benchmark file."""

from __future__ import annotations

from clipcurate.core import synth


def pool_images(n: int, seed: int = 0, size: int = 64):
    """n generated images over the ten classes and the three styles."""
    return [synth.make_image(i % 10, seed * 10_000 + i, synth.STYLES[i % 3], size=size) for i in range(n)]


def write_pool(ws, images, shard: str = "00000", captions=None) -> list[str]:
    """One finished pool shard holding ``images``; returns the pool uids in order."""
    from clipcurate.download import write_pool_shard
    from clipcurate.core.uid import pair_uid

    samples = []
    for i, img in enumerate(images):
        cap = captions[i] if captions else synth.caption_for(i)
        samples.append({"url": f"http://example.test/{shard}/{i}.jpg", "caption": cap, "image": img})
    write_pool_shard(ws, shard, samples)
    return [pair_uid(s["url"], s["caption"]) for s in samples]


def write_bench(ws, name: str, images) -> list[str]:
    """``benchmarks/{name}/samples.parquet`` with the columns the hash cache reads (uid, index, image)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipcurate.core.uid import make_uid

    uids = [make_uid("bench", name, i) for i in range(len(images))]
    path = ws.path("benchmarks", name, "samples.parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"uid": uids, "index": pa.array(range(len(images)), pa.int64()),
                             "image": [synth.png_bytes(im) for im in images]}), path)
    return uids
