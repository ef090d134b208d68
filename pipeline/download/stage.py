"""Stage `download`: candidate (url, caption) pairs → webdataset shards + the `pool` manifest.

A download is a :class:`clipcurate.core.stage.Stage` over pool shards, run by the one runner
(plan ``pool/_plan.json``, the ``pool/{shard}.done`` markers and ``pool/_SUCCESS`` are its
business, never this module's). The steps, each in its module:

1. plan (plan.py): the input cut into shards of ``samples_per_shard`` rows under pool/_input;
2. pre-check (fetch.py): refused and malformed urls decided without sending anything;
3. fetch (fetch.py, img2dataset_child.py): img2dataset in a watched child process, fetching
   through urlsafety (pinned, redirect-checked, deadline, body cap) and checking image headers;
4. convert (fetch.py): img2dataset's output → our keys, sha256, tar then manifest (pool.py);
5. watchdog (fetch.py): a stalled or hung img2dataset is killed; its shards get another round.

Batching, the one design choice here. img2dataset costs seconds to start and spreads a run over
its own worker processes, so in this process the stage does its shards *together*:
:meth:`Download.run_batch` hands every unfinished shard to ONE img2dataset run and yields each
shard as it lands in the pool, so that the runner writes that shard's marker at once (a kill -9
loses no finished shard); shards a stalled run left get a second round (``ROUNDS``). On Ray each
task runs :meth:`Download.run_shard` — the same rounds for one shard, img2dataset in one process —
on the worker, which therefore does the whole shard (pre-check included) and sends back only its
counts. Both paths give the same pool: the same rows and tar members (tests/test_ray.py checks it).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import shutil
import socket
from typing import Iterator

import pyarrow.parquet as pq

from clipcurate.core import sql
from clipcurate.core.console import log, warn
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.stage import Stage, done_info, is_done, marker
from clipcurate.core.workspace import Workspace
from clipcurate.download.fetch import WORK_DIR, fetch_round
from clipcurate.download.options import conf_from, policy_from
from clipcurate.download.plan import INPUT_DIR, plan
from clipcurate.download.pool import FOLDER, STAGE


sql.report(
    "download-failures",
    "pool rows by status and reason (how many failed and why)",
    "select status, coalesce(error, '') as reason, count(*) as n from pool "
    "group by status, reason order by status <> 'success', n desc, reason",
    needs=("pool",),
)

ROUNDS = 2  # fetch rounds per run for shards that did not finish (img2dataset stalled or crashed)


class Download(Stage):
    """The pool's shards, downloaded. Picklable (workspace, input path, options, policy): on Ray
    each worker gets its own copy and runs :meth:`run_shard`."""

    name = STAGE
    description = "download shards"

    def __init__(self, ws: Workspace, input_path: str | os.PathLike | None = None, cfg: dict | None = None,
                 force: bool = False):
        super().__init__(ws.path(FOLDER), force=force)
        self.ws, self.input_path = ws, input_path
        self.conf = conf_from(cfg)
        self.policy = policy_from(self.conf)
        self.planned: list[str] = []

    def shards(self) -> list[str]:
        """Step 1, the plan (reused when the input did not change; ``force`` starts the pool over)."""
        self.planned = plan(self.ws, self.input_path, self.conf, force=self.force)
        shutil.rmtree(self.folder / WORK_DIR, ignore_errors=True)  # leftovers of a killed run
        # `--allow-host H` exempts H on the ports the input's urls use for it, not every service of H
        self.policy = self.policy.pin_ports(
            u for s in self.planned for u in pq.read_table(self.folder / INPUT_DIR / f"{s}.parquet", columns=["url"])
            .column("url").to_pylist())
        if not self.policy.allow_private:
            log("download: private, loopback and link-local addresses are refused (--allow-private to fetch them)")
        self._retry_refused()
        return self.planned

    def _retry_refused(self) -> None:
        """A finished shard with refused rows, fetched under another URL policy (--allow-private,
        --allow-host, the hosts table): its marker is removed, so the runner runs it again, and
        fetch_round keeps its success and failed rows (prior_rows) and fetches only the refused ones."""
        policy, shards, rows = self.policy.to_json(), 0, 0
        for s in self.planned:
            if not is_done(self.folder, s):
                continue
            info = done_info(self.folder, s)
            if info.get("refused", 0) and info.get("policy") != policy:
                marker(self.folder, s).unlink()
                shards, rows = shards + 1, rows + int(info["refused"])
        if shards:
            log(f"download: the URL policy changed since {shards} shards were fetched: "
                f"retrying their {rows} refused rows (the rest is kept)")

    def run_batch(self, shards) -> Iterator[tuple[str, dict]]:
        """In this process: every shard in one img2dataset run, ``ROUNDS`` rounds for the ones it left."""
        left = list(shards)
        for _ in range(ROUNDS):
            if not left:
                break
            landed = set()
            for shard, counts in fetch_round(self.ws, left, self.conf, self.policy):
                yield shard, counts  # the runner writes its marker now
                landed.add(shard)
            left = [s for s in left if s not in landed]
        if left:
            raise ClipcurateError(
                f"download: {len(left)} of {len(self.planned) or len(shards)} shards did not finish (img2dataset "
                f"stalled or crashed; see pool/{WORK_DIR}/*/img2dataset.log); rerun `clipcurate download` to retry them")

    def run_shard(self, shard: str) -> dict:
        """One shard alone (a Ray task): its own img2dataset run in one process, ``ROUNDS`` rounds."""
        conf = dict(self.conf, processes=1, distributor="multiprocessing")
        for _ in range(ROUNDS):  # the same rounds a local run gives a shard that stalled
            landed = dict(fetch_round(self.ws, [shard], conf, self.policy))
            if shard in landed:
                return landed[shard]
        raise ClipcurateError(
            f"download: shard {shard} did not finish on {socket.gethostname()} (img2dataset stalled or "
            f"crashed; see pool/{WORK_DIR}/*/img2dataset.log); rerun `clipcurate download` to retry it")


@dataclasses.dataclass
class DownloadResult:
    shards_total: int
    shards_skipped: int
    counts: dict


def download(ws: Workspace, input_path: str | os.PathLike | None = None, *, cfg: dict | None = None,
             force: bool = False, executor=None) -> DownloadResult:
    """Download the candidates (or ``input_path``) into ``pool/``; see the module docstring.

    ``cfg`` holds [download] options (defaults in ``DEFAULTS``); the CLI passes the merged config.
    A rerun finishes what a killed run left; ``force`` starts the pool over. ``executor``: None or
    local (this process), or ray (a Ray task per shard).
    """
    stage = Download(ws, input_path, cfg, force=force)  # options checked before anything is written
    ws.create()
    result = stage.run(executor)
    warn_if_mostly_lost(ws, result.counts)
    return DownloadResult(result.shards_total, result.shards_skipped, result.counts)


# Hints for refusal reasons (urlsafety's wording) the user can act on.
_HINTS = (("loopback", "--allow-private"), ("private", "--allow-private"), ("link-local", "--allow-private"),
          ("reserved", "--allow-private"), ("address", "--allow-host HOST[:PORT]"))


def warn_if_mostly_lost(ws: Workspace, counts: dict, top: int = 5) -> None:
    """When most rows were refused or failed: one warning line per reason (the ``top`` commonest),
    with the option that would fetch refused rows. The run still exits 0: the pool is what it is."""
    rows = int(counts.get("rows", 0))
    lost = int(counts.get("refused", 0)) + int(counts.get("failed", 0))
    if not rows or 2 * lost <= rows:
        return
    tally: collections.Counter = collections.Counter()
    for path in sorted(ws.path(FOLDER, "manifest").glob("*.parquet")):
        tbl = pq.read_table(path, columns=["status", "error"])
        tally.update((st, err or "unknown error") for st, err in zip(tbl.column("status").to_pylist(),
                                                                  tbl.column("error").to_pylist()) if st != "success")
    reasons = [(st, err, n) for (st, err), n in sorted(tally.items(), key=lambda kv: (-kv[1], kv[0]))]
    warn(f"download: {lost} of {rows} rows were not stored ({counts.get('refused', 0)} refused, "
         f"{counts.get('failed', 0)} failed); `clipcurate sql download-failures` lists them")
    for status, reason, n in reasons[:top]:
        hint = next((f" (rerun with {opt} to fetch them)" for word, opt in _HINTS
                     if status == "refused" and word in reason), "")
        warn(f"download: {n} rows {status}: {reason}{hint}")
    if len(reasons) > top:
        warn(f"download: {sum(r[2] for r in reasons[top:])} rows for {len(reasons) - top} other reasons")
