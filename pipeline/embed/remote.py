"""``embed --executor ray``: the pool shards on a pool of Ray actors."""

from __future__ import annotations

import functools
from pathlib import Path

from clipcurate.core.executor import Executor
from clipcurate.core.stage import done_info, mark_done
from clipcurate.embed import stage as emb


def embed_pool_shards(executor: Executor, enc, encoder_factory, pool_dir: Path, todo: dict,
                      *, batch_size: int, workers: int) -> int:
    """``embed --executor ray``: the pool shards on a pool of Ray actors; returns images embedded.

    Each actor builds the encoder once (``encoder_factory()``; by default the same open_clip model,
    seeded, on the actor's own device — its GPU when Ray gave it one) and embeds whole shards with
    the stage's own reader and writer, marker last. The driver keeps the benchmarks.
    """
    if encoder_factory is None:
        if isinstance(enc, emb.ClipEncoder):
            encoder_factory = functools.partial(emb.clip_encoder, enc.lm.spec, "auto", enc.lm.precision)
        else:
            encoder_factory = functools.partial(_identity, enc)  # ship this encoder as it is
    fn = _EmbedShard(str(pool_dir), {s: str(t) for s, t in todo.items()}, batch_size, workers)
    infos = executor.map_shards(fn, list(todo), setup=encoder_factory, gpu=True,
                                description=f"embed {enc.tag} on ray")
    return sum(int(i.get("n", 0)) for i in infos)


def _identity(x):
    return x


class _EmbedShard:
    """One pool shard inside an embed actor: read the tar, encode, write .npy/.text.npy/.parquet, marker."""

    def __init__(self, pool_dir: str, tars: dict, batch_size: int, workers: int):
        self.pool_dir, self.tars, self.batch_size, self.workers = pool_dir, tars, batch_size, workers

    def __call__(self, shard: str, enc) -> dict:
        pool_dir, tar = Path(self.pool_dir), Path(self.tars[shard])
        device = emb._device_of(enc, "auto")

        def on_group(group: str, accs: list) -> None:
            # The pool branch of embed_images' on_group: the same files, in the same order.
            uids = [u for a in accs for u in a.uids]
            emb._save_npy(pool_dir / f"{shard}.npy", emb._cat([c for a in accs for c in a.image], enc.dim))
            if hasattr(enc, "encode_tokens"):
                emb._save_npy(pool_dir / f"{shard}.text.npy", emb._cat([c for a in accs for c in a.text], enc.dim))
            emb._write_rows(pool_dir / f"{shard}.parquet", enc.tag, "pool", shard, uids, [None] * len(uids))
            st = tar.stat()
            mark_done(pool_dir, shard, {"n": len(uids), "n_bad": sum(a.n_bad for a in accs),
                                        "bad": [r for a in accs for r in a.bad][:emb.MAX_BAD_REASONS],
                                        "tar_size": st.st_size, "tar_mtime_ns": st.st_mtime_ns})

        emb._run_parts(enc, [emb.Part(f"pool/{shard}", 0, 1, str(tar))], device=device, batch_size=self.batch_size,
                       workers=self.workers, on_group=on_group, description=f"embed {shard}")
        return done_info(pool_dir, shard)


