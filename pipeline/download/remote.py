"""``download --executor ray``: what a Ray worker runs for one download shard."""

from __future__ import annotations

import socket
from typing import Sequence

from clipcurate.core.errors import ClipcurateError
from clipcurate.core.executor import Executor
from clipcurate.core.stage import done_info, is_done
from clipcurate.core.workspace import Workspace
from clipcurate.download import stage as dl
from clipcurate.download import urlsafety


def download_shards(executor: Executor, ws, todo: Sequence[str], conf: dict, policy, advance) -> None:
    """``download --executor ray``: one Ray task per input shard.

    This is img2dataset's Ray distribution (a Ray task runs img2dataset's Downloader on one shard),
    moved one level up so that the *whole* shard runs on the worker: the URL-safety pre-check (DNS
    and address rules), img2dataset with our pinned, redirect-checking fetch installed in the process
    that fetches, the conversion to our keys / sha256 / manifest, and the shard's marker. Nothing
    but a small dict of counts comes back to the driver, which therefore never reads an image.
    """
    fn = _DownloadShard(str(ws.root), dict(conf, processes=1, distributor="multiprocessing"), policy.to_json())
    executor.map_shards(fn, list(todo), advance=advance, description="download shards")


class _DownloadShard:
    def __init__(self, root: str, conf: dict, policy_json: str):
        self.root, self.conf, self.policy_json = root, conf, policy_json

    def __call__(self, shard: str) -> dict:
        ws = Workspace(self.root)
        policy = urlsafety.Policy.from_json(self.policy_json)
        folder = ws.path(dl.FOLDER)
        for _ in range(dl.ROUNDS):  # the same rounds a local run gives a shard that stalled
            dl._fetch_round(ws, [shard], self.conf, policy, lambda n=1: None)
            if is_done(folder, shard):
                return done_info(folder, shard)
        raise ClipcurateError(
            f"download: shard {shard} did not finish on {socket.gethostname()} (img2dataset stalled or "
            f"crashed; see pool/{dl.WORK_DIR}/*/img2dataset.log); rerun `clipcurate download` to retry it")


